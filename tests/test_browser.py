"""The page in headless Chromium (Debian chromium + chromium-driver, driven by Selenium):
sign in, click TRIGGER PROCESSING twice quickly, see the success then the conflict, and
watch the status follow the real job run by a real rq worker."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from examples.flask_app import create_app
from examples.flask_app.server import BackgroundServer, serving

from .support import RedisServer, RQWorker

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PASSWORD = "browser-pw"
CONFLICT = re.compile(r"^An email processing job is already pending for your account\. Status: (queued|running)\.$")

pytestmark = pytest.mark.browser


@pytest.fixture
def browser() -> Iterator[Any]:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(p)]
    if missing:
        message = f"{', '.join(missing)} not installed (scripts/ensure-system-deps.sh installs them)"
        if os.environ.get("DEDUPKIT_REQUIRE_REAL") == "1":
            pytest.fail(message)
        pytest.skip(message)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="dedupkit-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1200,900", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def site(tmp_path: Path, real_server: RedisServer, real_redis: redis.Redis,
         workers: Callable[..., RQWorker]) -> Iterator[BackgroundServer]:
    app = create_app({"SECRET_KEY": "browser", "DATABASE": str(tmp_path / "app.sqlite3"),
                      "REDIS_URL": real_server.url, "SEED_DEMO_USERS": True, "DEMO_PASSWORD": PASSWORD,
                      "PASSWORD_HASH_METHOD": "pbkdf2:sha256:1000", "JOB_SECONDS": 2.0})
    workers("email_processing", scheduler=True)
    with serving(app) as server:
        yield server


def test_trigger_twice_shows_success_then_conflict(browser: Any, site: BackgroundServer) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 15, poll_frequency=0.1)
    browser.get(f"{site.url}/")
    assert browser.current_url.endswith("/login")
    browser.find_element(By.ID, "username-input").send_keys("alice")
    browser.find_element(By.ID, "password-input").send_keys("wrong")
    browser.find_element(By.ID, "login-button").click()
    assert browser.find_element(By.ID, "login-error").text == "Wrong username or password."
    browser.find_element(By.ID, "username-input").send_keys("alice")
    browser.find_element(By.ID, "password-input").send_keys(PASSWORD)
    browser.find_element(By.ID, "login-button").click()
    wait.until(lambda d: d.find_element(By.TAG_NAME, "h1").text == "Email Automation")
    status = browser.find_element(By.ID, "job-status")
    wait.until(lambda d: status.text == "No email processing job is pending.")

    automation = browser.find_element(By.ID, "automation")
    before = automation.text
    assert before.startswith("Every 60 min. Last check: ")
    button = browser.find_element(By.ID, "trigger")
    assert button.text == "TRIGGER PROCESSING"
    button.click()
    button.click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#history li")) == 2)
    first, second = browser.find_elements(By.CSS_SELECTOR, "#history li")
    assert first.get_attribute("data-kind") == "success"
    assert re.search(r"Email processing started \(job email_process_\d+_\d+\)\.$", first.text), first.text
    assert second.get_attribute("data-kind") == "conflict"
    message = browser.find_element(By.ID, "message").text
    assert CONFLICT.match(message), message

    # The page keeps the status fresh while the job is pending: running, then done.
    wait.until(lambda d: status.get_attribute("data-state") == "running")
    assert status.text.startswith("Job email_process_") and " is running" in status.text
    wait.until(lambda d: status.get_attribute("data-state") == "none")
    assert status.text == "No email processing job is pending."
    wait.until(lambda d: automation.text != before)  # the worker wrote the new last_check_time

    button.click()  # the slot is free again
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#history li")) == 3)
    assert browser.find_elements(By.CSS_SELECTOR, "#history li")[2].get_attribute("data-kind") == "success"

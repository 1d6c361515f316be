"""The page in headless Chromium (Debian chromium + chromium-driver, driven by Selenium):
sign in, click TRIGGER PROCESSING twice quickly, see the success then the conflict, ask
for a follow-up run while the job runs, watch the status follow the real jobs run by a
real rq worker and the last run appear; the admin page lists a slot and cancels it."""

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

from examples.flask_app import create_app, db
from examples.flask_app.server import BackgroundServer, serving
from examples.flask_app.tasks import process_user_emails_standalone

from .support import RedisServer, RQWorker

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PASSWORD = "browser-pw"
CONFLICT = re.compile(r"^An email processing job is already pending for your account\. Status: (queued|running)\.$")
LAST_RUN_FINISHED = re.compile(r"^Last run: finished (just now|\d+ seconds? ago)\.$")

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


def make_app(tmp_path: Path, real_server: RedisServer) -> Any:
    # 3 s jobs: time to see "running" (the page polls every second) and ask for a follow-up.
    return create_app({"SECRET_KEY": "browser", "DATABASE": str(tmp_path / "app.sqlite3"),
                       "REDIS_URL": real_server.url, "SEED_DEMO_USERS": True, "DEMO_PASSWORD": PASSWORD,
                       "PASSWORD_HASH_METHOD": "pbkdf2:sha256:1000", "JOB_SECONDS": 3.0})


@pytest.fixture
def site(tmp_path: Path, real_server: RedisServer, real_redis: redis.Redis,
         workers: Callable[..., RQWorker]) -> Iterator[BackgroundServer]:
    app = make_app(tmp_path, real_server)
    workers("email_processing", scheduler=True)
    with serving(app) as server:
        yield server


def sign_in(browser: Any, url: str, username: str) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{url}/login")
    browser.find_element(By.ID, "username-input").send_keys(username)
    browser.find_element(By.ID, "password-input").send_keys(PASSWORD)
    browser.find_element(By.ID, "login-button").click()


def test_trigger_twice_shows_success_then_conflict(browser: Any, site: BackgroundServer) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 15, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,))
    browser.get(f"{site.url}/")
    assert browser.current_url.endswith("/login")
    browser.find_element(By.ID, "username-input").send_keys("alice")
    browser.find_element(By.ID, "password-input").send_keys("wrong")
    browser.find_element(By.ID, "login-button").click()
    # The click returns before the answer page is loaded: wait for it, never read the old page.
    wait.until(lambda d: d.find_elements(By.ID, "login-error"))
    assert browser.find_element(By.ID, "login-error").text == "Wrong username or password."
    browser.find_element(By.ID, "username-input").send_keys("alice")
    browser.find_element(By.ID, "password-input").send_keys(PASSWORD)
    browser.find_element(By.ID, "login-button").click()
    wait.until(lambda d: d.find_element(By.TAG_NAME, "h1").text == "Email Automation")
    status = browser.find_element(By.ID, "job-status")
    wait.until(lambda d: status.text == "No email processing job is pending.")
    last_run = browser.find_element(By.ID, "last-run")
    assert last_run.text == "Last run: none yet."
    offer = browser.find_element(By.ID, "follow-up-offer")
    assert not offer.is_displayed()

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

    # A click while it runs: the conflict, and the offer to run again after it.
    button.click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#history li")) == 3)
    assert browser.find_element(By.ID, "message").text.endswith("Status: running.")
    wait.until(lambda d: offer.is_displayed())
    follow_up = browser.find_element(By.ID, "follow-up")
    assert follow_up.text == "Run again after the current job"
    follow_up.click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#history li")) == 4)
    fourth = browser.find_elements(By.CSS_SELECTOR, "#history li")[3]
    assert fourth.get_attribute("data-kind") == "success"
    assert re.search(r"A follow-up run \(job email_process_\d+_\d+\) will start after the current job\.$",
                     fourth.text), fourth.text
    wait.until(lambda d: status.get_attribute("data-follow-up"))
    assert " is running" in status.text and "A follow-up run is waiting (job email_process_" in status.text
    assert not offer.is_displayed()

    # The job ends, the follow-up runs after it, then nothing is pending.
    wait.until(lambda d: status.get_attribute("data-state") == "none")
    assert status.text == "No email processing job is pending."
    wait.until(lambda d: automation.text != before)  # the worker wrote the new last_check_time
    wait.until(lambda d: last_run.get_attribute("data-status") == "finished")
    assert LAST_RUN_FINISHED.match(last_run.text), last_run.text
    path = site.app.config["DATABASE"]
    conn = db.connect(path)
    alice = db.user_by_name(conn, "alice")
    conn.close()
    assert alice and len(db.runs(path, alice.id)) == 2

    button.click()  # the slot is free again
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#history li")) == 5)
    assert browser.find_elements(By.CSS_SELECTOR, "#history li")[4].get_attribute("data-kind") == "success"


@pytest.fixture
def idle_site(tmp_path: Path, real_server: RedisServer, real_redis: redis.Redis) -> Iterator[BackgroundServer]:
    """The app with no worker: a queued job stays queued."""
    with serving(make_app(tmp_path, real_server)) as server:
        yield server


def test_admin_sees_the_slot_and_the_counters_and_cancels_a_queued_job(browser: Any,
                                                                        idle_site: BackgroundServer) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    app = idle_site.app
    conn = db.connect(app.config["DATABASE"])
    bob = db.user_by_name(conn, "bob")
    conn.close()
    assert bob
    job_id = app.extensions["dedupkit"].enqueue(bob.id, process_user_emails_standalone, bob.id).job_id

    wait = WebDriverWait(browser, 15, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,))
    sign_in(browser, idle_site.url, "admin")
    wait.until(lambda d: d.find_element(By.TAG_NAME, "h1").text == "Email Automation")
    browser.find_element(By.ID, "admin-link").click()
    wait.until(lambda d: d.find_element(By.TAG_NAME, "h1").text == "Admin")

    def counter(name: str) -> str:
        return str(browser.find_element(By.CSS_SELECTOR, f'tr[data-counter="{name}"] td').text)

    row = browser.find_element(By.CSS_SELECTOR, f'tr[data-key="{bob.id}"]')
    assert row.get_attribute("data-state") == "queued" and row.get_attribute("data-job-id") == job_id
    assert row.find_element(By.CSS_SELECTOR, "td.user").text.startswith("bob")
    assert row.find_element(By.CSS_SELECTOR, "td.age").text.startswith("waiting for ")
    assert (counter("admitted"), counter("cancelled")) == ("1", "0")

    row.find_element(By.CSS_SELECTOR, "button.cancel-button").click()
    wait.until(lambda d: d.find_elements(By.ID, "admin-message"))
    message = browser.find_element(By.ID, "admin-message")
    assert message.get_attribute("data-kind") == "success"
    assert message.text == f"Cancelled bob's job {job_id} (queued)."
    assert counter("cancelled") == "1"
    assert not browser.find_elements(By.CSS_SELECTOR, f'tr[data-key="{bob.id}"][data-state="queued"]')
    assert not app.extensions["dedupkit"].has_pending(bob.id)

    browser.get(f"{idle_site.url}/metrics")
    assert 'dedupkit_decisions_total{decision="cancelled",queue="email_processing"} 1.0' in browser.page_source

"""The page in headless Chromium (Debian chromium + chromium-driver, driven by Selenium):
sign in, click TRIGGER PROCESSING twice quickly, see the success then the conflict, ask
for a follow-up run while the job runs, click a third time and read what waits, watch the
status and the messages follow the real jobs run by a real rq worker (in words, no job
ids) and the last run appear; a click within the cooldown says when the next run is
possible; the admin lands on the admin page, which lists a slot and cancels it; a
non-admin opening /admin gets the app's own page."""

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


def make_app(tmp_path: Path, real_server: RedisServer, **extra: Any) -> Any:
    # 4 s jobs: time to see "running" (the page polls every second), ask for a follow-up and click again.
    return create_app({"SECRET_KEY": "browser", "DATABASE": str(tmp_path / "app.sqlite3"),
                       "REDIS_URL": real_server.url, "SEED_DEMO_USERS": True, "DEMO_PASSWORD": PASSWORD,
                       "PASSWORD_HASH_METHOD": "pbkdf2:sha256:1000", "JOB_SECONDS": 4.0, **extra})


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
    assert first.text.endswith(" — Email processing started."), first.text
    assert second.get_attribute("data-kind") == "conflict"
    message = browser.find_element(By.ID, "message").text
    assert CONFLICT.match(message), message

    # The page keeps the status fresh while the job is pending: running, then done.
    wait.until(lambda d: status.get_attribute("data-state") == "running")
    assert re.fullmatch(r"Your email processing job is running( since .+)?\.", status.text), status.text
    assert "email_process" not in browser.find_element(By.TAG_NAME, "main").text, "no raw job ids for end users"

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
    assert fourth.text.endswith(" — A follow-up run will start when the current job ends."), fourth.text
    wait.until(lambda d: status.get_attribute("data-follow-up"))
    assert " is running" in status.text
    assert status.text.endswith("A follow-up run is waiting: it will start when this one ends."), status.text
    assert not offer.is_displayed()

    # A third click, a follow-up already waiting: the conflict says what waits and when it runs.
    button.click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#history li")) == 5)
    assert browser.find_element(By.ID, "message").text == (
        "Your email processing job is running, and a follow-up run is already waiting: "
        "it will start when the current job ends."), browser.find_element(By.ID, "message").text
    assert not offer.is_displayed()
    assert "email_process" not in browser.find_element(By.TAG_NAME, "main").text

    # The job ends, the follow-up runs after it, then nothing is pending: no message about
    # those jobs stays beside that line (the orange conflict is gone; the history keeps it).
    wait.until(lambda d: status.get_attribute("data-state") == "none")
    assert status.text == "No email processing job is pending."
    wait.until(lambda d: browser.find_element(By.ID, "message").text == "")
    assert browser.find_element(By.ID, "message").get_attribute("class") == "message"
    wait.until(lambda d: automation.text != before)  # the worker wrote the new last_check_time
    wait.until(lambda d: last_run.get_attribute("data-status") == "finished")
    assert LAST_RUN_FINISHED.match(last_run.text), last_run.text
    path = site.app.config["DATABASE"]
    conn = db.connect(path)
    alice = db.user_by_name(conn, "alice")
    conn.close()
    assert alice and len(db.runs(path, alice.id)) == 2

    button.click()  # the slot is free again
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#history li")) == 6)
    assert browser.find_elements(By.CSS_SELECTOR, "#history li")[5].get_attribute("data-kind") == "success"


def test_conflict_message_goes_when_the_job_ends(browser: Any, site: BackgroundServer) -> None:
    """The issue's case: a conflict (no follow-up asked), then the job ends: the orange
    message does not stay next to "No email processing job is pending"."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 20, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,))
    sign_in(browser, site.url, "bob")
    wait.until(lambda d: d.find_element(By.TAG_NAME, "h1").text == "Email Automation")
    status = browser.find_element(By.ID, "job-status")
    button = browser.find_element(By.ID, "trigger")
    button.click()
    button.click()
    message = browser.find_element(By.ID, "message")
    wait.until(lambda d: message.get_attribute("data-kind") == "conflict")
    wait.until(lambda d: message.text.endswith("Status: running."))  # re-worded as the job moved on
    wait.until(lambda d: status.get_attribute("data-state") == "none")
    wait.until(lambda d: message.text == "")
    assert status.text == "No email processing job is pending."
    assert [li.get_attribute("data-kind") for li in browser.find_elements(By.CSS_SELECTOR, "#history li")] == [
        "success", "conflict"], "the history keeps what was said"


def test_non_admin_on_admin_page_gets_the_apps_page(browser: Any, idle_site: BackgroundServer) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 15, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,))
    sign_in(browser, idle_site.url, "carol")
    wait.until(lambda d: d.find_element(By.TAG_NAME, "h1").text == "Email Automation")
    browser.get(f"{idle_site.url}/admin")
    title = browser.find_element(By.ID, "error-title")
    assert title.text == "Not allowed" and title.get_attribute("data-code") == "403"
    assert browser.find_element(By.ID, "error-description").text == (
        "This page is for administrators; you are signed in as carol.")
    assert browser.find_element(By.ID, "username").text == "carol", "the app's header, not Werkzeug's bare page"
    assert "Forbidden" not in browser.page_source
    browser.find_element(By.ID, "back-link").click()
    wait.until(lambda d: d.find_element(By.TAG_NAME, "h1").text == "Email Automation")


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
    wait.until(lambda d: d.find_element(By.TAG_NAME, "h1").text == "Admin")  # an admin lands on the admin page
    assert browser.current_url.endswith("/admin")

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

    browser.find_element(By.LINK_TEXT, "Email Automation").click()  # the admin's own page says why it is empty
    wait.until(lambda d: d.find_element(By.ID, "automation").text != "Loading…")
    assert browser.find_element(By.ID, "automation").text == "Automatic checks are not set up for this account."

    browser.get(f"{idle_site.url}/metrics")
    assert 'dedupkit_decisions_total{decision="cancelled",queue="email_processing"} 1.0' in browser.page_source



@pytest.fixture
def cooldown_site(tmp_path: Path, real_server: RedisServer, real_redis: redis.Redis,
                  workers: Callable[..., RQWorker]) -> Iterator[BackgroundServer]:
    """1 s jobs, and a 60 s cooldown after each run."""
    app = make_app(tmp_path, real_server, JOB_SECONDS=1.0, COOLDOWN_SECONDS=60.0)
    workers("email_processing", scheduler=True)
    with serving(app) as server:
        yield server


def test_a_click_within_the_cooldown_says_when_the_next_run_is_possible(browser: Any,
                                                                       cooldown_site: BackgroundServer) -> None:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    wait = WebDriverWait(browser, 20, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,))
    sign_in(browser, cooldown_site.url, "bob")
    wait.until(lambda d: d.find_element(By.TAG_NAME, "h1").text == "Email Automation")
    button = browser.find_element(By.ID, "trigger")
    button.click()
    message = browser.find_element(By.ID, "message")
    wait.until(lambda d: message.get_attribute("data-kind") == "success")
    last_run = browser.find_element(By.ID, "last-run")
    wait.until(lambda d: last_run.get_attribute("data-status") == "finished")  # the run ended
    button.click()
    wait.until(lambda d: message.get_attribute("data-kind") == "cooldown")
    shown = re.fullmatch(r"Email processing ran a moment ago\. The next run is possible at (.+)\.", message.text)
    assert shown, message.text
    # The run's end (RQ's ended_at, the status API's last_run) + 60 s, in the browser's zone.
    expected = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch("/api/email-automation/status", {credentials: "same-origin"}).then(r => r.json()).then(body => {
          const ended = new Date(body.job_status.last_run.ended_at).getTime();
          done(new Date(ended + 60000).toLocaleTimeString());
        });""")
    assert shown.group(1) == expected
    assert [li.get_attribute("data-kind") for li in browser.find_elements(By.CSS_SELECTOR, "#history li")] == [
        "success", "cooldown"]
    assert browser.find_element(By.ID, "job-status").text == "No email processing job is pending."

"""The example Flask app through Flask's test client, on a real redis-server."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from rq import Queue

from examples.flask_app import create_app, db
from examples.flask_app.app import CONFLICT_ERROR, make_deduplicator
from examples.flask_app.scheduling import make_scheduler, schedule_entries
from examples.flask_app.tasks import process_user_emails_standalone

from . import rqstate
from .support import RedisServer

PASSWORD = "correct horse"
TRIGGER = "/api/email-automation/trigger"
STATUS = "/api/email-automation/status"


def make_app(tmp_path: Path, connection: redis.Redis, **extra: Any) -> Flask:
    config = {"TESTING": True, "SECRET_KEY": "test-secret", "DATABASE": str(tmp_path / "app.sqlite3"),
              "REDIS": connection, "SEED_DEMO_USERS": True, "DEMO_PASSWORD": PASSWORD,
              "PASSWORD_HASH_METHOD": "pbkdf2:sha256:1000", "JOB_SECONDS": 0.0, **extra}
    return create_app(config)


def login(client: FlaskClient, username: str, password: str = PASSWORD) -> str:
    """Sign in through the form; returns the page's CSRF token ('' when sign-in failed)."""
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token
    resp = client.post("/login", data={"username": username, "password": password, "csrf_token": token.group(1)})
    if resp.status_code != 302:
        return ""
    meta = re.search(r'name="csrf-token" content="([^"]+)"', client.get("/").get_data(as_text=True))
    assert meta
    return meta.group(1)


@pytest.fixture
def app(tmp_path: Path, real_redis: redis.Redis) -> Flask:
    return make_app(tmp_path, real_redis)


def user_id(app: Flask, name: str) -> int:
    conn = db.connect(app.config["DATABASE"])
    user = db.user_by_name(conn, name)
    conn.close()
    assert user
    return user.id


def test_trigger_202_then_409_with_the_status(app: Flask) -> None:
    client = app.test_client()
    token = login(client, "alice")
    first = client.post(TRIGGER, headers={"X-CSRF-Token": token})
    assert first.status_code == 202
    body = first.get_json()
    assert body["success"] is True and body["job_id"].startswith(f"email_process_{user_id(app, 'alice')}_")
    second = client.post(TRIGGER, headers={"X-CSRF-Token": token})
    assert second.status_code == 409
    conflict = second.get_json()
    assert conflict["success"] is False and conflict["error"] == CONFLICT_ERROR
    js = conflict["job_status"]
    assert js["job_id"] == body["job_id"] and js["state"] == "queued"
    assert (js["has_queued_job"], js["has_running_job"], js["has_scheduled_job"]) == (True, False, False)
    status = client.get(STATUS).get_json()
    assert status["username"] == "alice" and status["job_status"]["job_id"] == body["job_id"]
    assert status["automation"]["enabled"] is True


def test_running_and_finished_jobs(app: Flask, real_redis: redis.Redis) -> None:
    client = app.test_client()
    token = login(client, "alice")
    job_id = client.post(TRIGGER, headers={"X-CSRF-Token": token}).get_json()["job_id"]
    queue = Queue("email_processing", connection=real_redis)
    execution = rqstate.start(real_redis, queue, job_id)
    conflict = client.post(TRIGGER, headers={"X-CSRF-Token": token}).get_json()
    assert conflict["job_status"]["state"] == "running" and conflict["job_status"]["has_running_job"] is True
    real_redis.zrem(queue.started_job_registry.key, execution.composite_key)
    real_redis.hset(f"rq:job:{job_id}", "status", "finished")
    again = client.post(TRIGGER, headers={"X-CSRF-Token": token})
    assert again.status_code == 202 and again.get_json()["job_id"] != job_id


def test_a_user_cannot_trigger_or_read_another_users_job(app: Flask) -> None:
    alice, bob = app.test_client(), app.test_client()
    alice_token, bob_token = login(alice, "alice"), login(bob, "bob")
    alice_job = alice.post(TRIGGER, headers={"X-CSRF-Token": alice_token}).get_json()["job_id"]
    # A user id in the body or query is ignored: bob acts on bob only.
    resp = bob.post(f"{TRIGGER}?user_id={user_id(app, 'alice')}", json={"user_id": user_id(app, "alice")},
                    headers={"X-CSRF-Token": bob_token})
    assert resp.status_code == 202
    bob_job = resp.get_json()["job_id"]
    assert bob_job.startswith(f"email_process_{user_id(app, 'bob')}_") and bob_job != alice_job
    bob_status = bob.get(f"{STATUS}?user_id={user_id(app, 'alice')}").get_json()
    assert bob_status["username"] == "bob" and bob_status["job_status"]["job_id"] == bob_job
    assert alice.get(STATUS).get_json()["job_status"]["job_id"] == alice_job
    # bob's session token is not alice's: it cannot be replayed on her session.
    assert alice.post(TRIGGER, headers={"X-CSRF-Token": bob_token}).status_code == 403


@pytest.mark.parametrize("how", ["anonymous", "no csrf", "bad csrf", "wrong password", "unknown user"])
def test_bad_or_missing_auth(app: Flask, how: str) -> None:
    client = app.test_client()
    if how in ("wrong password", "unknown user"):
        assert login(client, "alice" if how == "wrong password" else "mallory", "guess") == ""
        assert client.get("/").status_code == 302
    elif how != "anonymous":
        login(client, "alice")
    headers = {"X-CSRF-Token": "forged"} if how == "bad csrf" else {}
    resp = client.post(TRIGGER, headers=headers)
    expected = 403 if how in ("no csrf", "bad csrf") else 401
    assert resp.status_code == expected and resp.get_json()["success"] is False
    if expected == 401:
        assert client.get(STATUS).status_code == 401
    assert not make_deduplicator(app.extensions["dedupkit"].connection).has_pending(user_id(app, "alice"))


def test_login_needs_the_csrf_token_and_logout_ends_the_session(app: Flask) -> None:
    client = app.test_client()
    client.get("/login")
    assert client.post("/login", data={"username": "alice", "password": PASSWORD}).status_code == 403
    token = login(client, "alice")
    assert client.post("/logout", data={}).status_code == 403
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302
    assert client.post(TRIGGER, headers={"X-CSRF-Token": token}).status_code == 401


def test_the_page_has_the_button_and_script(app: Flask) -> None:
    client = app.test_client()
    assert client.get("/").headers["Location"].endswith("/login")
    login(client, "alice")
    page = client.get("/").get_data(as_text=True)
    assert "Email Automation" in page and "TRIGGER PROCESSING" in page and "app.js" in page
    js = client.get("/static/app.js").get_data(as_text=True)
    assert "An email processing job is already pending for your account. Status: " in js


def test_503_when_redis_is_stopped(tmp_path: Path) -> None:
    server = RedisServer()
    conn = redis.Redis.from_url(server.url, socket_connect_timeout=0.5, socket_timeout=1)
    try:
        client = make_app(tmp_path, conn).test_client()
        token = login(client, "alice")
        assert client.post(TRIGGER, headers={"X-CSRF-Token": token}).status_code == 202
        server.stop()
        for url, method in ((TRIGGER, client.post), (STATUS, client.get)):
            resp = method(url, headers={"X-CSRF-Token": token})
            assert resp.status_code == 503
            assert resp.get_json() == {"success": False, "error": (
                "The job queue is unavailable (Redis cannot be reached). Please try again shortly.")}
        server.start()
        resp = client.post(TRIGGER, headers={"X-CSRF-Token": token})
        assert resp.status_code == 202  # an empty server after the restart: the slot is free
    finally:
        conn.close()
        server.close()


def test_task_records_the_run_and_last_check_time(app: Flask, real_redis: redis.Redis) -> None:
    client = app.test_client()
    token = login(client, "alice")
    path = app.config["DATABASE"]
    uid = user_id(app, "alice")
    conn = db.connect(path)
    before = db.configuration(conn, uid)
    conn.close()
    job_id = client.post(TRIGGER, headers={"X-CSRF-Token": token}).get_json()["job_id"]
    rqstate.run_all(Queue("email_processing", connection=real_redis))
    [run] = db.runs(path, uid)
    assert run["job_id"] == job_id
    conn = db.connect(path)
    after = db.configuration(conn, uid)
    conn.close()
    assert before and after and before.last_check_time and after.last_check_time
    assert after.last_check_time > before.last_check_time
    assert not client.get(STATUS).get_json()["job_status"]["pending"]
    direct = process_user_emails_standalone(uid, db_path=path, seconds=0)
    assert direct["user_id"] == uid and len(db.runs(path, uid)) == 2


def test_schedule_source_and_factory(app: Flask, real_server: RedisServer, real_redis: redis.Redis) -> None:
    path = app.config["DATABASE"]
    entries = list(schedule_entries(path, seconds=0))
    ids = {name: user_id(app, name) for name in ("alice", "bob", "carol")}
    assert [e.key for e in entries] == [ids["alice"], ids["bob"]]  # carol's automation is off
    alice, bob = entries
    assert alice.next_run is not None and bob.next_run is None  # bob never ran: due now
    sched = make_scheduler(real_server.url, db_path=path, interval=60, seconds=0)
    first = sched.tick()
    assert (first.admitted, first.not_due) == (1, 1)  # bob now; alice in an hour
    dedup = make_deduplicator(real_redis)
    assert dedup.status(ids["bob"]).has_queued_job and not dedup.has_pending(ids["alice"])
    assert sched.tick().skipped == 1

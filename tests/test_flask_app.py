"""The example Flask app through Flask's test client, on a real redis-server."""

from __future__ import annotations

import re
import sqlite3
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from rq import Queue

from examples.flask_app import create_app, db
from examples.flask_app.app import (
    CONFLICT_ERROR,
    COOLDOWN_ERROR,
    FOLLOW_UP_NOT_RUNNING_ERROR,
    FOLLOW_UP_WAITING_ERROR,
    make_deduplicator,
)
from examples.flask_app.scheduling import make_scheduler, schedule_entries
from examples.flask_app.tasks import process_user_emails_standalone

from . import rqstate
from .support import RedisServer

PASSWORD = "correct horse"
TRIGGER = "/api/email-automation/trigger"
STATUS = "/api/email-automation/status"
FOLLOW_UP = "/api/email-automation/follow-up"


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
    real_redis.zrem(queue.started_job_registry.key, execution.composite_key)  # Execution.delete
    real_redis.zrem(f"rq:executions:{job_id}", execution.id)
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


@pytest.mark.parametrize("url", [TRIGGER, FOLLOW_UP])
@pytest.mark.parametrize("how", ["anonymous", "no csrf", "bad csrf", "wrong password", "unknown user"])
def test_bad_or_missing_auth(app: Flask, how: str, url: str) -> None:
    client = app.test_client()
    if how in ("wrong password", "unknown user"):
        assert login(client, "alice" if how == "wrong password" else "mallory", "guess") == ""
        assert client.get("/").status_code == 302
    elif how != "anonymous":
        login(client, "alice")
    headers = {"X-CSRF-Token": "forged"} if how == "bad csrf" else {}
    resp = client.post(url, headers=headers)
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
    assert 'id="last-run"' in page and "Run again after the current job" in page
    assert 'id="admin-link"' not in page  # alice is no admin
    js = client.get("/static/app.js").get_data(as_text=True)
    assert "An email processing job is already pending for your account. Status: " in js
    assert '"/api/email-automation/follow-up"' in js and '"Last run: "' in js


def test_503_when_redis_is_stopped(tmp_path: Path) -> None:
    server = RedisServer()
    conn = redis.Redis.from_url(server.url, socket_connect_timeout=0.5, socket_timeout=1)
    try:
        client = make_app(tmp_path, conn).test_client()
        token = login(client, "alice")
        assert client.post(TRIGGER, headers={"X-CSRF-Token": token}).status_code == 202
        server.stop()
        for url, method in ((TRIGGER, client.post), (FOLLOW_UP, client.post), (STATUS, client.get)):
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
    js = client.get(STATUS).get_json()["job_status"]
    assert not js["pending"]
    last = js["last_run"]  # what the page shows as "Last run: finished … ago"
    assert last["job_id"] == job_id and last["status"] == "finished"
    assert after.last_check_time - timedelta(seconds=5) < datetime.fromisoformat(last["ended_at"])
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


# -- "Run again after the current job" ---------------------------------------------------


def test_follow_up_only_for_a_running_job_and_only_one(app: Flask, real_redis: redis.Redis) -> None:
    client = app.test_client()
    token = login(client, "alice")
    headers = {"X-CSRF-Token": token}
    job_id = client.post(TRIGGER, headers=headers).get_json()["job_id"]
    early = client.post(FOLLOW_UP, headers=headers)  # queued, not running: the job will see all new mail
    assert early.status_code == 409
    body = early.get_json()
    assert body["error"] == FOLLOW_UP_NOT_RUNNING_ERROR and body["reason"] == "not_running"
    assert body["job_status"]["job_id"] == job_id and body["job_status"]["state"] == "queued"

    rqstate.start(real_redis, Queue("email_processing", connection=real_redis), job_id)
    first = client.post(FOLLOW_UP, headers=headers)
    assert first.status_code == 202
    follow = first.get_json()
    assert follow["success"] is True and follow["follow_up_of"] == job_id and follow["job_id"] != job_id
    assert follow["job_status"]["state"] == "deferred"
    second = client.post(FOLLOW_UP, headers=headers)
    assert second.status_code == 409
    coalesced = second.get_json()
    assert coalesced["error"] == FOLLOW_UP_WAITING_ERROR and coalesced["reason"] == "coalesced"
    assert coalesced["follow_up_job_id"] == follow["job_id"]

    js = client.get(STATUS).get_json()["job_status"]
    assert (js["job_id"], js["state"], js["follow_up_job_id"]) == (job_id, "running", follow["job_id"])
    trig = client.post(TRIGGER, headers=headers)  # the plain trigger stays on "reject"
    assert trig.status_code == 409 and trig.get_json()["job_status"]["follow_up_job_id"] == follow["job_id"]
    # The third click's answer says what waits and when it runs.
    assert trig.get_json()["error"] == (f"{CONFLICT_ERROR}. A follow-up run is already waiting: it will start when "
                                        "the current job ends.")
    assert trig.get_json()["reason"] == "follow_up_waiting" and trig.get_json()["follow_up_job_id"] == follow["job_id"]
    dedup = make_deduplicator(real_redis)
    assert dedup.stats()["follow_up"] == 1
    assert real_redis.hget(f"rq:job:{follow['job_id']}", "status") == b"deferred"


def test_follow_up_on_a_free_slot_is_a_run_now(app: Flask) -> None:
    client = app.test_client()
    token = login(client, "carol")
    resp = client.post(FOLLOW_UP, headers={"X-CSRF-Token": token})
    assert resp.status_code == 202
    body = resp.get_json()
    assert body["follow_up_of"] is None and body["job_status"]["state"] == "queued"


# -- admin role, /admin, /metrics --------------------------------------------------------


def rows(page: str) -> dict[str, dict[str, str]]:
    """The admin page's slot rows by key: state, job id, and the row's text."""
    out = {}
    for m in re.finditer(r'<tr data-key="([^"]+)" data-state="([^"]+)" data-job-id="([^"]+)">(.*?)</tr>', page, re.S):
        out[m.group(1)] = {"state": m.group(2), "job_id": m.group(3), "html": m.group(4)}
    return out


def counters(page: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2))
            for m in re.finditer(r'<tr data-counter="([^"]+)"><th>[^<]+</th><td>(\d+)</td></tr>', page)}


def flashed(page: str) -> tuple[str, str]:
    m = re.search(r'id="admin-message" data-kind="([^"]+)"[^>]*>([^<]*)</p>', page)
    assert m, page
    return m.group(1), m.group(2).replace("&#39;", "'")


def test_demo_users_and_the_admin_flag(app: Flask) -> None:
    conn = db.connect(app.config["DATABASE"])
    flags = {name: db.user_by_name(conn, name).is_admin for name in ("alice", "bob", "carol", "admin")}  # type: ignore[union-attr]
    conn.close()
    assert flags == {"alice": False, "bob": False, "carol": False, "admin": True}
    client = app.test_client()
    login(client, "admin")
    assert 'id="admin-link"' in client.get("/").get_data(as_text=True)


def test_a_database_from_before_the_admin_role_is_migrated(tmp_path: Path, real_redis: redis.Redis) -> None:
    path = tmp_path / "app.sqlite3"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, username TEXT NOT NULL UNIQUE, email TEXT NOT NULL, "
                "password_hash TEXT NOT NULL)")
    old.execute("INSERT INTO users (username, email, password_hash) VALUES ('dave', 'd@example.com', 'x')")
    old.commit()
    old.close()
    app = make_app(tmp_path, real_redis)
    conn = db.connect(path)
    dave, admin = db.user_by_name(conn, "dave"), db.user_by_name(conn, "admin")
    conn.close()
    assert dave and not dave.is_admin and admin and admin.is_admin
    client = app.test_client()
    login(client, "admin")
    assert client.get("/admin").status_code == 200


@pytest.mark.parametrize("who", ["anonymous", "alice"])
def test_admin_pages_are_for_admins_only(app: Flask, real_redis: redis.Redis, who: str) -> None:
    dedup = make_deduplicator(real_redis)
    bob = user_id(app, "bob")
    dedup.enqueue(bob, process_user_emails_standalone, bob)
    client = app.test_client()
    token = login(client, who) if who != "anonymous" else ""
    page = client.get("/admin")
    cancel = client.post("/admin/cancel", data={"key": str(bob), "csrf_token": token})
    metrics = client.get("/metrics")
    if who == "anonymous":
        assert page.status_code == 302 and page.headers["Location"].endswith("/login")
        assert cancel.status_code == 302 and cancel.headers["Location"].endswith("/login")
        assert metrics.status_code == 401 and metrics.headers["WWW-Authenticate"].startswith("Bearer")
    else:
        assert (page.status_code, cancel.status_code, metrics.status_code) == (403, 403, 403)
    assert dedup.is_queued(bob)  # nothing was cancelled
    assert b"dedupkit_decisions" not in metrics.data


def test_admin_cancel_needs_the_csrf_token(app: Flask, real_redis: redis.Redis) -> None:
    dedup = make_deduplicator(real_redis)
    bob = user_id(app, "bob")
    dedup.enqueue(bob, process_user_emails_standalone, bob)
    client = app.test_client()
    login(client, "admin")
    assert client.post("/admin/cancel", data={"key": str(bob)}).status_code == 403
    assert client.post("/admin/cancel", data={"key": str(bob), "csrf_token": "forged"}).status_code == 403
    assert dedup.is_queued(bob)


def test_admin_page_lists_slots_and_cancels(app: Flask, real_redis: redis.Redis) -> None:
    dedup = make_deduplicator(real_redis)
    queue = Queue("email_processing", connection=real_redis)
    ids = {name: user_id(app, name) for name in ("alice", "bob", "carol", "admin")}
    task = process_user_emails_standalone
    alice_job = dedup.enqueue(ids["alice"], task, ids["alice"]).job_id
    bob_job = dedup.enqueue(ids["bob"], task, ids["bob"]).job_id
    assert bob_job
    rqstate.start(real_redis, queue, bob_job)
    bob_follow = dedup.enqueue(ids["bob"], task, ids["bob"], on_conflict="follow_up").job_id
    carol_job = dedup.enqueue_in(timedelta(hours=1), ids["carol"], task, ids["carol"]).job_id
    soon = dedup.enqueue_in(timedelta(seconds=20), ids["admin"], task, ids["admin"]).job_id

    client = app.test_client()
    token = login(client, "admin")
    page = client.get("/admin").get_data(as_text=True)
    found = rows(page)
    assert set(found) == {str(i) for i in ids.values()}
    alice, bob, carol = found[str(ids["alice"])], found[str(ids["bob"])], found[str(ids["carol"])]
    assert (alice["state"], alice["job_id"]) == ("queued", alice_job) and "alice" in alice["html"]
    assert "waiting for " in alice["html"] and ">Cancel<" in alice["html"]
    assert (bob["state"], bob["job_id"]) == ("running", bob_job) and "running for " in bob["html"]
    assert f"follow-up waiting: <code>{bob_follow}</code>" in bob["html"] and ">Cancel follow-up<" in bob["html"]
    assert (carol["state"], carol["job_id"]) == ("scheduled", carol_job) and "due in 5" in carol["html"]
    before = counters(page)
    assert before == {**{name: 0 for name in before}, **dedup.stats()} and before["admitted"] == 5
    assert before["follow_up"] == 1 and before["cancelled"] == 0

    def cancel(key: int) -> tuple[str, str]:
        resp = client.post("/admin/cancel", data={"key": str(key), "csrf_token": token, "cursor": "0"})
        assert resp.status_code == 302 and "/admin" in resp.headers["Location"]
        return flashed(client.get(resp.headers["Location"]).get_data(as_text=True))

    assert cancel(ids["alice"]) == ("success", f"Cancelled alice's job {alice_job} (queued).")
    assert not dedup.has_pending(ids["alice"]) and queue.fetch_job(alice_job).get_status() == "canceled"  # type: ignore[union-attr]
    kind, text = cancel(ids["bob"])
    assert kind == "success" and text.startswith(f"Cancelled the follow-up run {bob_follow} waiting for bob's")
    assert dedup.is_running(ids["bob"]) and dedup.status(ids["bob"]).follow_up_job_id is None
    assert cancel(ids["bob"]) == ("conflict", f"Not cancelled: bob's job {bob_job} is running "
                                              "(running jobs are left alone).")
    kind, text = cancel(ids["admin"])
    assert kind == "conflict" and text.startswith(f"Not cancelled: admin's job {soon} is due within 60 s")
    assert cancel(ids["alice"]) == ("conflict", "Nothing to cancel: alice has no pending job.")
    assert cancel(ids["carol"])[0] == "success" and not dedup.has_pending(ids["carol"])
    assert client.post("/admin/cancel", data={"key": "", "csrf_token": token}).status_code == 302
    assert flashed(client.get("/admin").get_data(as_text=True)) == ("error", "Not a valid key: ''.")

    page = client.get("/admin").get_data(as_text=True)
    assert counters(page)["cancelled"] == 3
    after = rows(page)
    assert after[str(ids["bob"])]["state"] == "running" and "runs to its end" in after[str(ids["bob"])]["html"]
    assert after.get(str(ids["alice"]), {"state": "ended"})["state"] == "ended"  # freed (gc may delete the slot)


def test_admin_pages_through_many_slots(tmp_path: Path, real_redis: redis.Redis) -> None:
    from dedupkit import EnqueueRequest

    app = make_app(tmp_path, real_redis, ADMIN_PAGE_SIZE=40)
    dedup = make_deduplicator(real_redis)
    # 150 keys that are not user ids (shown as "key …"), long enough that Redis keeps the
    # slots hash as a real hash table, where HSCAN pages (a small listpack comes in one reply).
    keys = {f"mailbox-{'x' * 64}-{k}" for k in range(150)} | {"9" * 30}
    dedup.enqueue_many([EnqueueRequest(k, process_user_emails_standalone, (k,)) for k in keys])
    client = app.test_client()
    login(client, "admin")
    seen: set[str] = set()
    url, pages = "/admin", 0
    while True:
        page = client.get(url).get_data(as_text=True)
        pages += 1
        found = rows(page)
        assert all(r["state"] == "queued" and f"key {k}" in r["html"] for k, r in found.items())
        seen |= set(found)
        nxt = re.search(r'href="([^"]+)" id="next-page"', page)
        if not nxt:
            break
        url = nxt.group(1).replace("&amp;", "&")
        assert pages < 50
    assert seen == keys and pages > 1
    assert client.get("/admin?cursor=nope").status_code == 400
    assert client.get("/admin?cursor=-1").status_code == 400


def test_metrics_for_admins_and_the_token(tmp_path: Path, real_redis: redis.Redis) -> None:
    app = make_app(tmp_path, real_redis, METRICS_TOKEN="scrape-me")
    client = app.test_client()
    token = login(client, "alice")
    assert client.post(TRIGGER, headers={"X-CSRF-Token": token}).status_code == 202
    assert client.post(TRIGGER, headers={"X-CSRF-Token": token}).status_code == 409
    assert client.get("/metrics").status_code == 403  # signed in, not an admin
    scraper = app.test_client()
    assert scraper.get("/metrics").status_code == 401
    assert scraper.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    resp = scraper.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
    assert resp.status_code == 200 and resp.content_type == "text/plain; version=0.0.4; charset=utf-8"
    text = resp.get_data(as_text=True)
    assert 'dedupkit_decisions_total{decision="admitted",queue="email_processing"} 1.0' in text
    assert 'dedupkit_decisions_total{decision="conflict",queue="email_processing"} 1.0' in text
    assert 'dedupkit_rq_jobs{queue="email_processing",state="queued"} 1.0' in text
    admin = app.test_client()
    login(admin, "admin")
    assert admin.get("/metrics").status_code == 200


def test_without_a_token_metrics_are_for_signed_in_admins(app: Flask) -> None:
    assert app.config["METRICS_TOKEN"] is None
    client = app.test_client()
    assert client.get("/metrics", headers={"Authorization": "Bearer "}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": "Bearer None"}).status_code == 401
    login(client, "admin")
    resp = client.get("/metrics")
    assert resp.status_code == 200 and b"# TYPE dedupkit_decisions_total counter" in resp.data


def test_202_and_409_carry_the_complete_status_last_run_included(app: Flask, real_redis: redis.Redis) -> None:
    client = app.test_client()
    headers = {"X-CSRF-Token": login(client, "alice")}
    first = client.post(TRIGGER, headers=headers).get_json()["job_id"]
    rqstate.run_all(Queue("email_processing", connection=real_redis))
    admitted = client.post(TRIGGER, headers=headers)
    conflict = client.post(TRIGGER, headers=headers)
    status = client.get(STATUS).get_json()["job_status"]
    assert (admitted.status_code, conflict.status_code) == (202, 409)
    for body in (admitted.get_json(), conflict.get_json()):
        last = body["job_status"]["last_run"]
        assert last is not None and (last["job_id"], last["status"]) == (first, "finished")
    assert conflict.get_json()["job_status"] == status, "one answer, one complete status"


def test_admin_lands_on_admin_and_a_non_admin_gets_the_apps_403_page(app: Flask) -> None:
    client = app.test_client()
    page = client.get("/login").get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token
    resp = client.post("/login", data={"username": "admin", "password": PASSWORD, "csrf_token": token.group(1)})
    assert resp.status_code == 302 and resp.headers["Location"].endswith("/admin")

    other = app.test_client()
    login(other, "carol")
    denied = other.get("/admin")
    html = denied.get_data(as_text=True)
    assert denied.status_code == 403 and denied.mimetype == "text/html"
    assert "This page is for administrators; you are signed in as carol." in html
    assert 'id="username">carol<' in html and "style.css" in html, "the app's layout"
    assert "Forbidden" not in html
    missing = other.get("/no-such-page")
    assert missing.status_code == 404 and "Page not found" in missing.get_data(as_text=True)


# -- cooldown --------------------------------------------------------------------------


def test_a_trigger_within_the_cooldown_is_429_with_retry_after(tmp_path: Path, real_redis: redis.Redis) -> None:
    app = make_app(tmp_path, real_redis, COOLDOWN_SECONDS=120.0)
    client = app.test_client()
    token = login(client, "alice")
    job_id = client.post(TRIGGER, headers={"X-CSRF-Token": token}).get_json()["job_id"]
    rqstate.run_all(Queue("email_processing", connection=real_redis))
    refused = client.post(TRIGGER, headers={"X-CSRF-Token": token})
    assert refused.status_code == 429
    body = refused.get_json()
    assert body["reason"] == "cooldown" and body["success"] is False
    reopens = datetime.fromisoformat(body["retry_after"])
    assert reopens.utcoffset() == timedelta(0)
    assert body["error"] == COOLDOWN_ERROR.format(when=reopens.strftime("%H:%M:%S UTC"))
    assert 110 <= int(refused.headers["Retry-After"]) <= 121
    assert int(refused.headers["Retry-After"]) == body["retry_after_seconds"]
    assert body["job_status"]["last_run"]["job_id"] == job_id and body["job_status"]["pending"] is False
    # "Run again" during the cooldown: scheduled for when it ends.
    follow = client.post(FOLLOW_UP, headers={"X-CSRF-Token": token})
    assert follow.status_code == 202
    scheduled = follow.get_json()
    assert scheduled["job_status"]["state"] == "scheduled"
    assert datetime.fromisoformat(scheduled["retry_after"]) >= reopens

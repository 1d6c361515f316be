"""End to end: real redis-server, a real ``rq worker --with-scheduler``, the app served on
loopback over HTTP, the example's scheduler."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis

from examples.flask_app import create_app, db
from examples.flask_app.app import make_deduplicator
from examples.flask_app.client import Client
from examples.flask_app.scheduling import make_scheduler
from examples.flask_app.server import BackgroundServer, serving

from .support import RedisServer, RQWorker, wait_for

PASSWORD = "e2e-password"
JOB_SECONDS = 1.5


@pytest.fixture
def site(tmp_path: Path, real_server: RedisServer, real_redis: redis.Redis,
         workers: Callable[..., RQWorker]) -> Iterator[tuple[BackgroundServer, RQWorker, str]]:
    path = str(tmp_path / "app.sqlite3")
    app = create_app({"SECRET_KEY": "e2e", "DATABASE": path, "REDIS_URL": real_server.url, "SEED_DEMO_USERS": True,
                      "DEMO_PASSWORD": PASSWORD, "PASSWORD_HASH_METHOD": "pbkdf2:sha256:1000",
                      "JOB_SECONDS": JOB_SECONDS})
    worker = workers("email_processing", scheduler=True)
    with serving(app) as server:
        yield server, worker, path


def uid(path: str, name: str) -> int:
    conn = db.connect(path)
    user = db.user_by_name(conn, name)
    conn.close()
    assert user
    return user.id


def test_twenty_concurrent_posts_one_202_then_admitted_after_the_job(site: tuple[BackgroundServer, RQWorker, str],
                                                                      real_redis: redis.Redis) -> None:
    server, worker, path = site
    client = Client(server.url)
    assert client.login("alice", PASSWORD) == 200
    barrier = threading.Barrier(20)
    answers: list[tuple[int, dict[str, object]]] = []
    lock = threading.Lock()

    def post() -> None:
        barrier.wait(10)
        answer = client.trigger()
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=post) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    codes = sorted(code for code, _ in answers)
    assert codes == [202] + [409] * 19, codes
    admitted = next(body for code, body in answers if code == 202)
    job_id = admitted["job_id"]
    for code, body in answers:
        if code == 409:
            assert body["error"] == "Email processing job already pending for this user"
            js = body["job_status"]
            assert isinstance(js, dict) and js["job_id"] == job_id and js["state"] in ("queued", "running")

    # The real worker picks it up: the status goes running, and a POST now conflicts with a running job.
    wait_for(lambda: client.status()[1]["job_status"]["state"] == "running", 10, what="the job to start")
    code, body = client.trigger()
    assert code == 409 and body["job_status"]["has_running_job"] is True  # type: ignore[index]
    wait_for(lambda: not client.status()[1]["job_status"]["pending"], 15, what="the job to finish")
    alice = uid(path, "alice")
    runs = db.runs(path, alice)
    assert [r["job_id"] for r in runs] == [job_id]  # exactly one run for 21 POSTs

    code, body = client.trigger()
    assert code == 202 and body["job_id"] != job_id
    wait_for(lambda: len(db.runs(path, alice)) == 2, 15, what="the second job to run")
    assert "Traceback" not in worker.output()


def test_scheduler_jobs_run_on_the_worker_and_block_the_trigger(site: tuple[BackgroundServer, RQWorker, str],
                                                                 real_server: RedisServer,
                                                                 real_redis: redis.Redis) -> None:
    server, worker, path = site
    alice, bob = uid(path, "alice"), uid(path, "bob")
    # alice's next check is due in 2 s: the tick schedules it (enqueue_at), RQ's scheduler runs it.
    conn = db.connect(path)
    with conn:
        conn.execute("UPDATE email_configurations SET last_check_time = ? WHERE user_id = ?",
                     ((db.utcnow() - timedelta(minutes=60) + timedelta(seconds=2)).isoformat(), alice))
    conn.close()
    sched = make_scheduler(real_server.url, db_path=path, interval=60, seconds=JOB_SECONDS)
    result = sched.tick()
    assert (result.admitted, result.skipped) == (2, 0)  # bob overdue (queued), alice scheduled
    dedup = make_deduplicator(real_redis)
    assert dedup.status(alice).has_scheduled_job

    client = Client(server.url)
    assert client.login("alice", PASSWORD) == 200
    code, body = client.trigger()
    assert code == 409 and body["job_status"]["state"] == "scheduled"  # type: ignore[index]
    assert sched.tick().skipped == 2

    wait_for(lambda: len(db.runs(path, alice)) == 1 and len(db.runs(path, bob)) == 1, 20,
             what="both scheduled users' jobs to run")
    wait_for(lambda: not dedup.has_pending(alice), 10, what="alice's slot to free")
    assert client.trigger()[0] == 202
    assert "Traceback" not in worker.output()


def test_follow_up_requested_twice_runs_once_after_the_running_job(site: tuple[BackgroundServer, RQWorker, str],
                                                                   real_redis: redis.Redis) -> None:
    server, worker, path = site
    client = Client(server.url)
    assert client.login("alice", PASSWORD) == 200
    code, body = client.trigger()
    assert code == 202
    first = body["job_id"]
    wait_for(lambda: client.status()[1]["job_status"]["state"] == "running", 10, what="the job to start")

    code, body = client.follow_up()
    assert code == 202 and body["follow_up_of"] == first, body
    follow = body["job_id"]
    code, body = client.follow_up()  # asked again while it waits: coalesced into the same follow-up
    assert code == 409 and body["reason"] == "coalesced" and body["follow_up_job_id"] == follow, body
    code, body = client.trigger()
    assert code == 409 and body["job_status"]["follow_up_job_id"] == follow  # type: ignore[index]
    js = client.status()[1]["job_status"]
    assert (js["job_id"], js["state"], js["follow_up_job_id"]) == (first, "running", follow)
    alice = uid(path, "alice")
    assert [r["job_id"] for r in db.runs(path, alice)] == []  # the follow-up did not start beside it

    # The real worker runs the first job, then RQ releases the follow-up, which runs once.
    wait_for(lambda: len(db.runs(path, alice)) == 2, 15, what="the job and its follow-up to run")
    wait_for(lambda: not client.status()[1]["job_status"]["pending"], 10, what="the slot to free")
    runs = db.runs(path, alice)
    assert [r["job_id"] for r in runs] == [first, follow]
    assert runs[1]["started_at"] >= runs[0]["finished_at"]  # after it, not beside it
    last = client.status()[1]["job_status"]["last_run"]
    # The follow-up ran last, even when no write call moved the slot to it while it ran.
    assert last["status"] == "finished" and last["job_id"] == follow
    worker_log = worker.output()
    assert worker_log.count(follow) >= 1 and "Traceback" not in worker_log
    assert make_deduplicator(real_redis).stats()["follow_up"] == 1
    assert len(db.runs(path, alice)) == 2  # and nothing else ran afterwards

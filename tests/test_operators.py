"""Operator tools: slots listing, sweep, adopt (the one-off migration)."""

from __future__ import annotations

from datetime import timedelta

import fakeredis
import pytest
import redis
from rq import Queue

from dedupkit import Deduplicator, InvalidRequestError

from . import rqstate

TASK = "tests.tasks.work"


def test_slots_pages_through_every_slot(dedup: Deduplicator) -> None:
    keys = {f"user:{i}" for i in range(600)}  # more than a listpack hash holds, so HSCAN pages
    for key in keys:
        dedup.enqueue(key, TASK)
    seen, cursor, pages = {}, 0, 0
    while True:
        cursor, rows = dedup.slots(cursor, count=100)
        pages += 1
        for key, job_id, status in rows:
            seen[key] = job_id
            assert status.job_id == job_id and status.has_queued_job
        if cursor == 0:
            break
    assert set(seen) == keys
    if not isinstance(dedup.connection, fakeredis.FakeRedis):  # fakeredis answers HSCAN in one page
        assert pages > 1


def test_sweep_deletes_only_slots_of_ended_jobs(dedup: Deduplicator, queue: Queue) -> None:
    for i in range(30):
        dedup.enqueue(f"done{i}", TASK)
    rqstate.run_all(queue)
    for i in range(5):
        dedup.enqueue(f"live{i}", TASK)
    dedup.enqueue_in(timedelta(hours=1), "later", TASK)
    assert queue.connection.hlen(dedup.keys.slots) == 36
    assert dedup.sweep(batch_size=7) == 30
    assert queue.connection.hlen(dedup.keys.slots) == 6
    assert dedup.has_pending("live0") and dedup.is_scheduled("later")
    assert dedup.sweep() == 0


def test_adopt_gives_old_jobs_their_slots(conn: redis.Redis) -> None:
    queue = Queue("legacy", connection=conn)
    dedup = Deduplicator(queue)
    queue.enqueue(TASK, job_id="email_process_7_1700000000")
    queue.enqueue(TASK, job_id="email_process_7_1700000001")  # a duplicate from before dedupkit
    queue.enqueue_in(timedelta(hours=1), TASK, job_id="email_process_alice_1700000002")
    running = queue.enqueue(TASK, job_id="email_process_9_1700000003")
    rqstate.start(conn, queue, running.id)
    queue.enqueue(TASK, job_id="something_else")
    finished = queue.enqueue(TASK, job_id="email_process_10_1700000004")
    conn.hset(finished.key, "status", "finished")

    counts = dedup.adopt("email_process_{key}_*")
    assert counts == {"adopted": 3, "already": 0, "held": 1, "not_pending": 1, "unmatched": 1}
    assert dedup.status(7).job_id == "email_process_7_1700000000"
    assert dedup.is_scheduled("alice") and dedup.is_running(9)
    assert not dedup.enqueue(7, TASK).admitted and not dedup.enqueue(9, TASK).admitted
    assert dedup.enqueue(10, TASK).admitted
    again = dedup.adopt("email_process_{key}_*")
    assert again["adopted"] == 0 and again["already"] == 3


def test_adopt_needs_a_key_placeholder(fake_redis: redis.Redis) -> None:
    with pytest.raises(InvalidRequestError):
        Deduplicator(Queue("q", connection=fake_redis)).adopt("email_process_*")

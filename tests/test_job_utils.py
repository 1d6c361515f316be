"""The drop-in functional API: slots, and the old-style jobs the replaced functions found."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from datetime import timedelta

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from rq import Queue
from rq.job import Job

from dedupkit import Deduplicator, InvalidKeyError, InvalidRequestError, job_utils, legacy
from dedupkit.keys import RateLimit

from . import rqstate
from .support import free_port

TASK = "tests.tasks.work"


@pytest.fixture(autouse=True)
def seed_prefix() -> Iterator[None]:
    """The seed's prefix, set once as an application migrating from it does; restored after."""
    job_utils.configure(job_id_prefix="email_process", legacy_scan=True)
    job_utils._checked_queues.clear()  # asked once per process and queue
    yield
    job_utils.configure(job_id_prefix=job_utils.DEFAULT_JOB_ID_PREFIX, legacy_scan=True)


def test_functions_follow_the_slot(conn: redis.Redis) -> None:
    q = "emails"
    dedup = Deduplicator(Queue(q, connection=conn), job_id_prefix=job_utils.job_id_prefix())
    assert not job_utils.has_user_job_pending(conn, 7, q)
    assert job_utils.get_user_job_status(conn, 7, q)["state"] is None
    adm = dedup.enqueue(7, TASK, "x")
    assert adm.job_id.startswith("email_process_7_")
    assert job_utils.is_user_job_queued(conn, "7", q) and job_utils.has_user_job_pending(conn, 7, q)
    assert not job_utils.is_user_job_running(conn, 7, q) and not job_utils.is_user_job_scheduled(conn, 7, q)
    rqstate.start(conn, Queue(q, connection=conn), adm.job_id)
    assert job_utils.is_user_job_running(conn, 7, q)
    status = job_utils.get_user_job_status(conn, 7, q)
    assert status["user_id"] == 7 and status["has_running_job"] and status["job_id"] == adm.job_id
    assert status["state"] == "running" and not status["has_queued_job"] and status["queue"] == q
    assert status["jobs"] == [{"job_id": adm.job_id, "state": "running"}], "the slot's job is listed once"
    dedup.enqueue_in(timedelta(hours=1), 8, TASK)
    assert job_utils.is_user_job_scheduled(conn, 8, q)
    assert not job_utils.has_user_job_pending(conn, 7, "default"), "queues are separate"


def test_the_prefix_is_set_by_the_app_and_defaults_to_the_deduplicators() -> None:
    assert re.fullmatch(r"email_process_123_\d+", job_utils.generate_job_id(123))
    assert job_utils.generate_job_id("123", 1.5) == job_utils.generate_job_id(123, 1.5)
    job_utils.configure(job_id_prefix=job_utils.DEFAULT_JOB_ID_PREFIX)
    assert re.fullmatch(r"job_123_\d+", job_utils.generate_job_id(123)), "no app's name is hard-wired"
    with pytest.raises(InvalidRequestError):
        job_utils.configure(job_id_prefix="bad prefix")
    with pytest.raises(InvalidRequestError):
        job_utils.configure(legacy_scan="yes")  # type: ignore[arg-type]


def test_an_old_style_job_is_seen_and_blocks_a_second_admission(conn: redis.Redis) -> None:
    """The issue's case: queue.enqueue(f, job_id=generate_job_id(uid)), exactly as the replaced code did."""
    queue = Queue("default", connection=conn)
    old = queue.enqueue(TASK, "old", job_id=job_utils.generate_job_id(5))
    assert Job.fetch(old.id, connection=conn).get_status() == "queued"
    assert job_utils.has_user_job_pending(conn, 5) and job_utils.is_user_job_queued(conn, 5)
    status = job_utils.get_user_job_status(conn, 5)
    assert status["job_id"] == old.id and status["state"] == "queued" and status["has_queued_job"]
    assert status["jobs"] == [{"job_id": old.id, "state": "queued"}]

    adm = job_utils.enqueue(conn, 5, TASK, "new")
    assert not adm.admitted and adm.job_id == old.id, "the old job got the user's slot first"
    assert not Deduplicator(queue, job_id_prefix="email_process").enqueue(5, TASK).admitted, \
        "adopted: a Deduplicator without the scan sees it too"
    assert [j for j in queue.get_job_ids() if j.startswith("email_process_5_")] == [old.id]


def test_a_query_gives_the_old_job_the_slot_so_a_bare_deduplicator_sees_it(conn: redis.Redis) -> None:
    """The seed's pattern, half migrated: ask job_utils, then admit with a Deduplicator."""
    queue = Queue("default", connection=conn)
    old = queue.enqueue(TASK, job_id=job_utils.generate_job_id(6))
    dedup = Deduplicator(queue, job_id_prefix="email_process")
    assert dedup.status(6).pending is False, "before: the slot knows nothing of it"
    assert job_utils.has_user_job_pending(conn, 6)
    assert dedup.status(6).job_id == old.id
    conflict = dedup.enqueue(6, TASK)
    assert not conflict.admitted and conflict.job_id == old.id


def test_old_style_jobs_are_classified_by_rqs_own_state(conn: redis.Redis) -> None:
    queue = Queue("default", connection=conn)
    scheduled = queue.enqueue_in(timedelta(hours=1), TASK, job_id=job_utils.generate_job_id(1))
    running = queue.enqueue(TASK, job_id=job_utils.generate_job_id(2))
    rqstate.start(conn, queue, running.id)
    parent = queue.enqueue(TASK, job_id="parent_job")
    deferred = queue.enqueue(TASK, job_id=job_utils.generate_job_id(3), depends_on=parent)
    raw = queue.enqueue(TASK, job_id="email_process_bob_1700000000")  # an id the old code wrote by hand
    finished = queue.enqueue(TASK, job_id=job_utils.generate_job_id(4))
    conn.lrem(queue.key, 0, finished.id)
    finished.set_status("finished")

    assert job_utils.is_user_job_scheduled(conn, 1) and not job_utils.is_user_job_queued(conn, 1)
    assert job_utils.is_user_job_running(conn, 2) and not job_utils.is_user_job_queued(conn, 2)
    assert job_utils.get_user_job_status(conn, 3)["has_deferred_job"] and job_utils.has_user_job_pending(conn, 3)
    assert job_utils.get_user_job_status(conn, "bob")["job_id"] == raw.id
    assert not job_utils.has_user_job_pending(conn, 4), "a finished job is not pending"
    for uid, job in ((1, scheduled), (2, running), (3, deferred)):
        assert job_utils.get_user_job_status(conn, uid)["job_id"] == job.id

    unseen = queue.enqueue(TASK, job_id=job_utils.generate_job_id(11))
    job_utils.configure(legacy_scan=False)
    assert not job_utils.has_user_job_pending(conn, 11), f"the scan off: slots only ({unseen.id} not seen)"
    assert job_utils.has_user_job_pending(conn, 1), "a query with the scan on gave job 1 its slot"


@pytest.mark.skipif(RateLimit is None, reason="RQ 3 only: rate limits")
@pytest.mark.rq_version
def test_rq3_rate_limited_old_style_job_is_pending(conn: redis.Redis) -> None:
    queue = Queue("default", connection=conn)
    limit = RateLimit("imap", 1)
    first = queue.enqueue(TASK, job_id=job_utils.generate_job_id(1), rate_limit=limit)
    waiting = queue.enqueue(TASK, job_id=job_utils.generate_job_id(2), rate_limit=limit)
    assert waiting.get_status() == "rate_limited" and first.get_status() == "queued"
    status = job_utils.get_user_job_status(conn, 2)
    assert status["has_rate_limited_job"] and status["job_id"] == waiting.id
    assert not job_utils.enqueue(conn, 2, TASK).admitted
    # RQ 3's ready_to_enqueue (a dependent on its way to the queue) is pending too.
    conn.hset(Job.key_for(first.id), "status", "ready_to_enqueue")
    assert job_utils.is_user_job_queued(conn, 1)


def test_the_queue_looked_at_is_logged_and_others_are_not_seen(conn: redis.Redis,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    Queue("emails", connection=conn).enqueue(TASK, job_id=job_utils.generate_job_id(9))
    with caplog.at_level(logging.DEBUG, logger="dedupkit.job_utils"):
        assert job_utils.has_user_job_pending(conn, 9) is False, "queue_name='default' sees only 'default'"
        assert job_utils.has_user_job_pending(conn, 9, "emails") is True
    assert "has_user_job_pending(user 9) looked at queue 'default'" in caplog.text
    assert "looked at queue 'emails'" in caplog.text
    assert "Queue 'default' is unknown to RQ" in caplog.text


def test_redis_down_logs_and_answers_false(caplog: pytest.LogCaptureFixture) -> None:
    conn = redis.Redis(port=free_port(), socket_connect_timeout=0.3, retry=Retry(NoBackoff(), 0))
    with caplog.at_level(logging.ERROR, logger="dedupkit.job_utils"):
        assert job_utils.has_user_job_pending(conn, 1) is False
        assert job_utils.is_user_job_running(conn, 1) is False
        status = job_utils.get_user_job_status(conn, 1)
    assert status["error"] and status["has_running_job"] is False and status["user_id"] == 1
    assert "Could not read the job status of user 1 on queue 'default'" in caplog.text


def test_bad_user_id_still_raises(fake_redis: redis.Redis) -> None:
    with pytest.raises(InvalidKeyError):
        job_utils.has_user_job_pending(fake_redis, None)  # type: ignore[arg-type]


def test_legacy_id_prefixes() -> None:
    assert legacy.id_prefixes(7, "email_process") == ("email_process_7_",)
    assert legacy.id_prefixes("a_b", "p") == ("p_a_b_", "p_a-5fb_")

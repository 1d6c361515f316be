"""Conflict policies (on_conflict=replace / follow_up) on fakeredis and a real redis-server."""

from __future__ import annotations

from datetime import timedelta

import pytest
import redis
from rq import Queue
from rq.job import Job, JobStatus

from dedupkit import Deduplicator, InvalidRequestError, JobState

from . import rqstate

TASK = "tests.tasks.work"


def _status(conn: redis.Redis, job_id: str) -> str:
    return Job.fetch(job_id, connection=conn).get_status().value


def test_replace_a_queued_holder(dedup: Deduplicator, queue: Queue) -> None:
    old = dedup.enqueue("u", TASK, "old")
    new = dedup.enqueue("u", TASK, "new", on_conflict="replace")
    assert new.admitted and new.replaced == old.job_id
    assert _status(queue.connection, old.job_id) == "canceled"
    assert queue.get_job_ids() == [new.job_id]
    assert old.job_id in queue.canceled_job_registry.get_job_ids()
    assert dedup.status("u").job_id == new.job_id
    assert dedup.stats()["replaced"] == 1


def test_replace_a_scheduled_holder_with_an_immediate_job(dedup: Deduplicator, queue: Queue) -> None:
    old = dedup.enqueue_in(timedelta(hours=1), "u", TASK)
    new = dedup.enqueue("u", TASK, on_conflict="replace")
    assert new.admitted and new.replaced == old.job_id
    assert queue.scheduled_job_registry.get_job_ids() == []
    later = dedup.enqueue_in(timedelta(hours=2), "u", TASK, on_conflict="replace")
    assert later.admitted and later.replaced == new.job_id and later.status.state is JobState.SCHEDULED


@pytest.mark.parametrize("case", ["running", "due", "dequeued"])
def test_replace_falls_back_to_reject(dedup: Deduplicator, queue: Queue, case: str) -> None:
    if case == "due":
        old = dedup.enqueue_in(timedelta(seconds=10), "u", TASK)
    else:
        old = dedup.enqueue("u", TASK)
        if case == "running":
            rqstate.start(queue.connection, queue, old.job_id)
        else:
            queue.connection.lrem(queue.key, 1, old.job_id)
    new = dedup.enqueue("u", TASK, on_conflict="replace")
    assert not new.admitted and new.job_id == old.job_id and new.reason == case
    assert _status(queue.connection, old.job_id) in ("started", "scheduled", "queued")


def test_follow_up_after_a_running_job(dedup: Deduplicator, queue: Queue) -> None:
    conn = queue.connection
    running = dedup.enqueue("u", TASK, "first")
    rqstate.start(conn, queue, running.job_id)
    follow = dedup.enqueue("u", TASK, "second", on_conflict="follow_up")
    assert follow.admitted and follow.follow_up_of == running.job_id
    assert follow.status.state is JobState.DEFERRED
    job = Job.fetch(follow.job_id, connection=conn)
    assert job.get_status() == JobStatus.DEFERRED and job.dependency_ids == [running.job_id]
    assert job.allow_dependency_failures
    assert follow.job_id in queue.deferred_job_registry.get_job_ids()
    status = dedup.status("u")
    assert status.job_id == running.job_id and status.follow_up_job_id == follow.job_id
    again = dedup.enqueue("u", TASK, "third", on_conflict="follow_up")
    assert not again.admitted and again.reason == "coalesced" and again.job_id == follow.job_id
    plain = dedup.enqueue("u", TASK, "fourth")
    assert not plain.admitted and plain.job_id == running.job_id
    assert dedup.stats()["follow_up"] == 1


def test_follow_up_is_pointless_for_a_queued_job(dedup: Deduplicator) -> None:
    dedup.enqueue("u", TASK)
    answer = dedup.enqueue("u", TASK, on_conflict="follow_up")
    assert not answer.admitted and answer.reason == "not_running"


def test_follow_up_on_a_free_key_is_a_plain_admission(dedup: Deduplicator) -> None:
    adm = dedup.enqueue("u", TASK, on_conflict="follow_up")
    assert adm.admitted and adm.follow_up_of is None and adm.status.state is JobState.QUEUED


@pytest.mark.parametrize("success", [True, False])
def test_follow_up_runs_when_the_holder_ends(dedup: Deduplicator, queue: Queue, success: bool) -> None:
    """RQ's own enqueue_dependents releases the follow-up after success or failure."""
    conn = queue.connection
    running = dedup.enqueue("u", TASK if success else "tests.tasks.fail", "first")
    execution = rqstate.start(conn, queue, running.job_id)
    follow = dedup.enqueue("u", TASK, "second", on_conflict="follow_up")
    job = Job.fetch(running.job_id, connection=conn)
    with conn.pipeline() as pipe:
        job.set_status(JobStatus.FINISHED if success else JobStatus.FAILED, pipeline=pipe)
        execution.delete(job, pipe)
        pipe.execute()
    queue.enqueue_dependents(job)
    assert queue.get_job_ids() == [follow.job_id]
    status = dedup.status("u")
    assert status.job_id == follow.job_id and status.has_queued_job and status.follow_up_job_id is None
    assert not dedup.enqueue("u", TASK).admitted


def test_follow_up_of_a_dead_holder_is_released_by_the_next_call(dedup: Deduplicator, queue: Queue) -> None:
    conn = queue.connection
    running = dedup.enqueue("u", TASK)
    execution = rqstate.start(conn, queue, running.job_id)
    follow = dedup.enqueue("u", TASK, on_conflict="follow_up")
    rqstate.heartbeat(conn, queue, execution, lease=-1)  # the worker died; RQ would wait for maintenance
    assert dedup.status("u").state is JobState.DEFERRED
    answer = dedup.enqueue("u", TASK)
    assert not answer.admitted and answer.job_id == follow.job_id
    assert queue.get_job_ids() == [follow.job_id] and _status(conn, follow.job_id) == "queued"
    assert queue.deferred_job_registry.get_job_ids() == []
    assert conn.smembers(f"rq:job:{running.job_id}:dependents") == set()
    # RQ's maintenance later fails the dead job; the follow-up is not enqueued a second time.
    queue.started_job_registry.cleanup()
    assert _status(conn, running.job_id) == "failed" and queue.get_job_ids() == [follow.job_id]


def test_cancel_takes_the_follow_up_first(dedup: Deduplicator, queue: Queue) -> None:
    conn = queue.connection
    running = dedup.enqueue("u", TASK)
    rqstate.start(conn, queue, running.job_id)
    follow = dedup.enqueue("u", TASK, on_conflict="follow_up")
    assert dedup.cancel("u") is True
    assert _status(conn, follow.job_id) == "canceled" and dedup.is_running("u")
    assert dedup.status("u").follow_up_job_id is None
    assert conn.smembers(f"rq:job:{running.job_id}:dependents") == set()
    assert dedup.cancel("u") is False


def test_bad_policies(dedup: Deduplicator) -> None:
    with pytest.raises(InvalidRequestError, match="on_conflict"):
        dedup.enqueue("u", TASK, on_conflict="ignore")
    with pytest.raises(InvalidRequestError, match="scheduled"):
        dedup.enqueue_in(timedelta(1), "u", TASK, on_conflict="follow_up")

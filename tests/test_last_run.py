"""Completion notices: a key's last run (status and time) is kept and shown by status()."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from rq import Queue

from dedupkit import Deduplicator

from . import rqstate

TASK = "tests.tasks.work"


def test_last_run_after_success_failure_cancel_and_death(dedup: Deduplicator, queue: Queue) -> None:
    assert dedup.status("u").last_run is None
    first = dedup.enqueue("u", TASK, "x")
    rqstate.run_all(queue)
    status = dedup.status("u")  # the slot still names the finished job: read from its hash
    assert not status.pending and status.last_run is not None
    assert (status.last_run.job_id, status.last_run.status) == (first.job_id, "finished")
    assert status.last_run.ended_at is not None
    assert abs(datetime.now(timezone.utc) - status.last_run.ended_at) < timedelta(minutes=1)

    second = dedup.enqueue("u", "tests.tasks.fail")  # takes the slot over: records the first run
    assert dedup.status("u").last_run.job_id == first.job_id  # type: ignore[union-attr]
    rqstate.run_all(queue)
    assert dedup.status("u").last_run.status == "failed"  # type: ignore[union-attr]
    assert dedup.status("u").to_dict()["last_run"]["job_id"] == second.job_id

    third = dedup.enqueue("u", TASK, "x")
    assert dedup.cancel("u")
    last = dedup.status("u").last_run
    assert last is not None and (last.job_id, last.status) == (third.job_id, "canceled")

    fourth = dedup.enqueue("u", TASK, "x")
    execution = rqstate.start(queue.connection, queue, fourth.job_id)
    rqstate.heartbeat(queue.connection, queue, execution, lease=-1)
    assert dedup.status("u").last_run.status == "dead"  # type: ignore[union-attr]
    dedup.enqueue("u", TASK, "x")
    assert dedup.status("u").last_run.job_id == fourth.job_id  # type: ignore[union-attr]


def test_last_run_survives_gc_and_sweep(queue: Queue) -> None:
    dedup = Deduplicator(queue, gc_budget=5, gc_min_age=0)
    a = dedup.enqueue("a", TASK, "x")
    b = dedup.enqueue("b", TASK, "x")
    rqstate.run_all(queue)
    dedup.enqueue("other", TASK, "x")  # gc deletes both ended slots
    assert queue.connection.hlen(dedup.keys.slots) == 1
    assert dedup.status("a").last_run.job_id == a.job_id  # type: ignore[union-attr]
    c = dedup.enqueue("c", TASK, "x")
    rqstate.run_all(queue)
    assert dedup.sweep() >= 1
    assert dedup.status("c").last_run.status == "finished"  # type: ignore[union-attr]
    assert dedup.status("c").last_run.job_id == c.job_id  # type: ignore[union-attr]
    assert dedup.status("b").last_run.job_id == b.job_id  # type: ignore[union-attr]


def test_a_follow_up_that_ran_is_the_last_run(dedup: Deduplicator, queue: Queue) -> None:
    """Holder and follow-up both end with no dedupkit call in between: the follow-up, which
    ran last, is the key's last run."""
    from rq.job import Job, JobStatus

    conn = queue.connection
    first = dedup.enqueue("u", TASK, "x")
    execution = rqstate.start(conn, queue, first.job_id)
    follow = dedup.enqueue("u", TASK, "x", on_conflict="follow_up")
    conflict = dedup.enqueue("u", TASK, "x")
    assert conflict.job_id == first.job_id and conflict.status.follow_up_job_id == follow.job_id
    job = Job.fetch(first.job_id, connection=conn)
    with conn.pipeline() as pipe:
        job.set_status(JobStatus.FINISHED, pipeline=pipe)
        execution.delete(job, pipe)
        pipe.execute()
    queue.enqueue_dependents(job)  # as RQ's worker does; then the follow-up runs and ends
    rqstate.run_all(queue)
    assert Job.fetch(follow.job_id, connection=conn).get_status() == JobStatus.FINISHED
    last = dedup.status("u").last_run
    assert last is not None and (last.job_id, last.status) == (follow.job_id, "finished")
    nxt = dedup.enqueue("u", TASK, "x")
    assert nxt.admitted and nxt.recovered == "ended"
    assert dedup.status("u").last_run.job_id == follow.job_id  # type: ignore[union-attr]


def test_a_conflict_carries_the_complete_status(dedup: Deduplicator, queue: Queue) -> None:
    """One answer, one complete status: a conflict's (and an admission's) last_run is status()'s."""
    first = dedup.enqueue("u", TASK, "x")
    rqstate.run_all(queue)
    second = dedup.enqueue("u", TASK, "x")
    assert second.admitted and second.status.last_run is not None
    assert second.status.last_run.job_id == first.job_id and second.status.last_run.status == "finished"
    conflict = dedup.enqueue("u", TASK, "x")
    assert not conflict.admitted and conflict.status.last_run == dedup.status("u").last_run
    assert conflict.status.to_dict() == dedup.status("u").to_dict()
    assert conflict.status.to_dict()["last_run"]["job_id"] == first.job_id

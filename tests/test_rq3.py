"""RQ 3's new states, driven by RQ 3's own code on fakeredis and a real redis-server.

- ``ready_to_enqueue``: RQ 3 moves a dependent (a follow-up) from the deferred registry to
  ``rq:ready:<q>`` when its holder ends, then onto the queue. It holds the key throughout.
- ``rate_limited``: ``rate_limit=RateLimit(key, concurrency)`` jobs beyond the limit wait in
  ``rq:rl:<key>:rate_limited``; RQ's own scripts promote them. They hold the key;
  ``cancel``/``replace`` withdraw them as RQ's ``Job.cancel`` does.

Skipped on RQ 2 (which has neither state); ``rate_limit=`` is refused there.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import redis
import rq
from rq import Queue
from rq.job import Job, JobStatus

from dedupkit import Deduplicator, InvalidRequestError, JobState

from . import rqstate

TASK = "tests.tasks.work"
RQ_MAJOR = int(rq.__version__.split(".")[0])
rq3_only = [pytest.mark.rq_version, pytest.mark.skipif(RQ_MAJOR < 3, reason=f"RQ 3 state; this is RQ {rq.__version__}")]


def _status(conn: redis.Redis, job_id: str) -> str:
    return Job.fetch(job_id, connection=conn).get_status().value


def _holder_ends(conn: redis.Redis, queue: Queue, job_id: str, execution: object) -> Job:
    """What RQ 3's worker commits when a job succeeds: status finished, execution gone."""
    job = Job.fetch(job_id, connection=conn)
    with conn.pipeline() as pipe:
        job.set_status(JobStatus.FINISHED, pipeline=pipe)
        execution.delete(job, pipe)  # type: ignore[attr-defined]
        pipe.execute()
    return job


@pytest.mark.rq_version
@pytest.mark.skipif(RQ_MAJOR >= 3, reason="RQ 3 accepts rate_limit=")
def test_rate_limit_is_refused_on_rq2(dedup: Deduplicator) -> None:
    with pytest.raises(InvalidRequestError, match="RQ 3"):
        dedup.enqueue("u", TASK, rate_limit=object())
    assert not dedup.has_pending("u")


@pytest.mark.parametrize("_", [pytest.param(None, marks=rq3_only)])
def test_a_follow_up_rq3_moved_to_ready_holds_the_key_until_rq_queues_it(dedup: Deduplicator, queue: Queue,
                                                                         _: None) -> None:
    conn = queue.connection
    running = dedup.enqueue("u", TASK, "first")
    execution = rqstate.start(conn, queue, running.job_id)
    follow = dedup.enqueue("u", TASK, "second", on_conflict="follow_up")
    job = _holder_ends(conn, queue, running.job_id, execution)
    # RQ 3's first step: deferred -> ready registry, status ready_to_enqueue (its worker
    # then calls enqueue_ready_jobs_by_queue; a crash in between leaves it to maintenance).
    moved = queue.move_dependents_to_ready(job)
    assert moved == {queue.name: [follow.job_id]}
    assert _status(conn, follow.job_id) == "ready_to_enqueue"
    # (get_job_ids() would run its cleanup, which queues it: read the zset itself)
    assert conn.zrange(queue.ready_job_registry.key, 0, -1) == [follow.job_id.encode()]
    status = dedup.status("u")
    assert status.job_id == follow.job_id and status.state is JobState.QUEUED and status.follow_up_job_id is None
    assert not dedup.enqueue("u", TASK, "x").admitted
    replace = dedup.enqueue("u", TASK, "x", on_conflict="replace")
    assert not replace.admitted and replace.reason == "ready" and replace.job_id == follow.job_id
    assert dedup.cancel("u") is False and _status(conn, follow.job_id) == "ready_to_enqueue"
    assert dedup.sweep() == 0
    # RQ 3's second step still finds it and queues it (nothing above touched its keys).
    queue.enqueue_ready_jobs_by_queue(moved)
    assert queue.get_job_ids() == [follow.job_id] and _status(conn, follow.job_id) == "queued"
    assert dedup.status("u").job_id == follow.job_id and dedup.is_queued("u")
    rqstate.run_all(queue)
    assert not dedup.has_pending("u") and dedup.enqueue("u", TASK, "third").admitted


@pytest.mark.parametrize("_", [pytest.param(None, marks=rq3_only)])
def test_ready_registry_cleanup_queues_a_stranded_follow_up(dedup: Deduplicator, queue: Queue, _: None) -> None:
    """RQ 3's maintenance (ReadyJobRegistry.cleanup) finishes a move its worker did not."""
    conn = queue.connection
    running = dedup.enqueue("u", TASK, "first")
    execution = rqstate.start(conn, queue, running.job_id)
    follow = dedup.enqueue("u", TASK, "second", on_conflict="follow_up")
    queue.move_dependents_to_ready(_holder_ends(conn, queue, running.job_id, execution))
    assert dedup.has_pending("u")
    queue.ready_job_registry.cleanup()
    assert queue.get_job_ids() == [follow.job_id] and dedup.is_queued("u")


@pytest.mark.parametrize("_", [pytest.param(None, marks=rq3_only)])
def test_rate_limited_jobs_hold_their_keys_and_rq_promotes_them(dedup: Deduplicator, queue: Queue,
                                                                _: None) -> None:
    from rq.rate_limit import RateLimit, RateLimitRegistry

    conn = queue.connection
    limit = RateLimit("mail", 1)
    first = dedup.enqueue("a", TASK, "a", rate_limit=limit)
    assert first.admitted and first.status.state is JobState.QUEUED  # a slot was free: RQ's script queued it
    second = dedup.enqueue("b", TASK, "b", rate_limit=limit)
    assert second.admitted and second.status.state is JobState.RATE_LIMITED
    registry = RateLimitRegistry("mail", connection=conn)
    assert registry.get_allowed_job_ids() == [first.job_id]
    assert registry.get_rate_limited_job_ids() == [second.job_id]
    assert queue.get_job_ids() == [first.job_id] and _status(conn, second.job_id) == "rate_limited"
    assert dedup.status("b").has_rate_limited_job and dedup.status("b").to_dict()["state"] == "rate_limited"
    again = dedup.enqueue("b", TASK, "b", rate_limit=limit)
    assert not again.admitted and again.job_id == second.job_id and again.status.state is JobState.RATE_LIMITED
    assert dedup.sweep() == 0
    # RQ's own worker runs "a"; its slot release promotes "b", which then runs too.
    rqstate.run_all(queue)
    assert _status(conn, first.job_id) == "finished" and _status(conn, second.job_id) == "finished"
    assert conn.llen("test:runs:a") == 1 and conn.llen("test:runs:b") == 1
    assert not dedup.has_pending("a") and not dedup.has_pending("b")


@pytest.mark.parametrize("_", [pytest.param(None, marks=rq3_only)])
def test_cancel_and_replace_withdraw_a_rate_limited_job_as_rq_cancel_does(dedup: Deduplicator, queue: Queue,
                                                                          _: None) -> None:
    from rq.rate_limit import RateLimit, RateLimitRegistry

    conn = queue.connection
    limit = RateLimit("mail", 1)
    dedup.enqueue("a", TASK, "a", rate_limit=limit)
    waiting = dedup.enqueue("b", TASK, "b", rate_limit=limit)
    registry = RateLimitRegistry("mail", connection=conn)
    assert dedup.cancel("b") is True
    assert _status(conn, waiting.job_id) == "canceled"
    assert registry.get_rate_limited_job_ids() == [] and waiting.job_id in queue.canceled_job_registry.get_job_ids()
    assert not dedup.has_pending("b")
    other = dedup.enqueue("c", TASK, "c", rate_limit=limit)
    assert other.status.state is JobState.RATE_LIMITED
    new = dedup.enqueue("c", TASK, "c2", on_conflict="replace")
    assert new.admitted and new.replaced == other.job_id and new.status.state is JobState.QUEUED
    assert registry.get_rate_limited_job_ids() == [] and _status(conn, other.job_id) == "canceled"
    rqstate.run_all(queue)
    assert conn.llen("test:runs:b") == 0 and conn.llen("test:runs:c") == 0 and conn.llen("test:runs:c2") == 1


@pytest.mark.parametrize("_", [pytest.param(None, marks=rq3_only)])
def test_cancelling_a_queued_rate_limited_job_frees_its_limit_slot_as_rq_does(dedup: Deduplicator, queue: Queue,
                                                                              _: None) -> None:
    from rq.rate_limit import RateLimit, RateLimitRegistry

    conn = queue.connection
    limit = RateLimit("mail", 1)
    first = dedup.enqueue("a", TASK, "a", rate_limit=limit)
    waiting = dedup.enqueue("b", TASK, "b", rate_limit=limit)
    registry = RateLimitRegistry("mail", connection=conn)
    assert dedup.cancel("a") is True and _status(conn, first.job_id) == "canceled"
    # RQ's RateLimitRegistry.cancel ran after the script: the slot went to the waiting job.
    assert registry.get_allowed_job_ids() == [waiting.job_id] and registry.get_rate_limited_job_ids() == []
    assert queue.get_job_ids() == [waiting.job_id] and dedup.is_queued("b")
    replaced = dedup.enqueue("b", TASK, "b2", on_conflict="replace")
    assert replaced.admitted and replaced.replaced == waiting.job_id
    assert registry.get_allowed_job_ids() == []


@pytest.mark.parametrize("_", [pytest.param(None, marks=rq3_only)])
def test_rate_limit_with_a_schedule_runs_through_rqs_scheduler(dedup: Deduplicator, queue: Queue, _: None) -> None:
    from rq.rate_limit import RateLimit

    adm = dedup.enqueue_in(timedelta(seconds=0), "s", TASK, "s", rate_limit=RateLimit("sched", 1))
    assert adm.status.state is JobState.SCHEDULED
    job = Job.fetch(adm.job_id, connection=queue.connection)
    assert job.rate_limit_key == "sched" and job.rate_limit_concurrency == 1


@pytest.mark.parametrize("_", [pytest.param(None, marks=rq3_only)])
def test_rate_limit_refusals(dedup: Deduplicator, _: None) -> None:
    from rq.rate_limit import RateLimit

    with pytest.raises(InvalidRequestError, match="RateLimit"):
        dedup.enqueue("u", TASK, rate_limit=("mail", 1))
    with pytest.raises(InvalidRequestError, match="follow_up"):
        dedup.enqueue("u", TASK, rate_limit=RateLimit("mail", 1), on_conflict="follow_up")
    inline = Deduplicator(Queue("inline", connection=dedup.connection, is_async=False))
    with pytest.raises(InvalidRequestError, match="synchronous"):
        inline.enqueue("u", TASK, rate_limit=RateLimit("mail", 1))
    assert not dedup.has_pending("u")


@pytest.mark.parametrize("_", [pytest.param(None, marks=rq3_only)])
def test_a_release_between_rqs_read_and_write_of_the_dependents_aborts_rqs_move(dedup: Deduplicator,
                                                                               queue: Queue, _: None) -> None:
    """RQ 3's worker moves dependents to ready in a transaction WATCHing the dependents set.
    If dedupkit releases the follow-up of a dead holder in between, RQ's EXEC fails and its
    retry finds no dependent: the follow-up is queued once."""
    from redis.exceptions import WatchError

    conn = queue.connection
    running = dedup.enqueue("u", TASK, "first")
    execution = rqstate.start(conn, queue, running.job_id)
    follow = dedup.enqueue("u", TASK, "second", on_conflict="follow_up")
    job = Job.fetch(running.job_id, connection=conn)
    with conn.pipeline() as pipe:
        pipe.watch(job.dependents_key)
        moved = queue.move_dependents_to_ready(job, pipeline=pipe)  # RQ read the dependents: ours is there
        assert moved == {queue.name: [follow.job_id]}
        rqstate.heartbeat(conn, queue, execution, lease=-1)  # meanwhile the holder's lease ran out
        assert not dedup.enqueue("u", TASK, "x").admitted  # this call releases the follow-up
        assert queue.get_job_ids() == [follow.job_id]
        with pytest.raises(WatchError):
            pipe.execute()
    assert queue.move_dependents_to_ready(job) == {}  # RQ's retry: nothing left to move
    assert queue.get_job_ids() == [follow.job_id] and _status(conn, follow.job_id) == "queued"
    assert conn.zcard(queue.ready_job_registry.key) == 0


@pytest.mark.parametrize("_", [pytest.param(None, marks=rq3_only)])
def test_adopt_and_the_counts_take_rate_limited_jobs_like_queued_ones(conn: redis.Redis, _: None) -> None:
    """Jobs enqueued with RQ's own ``rate_limit=`` before dedupkit: ``adopt`` gives the waiting
    ones of its queue their slots (a limit spans queues: the other queue's are left alone), and
    the CLI's sizes and the metrics count them as ``rate_limited`` per queue."""
    from rq.rate_limit import RateLimit, RateLimitRegistry

    from dedupkit.metrics import prometheus_text
    from dedupkit.sizes import queue_sizes

    from .test_metrics import _samples

    queue, other = Queue("test", connection=conn), Queue("other", connection=conn)
    limit = RateLimit("mail", 1)
    running = queue.enqueue(TASK, "a", job_id="email_process_a_1", rate_limit=limit)
    waiting = queue.enqueue(TASK, "b", job_id="email_process_b_1", rate_limit=limit)
    elsewhere = other.enqueue(TASK, "c", job_id="email_process_c_1", rate_limit=limit)
    registry = RateLimitRegistry("mail", connection=conn)
    assert registry.get_rate_limited_job_ids() == [waiting.id, elsewhere.id]
    assert _status(conn, waiting.id) == "rate_limited" and _status(conn, running.id) == "queued"

    dedup, dedup_other = Deduplicator(queue), Deduplicator(other)
    sizes = queue_sizes([dedup, dedup_other])
    assert sizes[0]["rate_limited"] == 1 and sizes[0]["queued"] == 1 and sizes[1]["rate_limited"] == 1
    assert dedup.adopt("email_process_{key}_*") == {"adopted": 2, "already": 0, "held": 0, "not_pending": 0,
                                                    "unmatched": 0}
    status = dedup.status("b")
    assert status.job_id == waiting.id and status.state is JobState.RATE_LIMITED
    conflict = dedup.enqueue("b", TASK, "b2")
    assert not conflict.admitted and conflict.job_id == waiting.id
    assert not dedup.has_pending("c") and dedup_other.status("c").job_id is None  # not adopted by "test"
    samples = _samples(prometheus_text([dedup, dedup_other]))
    for name, expected in (("test", 1), ("other", 1)):
        assert samples[("dedupkit_rq_jobs", (("queue", name), ("state", "rate_limited")))] == expected
    assert samples[("dedupkit_rq_jobs", (("queue", "test"), ("state", "queued")))] == 1

    # RQ's own worker runs "a"; its slot release promotes "b" (then "c", on the other queue).
    rqstate.run_all(queue)
    assert _status(conn, waiting.id) == "finished" and not dedup.has_pending("b")
    assert queue_sizes([dedup])[0]["rate_limited"] == 0 and queue_sizes([dedup_other])[0]["rate_limited"] == 0

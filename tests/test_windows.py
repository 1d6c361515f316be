"""The windows of issue 9, each driven with RQ's own code, step by step, on fakeredis and
a real redis-server: RQ writes its state in several steps, and at every step between
them the key must stay with the job RQ may still run.

Each test stops RQ's real code between two of its writes (an unexecuted pipeline, a
callback RQ runs in the middle of its cleanup) and asks dedupkit to admit there.
"""

from __future__ import annotations

from typing import Any

import pytest
import redis
import rq
from rq import Callback, Queue, Retry
from rq.job import Job, JobStatus
from rq.registry import ScheduledJobRegistry, StartedJobRegistry
from rq.repeat import Repeat

from dedupkit import Deduplicator, JobState

from . import rqstate

TASK = "tests.tasks.work"


def _kill_horse(conn: redis.Redis, queue: Queue, job_id: str, retries: int) -> None:
    """A job that was running when its worker died: lease expired, RQ has not cleaned up."""
    execution = rqstate.start(conn, queue, job_id, lease=30)
    rqstate.heartbeat(conn, queue, execution, lease=-1)
    assert Job.fetch(job_id, connection=conn).retries_left == (retries or None)


def test_retry_with_interval_holds_the_key_between_rqs_writes(dedup: Deduplicator, queue: Queue,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Job.retry writes status 'scheduled' at once, then the registry entry, and the
    worker's pipeline removes the execution later. At each step in between the key must
    stay taken (it did not: 'scheduled' without a registry entry read as 'gone')."""
    conn = queue.connection
    adm = dedup.enqueue("u", "tests.tasks.fail", "r", retry=Retry(max=2, interval=30))
    execution = rqstate.start(conn, queue, adm.job_id, lease=30)
    job = Job.fetch(adm.job_id, connection=conn)
    seen: list[str] = []
    original = ScheduledJobRegistry.schedule

    def schedule(registry: ScheduledJobRegistry, *args: Any, **kwargs: Any) -> Any:
        seen.append(conn.hget(job.key, "status").decode())  # RQ wrote 'scheduled' already
        _assert_held(dedup, adm.job_id)
        return original(registry, *args, **kwargs)

    monkeypatch.setattr(ScheduledJobRegistry, "schedule", schedule)
    with conn.pipeline() as pipe:
        execution.delete(job=job, pipeline=pipe)  # what the worker queues before retry()
        job.retry(queue, pipe)
        _assert_held(dedup, adm.job_id)
        pipe.execute()
    assert seen == ["scheduled"]
    _assert_held(dedup, adm.job_id)
    assert dedup.status("u").state is JobState.SCHEDULED


def _assert_held(dedup: Deduplicator, job_id: str) -> None:
    assert dedup.status("u").job_id == job_id
    for policy in ("reject", "replace"):
        answer = dedup.enqueue("u", TASK, "x", on_conflict=policy)
        assert not answer.admitted and answer.job_id == job_id, policy
    assert dedup.sweep() == 0 and not dedup.cancel("u")
    # A follow-up may wait behind it (RQ enqueues dependents only after the last retry).
    answer = dedup.enqueue("u", TASK, "x", on_conflict="follow_up")
    assert answer.follow_up_of == job_id or (answer.conflict and answer.status.job_id == job_id)
    if answer.admitted:
        assert dedup.cancel("u")  # cancels the follow-up, not the holder
    assert dedup.status("u").job_id == job_id


@pytest.mark.parametrize("retries", [1, 0])
def test_a_dead_holder_is_rqs_to_retry_while_it_has_retries(dedup: Deduplicator, queue: Queue,
                                                            retries: int) -> None:
    """A dead job with retries left is re-queued by RQ's cleanup: it keeps the key until
    then, on every path (admit, gc, sweep, cancel). Without retries it is free at once."""
    conn = queue.connection
    adm = dedup.enqueue("u", TASK, "d", **({"retry": Retry(max=retries)} if retries else {}))
    _kill_horse(conn, queue, adm.job_id, retries)
    if not retries:
        assert not dedup.has_pending("u")
        assert dedup.enqueue("u", TASK, "d").recovered == "dead"
        return
    assert dedup.status("u").state is JobState.RUNNING
    assert not dedup.enqueue("u", TASK, "d").admitted
    assert not dedup.enqueue("u", TASK, "d", on_conflict="replace").admitted
    assert dedup.sweep() == 0 and not dedup.cancel("u")
    StartedJobRegistry(queue=queue).cleanup()  # RQ's maintenance: re-queues it
    status = dedup.status("u")
    assert status.state is JobState.QUEUED and status.job_id == adm.job_id
    assert conn.lrange(queue.key, 0, -1) == [adm.job_id.encode()]


def test_an_admission_inside_rqs_cleanup_of_a_dead_holder_is_refused(dedup: Deduplicator, queue: Queue) -> None:
    """RQ's cleanup fetches the dead job, runs its on_failure callback, then re-saves its
    own copy and re-queues it. An admission in the middle (here: from that callback) must
    not take the key: the old version zeroed retries_left, the cleanup undid it."""
    conn = queue.connection
    answers: list[Any] = []
    _CALLBACK_STATE["answer"] = answers
    _CALLBACK_STATE["dedup"] = dedup
    adm = dedup.enqueue("u", TASK, "d", retry=Retry(max=1), on_failure=Callback(admit_from_callback))
    _kill_horse(conn, queue, adm.job_id, 1)
    StartedJobRegistry(queue=queue).cleanup()
    assert answers and not answers[0].admitted
    assert conn.lrange(queue.key, 0, -1) == [adm.job_id.encode()]  # RQ's retry, alone
    assert dedup.status("u").job_id == adm.job_id


_CALLBACK_STATE: dict[str, Any] = {}


def admit_from_callback(job: Job, connection: redis.Redis, *args: Any) -> None:
    dedup = _CALLBACK_STATE["dedup"]
    _CALLBACK_STATE["answer"].append(dedup.enqueue("u", TASK, "intruder"))


def test_follow_up_is_refused_behind_a_repeating_holder(dedup: Deduplicator, queue: Queue) -> None:
    """On success RQ re-queues a repeating job and enqueues its dependents together."""
    adm = dedup.enqueue("u", TASK, "rep", repeat=Repeat(times=1))
    rqstate.start(queue.connection, queue, adm.job_id, lease=30)
    answer = dedup.enqueue("u", TASK, "next", on_conflict="follow_up")
    assert not answer.admitted and answer.reason == "repeating"


@pytest.mark.parametrize("policy", ["reject", "replace", "follow_up"])
def test_a_replayed_admission_answers_admitted_and_changes_nothing(dedup: Deduplicator, queue: Queue,
                                                                   policy: str) -> None:
    """redis-py resends a script call whose reply was lost: the same job id again."""
    conn = queue.connection
    holder = dedup.enqueue("u" if policy != "reject" else "other", TASK, "first")
    if policy == "follow_up":
        rqstate.start(conn, queue, holder.job_id, lease=30)
    prepared = dedup._prepare(_request("u", policy))
    first = dedup._admit([prepared])[0]
    assert first.admitted
    before = _rq_state(conn, queue)
    again = dedup._admit([prepared])[0]
    assert again.admitted and again.job_id == first.job_id and again.error is None
    assert _rq_state(conn, queue) == before
    expected = {"reject": first.job_id, "replace": first.job_id, "follow_up": holder.job_id}[policy]
    assert dedup.status("u").job_id == expected


def test_a_replay_after_the_job_ended_is_still_that_admission(dedup: Deduplicator, queue: Queue) -> None:
    prepared = dedup._prepare(_request("u", "reject"))
    first = dedup._admit([prepared])[0]
    rqstate.run_all(queue)
    dedup.enqueue("other", TASK, "gc")  # gc may reuse the slot meanwhile
    again = dedup._admit([prepared])[0]
    assert again.admitted and again.job_id == first.job_id
    assert not dedup.has_pending("u")
    assert queue.connection.llen(queue.key) == 1  # only "other"


def test_a_running_job_whose_hash_vanished_holds_the_key_while_its_lease_lives(dedup: Deduplicator,
                                                                               queue: Queue) -> None:
    """A ttl or an eviction can drop the job hash under a running horse; its execution
    lease in rq:wip is what shows it runs."""
    conn = queue.connection
    adm = dedup.enqueue("u", TASK, "d")
    execution = rqstate.start(conn, queue, adm.job_id, lease=30)
    conn.delete(f"rq:job:{adm.job_id}")
    assert dedup.is_running("u")
    assert not dedup.enqueue("u", TASK, "d").admitted and dedup.sweep() == 0
    rqstate.heartbeat(conn, queue, execution, lease=-1)
    assert dedup.enqueue("u", TASK, "d").recovered == "gone"


def test_a_running_job_cancelled_by_rq_holds_the_key_while_its_horse_runs(dedup: Deduplicator,
                                                                          queue: Queue) -> None:
    conn = queue.connection
    adm = dedup.enqueue("u", TASK, "c")
    execution = rqstate.start(conn, queue, adm.job_id, lease=30)
    Job.fetch(adm.job_id, connection=conn).cancel()
    assert Job.fetch(adm.job_id, connection=conn).get_status() == JobStatus.CANCELED
    assert not conn.zscore(queue.started_job_registry.key, execution.composite_key)  # RQ took the lease away
    assert dedup.is_running("u") and not dedup.enqueue("u", TASK, "c").admitted
    conn.zrem(f"rq:executions:{adm.job_id}", execution.id)  # the horse ended (Execution.delete)
    assert dedup.enqueue("u", TASK, "c").admitted


def test_a_status_the_scripts_do_not_know_holds_the_key(dedup: Deduplicator, queue: Queue) -> None:
    """A newer RQ may add statuses (RQ 3 added ready_to_enqueue and rate_limited, which the
    scripts now name): fail closed, reported as queued."""
    adm = dedup.enqueue("u", TASK, "n")
    queue.connection.hset(f"rq:job:{adm.job_id}", "status", "some_future_status")
    assert dedup.status("u").state is JobState.QUEUED
    assert dedup.has_pending("u") and not dedup.enqueue("u", TASK, "n").admitted
    assert dedup.sweep() == 0


def _request(key: str, policy: str) -> Any:
    from dedupkit import EnqueueRequest

    return EnqueueRequest(key, TASK, ("second",), {}, on_conflict=policy)


def _rq_state(conn: redis.Redis, queue: Queue) -> tuple[Any, ...]:
    return (conn.lrange(queue.key, 0, -1), conn.zrange(queue.scheduled_job_registry.key, 0, -1),
            conn.zrange(queue.deferred_job_registry.key, 0, -1), conn.zrange(queue.canceled_job_registry.key, 0, -1),
            sorted(conn.keys("rq:job:*")))


def test_a_running_job_deleted_by_rq_leaves_a_gap_the_readme_names(dedup: Deduplicator, queue: Queue) -> None:
    """Job.delete drops the hash, the wip entry and the executions zset: RQ keeps no trace
    of the running horse (a documented bypass). On RQ 2.x its next heartbeat re-adds the
    execution's score (RQ's Execution.heartbeat, ZADD without XX) and the key is held
    again; RQ 3's heartbeat only updates existing entries, so the gap lasts until the
    horse ends."""
    conn = queue.connection
    adm = dedup.enqueue("u", TASK, "d")
    execution = rqstate.start(conn, queue, adm.job_id, lease=30)
    Job.fetch(adm.job_id, connection=conn).delete()
    assert not dedup.has_pending("u")  # the gap the README names
    with conn.pipeline() as pipe:
        execution.heartbeat(queue.started_job_registry, 30, pipe)  # RQ's own heartbeat
        pipe.execute()
    assert dedup.is_running("u") is (RQ_MAJOR < 3)


RQ_MAJOR = int(rq.__version__.split(".")[0])

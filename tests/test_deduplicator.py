"""Deduplicator behaviour, every state and every stale case, on fakeredis and a real redis-server."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

import pytest
import redis
from rq import Queue
from rq.job import Job, JobStatus

import dedupkit.admission as dd
from dedupkit import (
    Deduplicator,
    EnqueueRequest,
    InvalidKeyError,
    InvalidRequestError,
    JobIdCollisionError,
    JobState,
    RedisUnavailableError,
)
from dedupkit.keys import encode_key

from . import rqstate

TASK = "tests.tasks.work"


def rq_pending(queue: Queue) -> list[str]:
    """Job ids RQ would still run: in the queue, scheduled, deferred or started registries."""
    conn = queue.connection
    ids = [j.decode() for j in conn.lrange(queue.key, 0, -1)]
    ids += [j.decode() for j in conn.zrange(queue.scheduled_job_registry.key, 0, -1)]
    ids += [j.decode() for j in conn.zrange(queue.deferred_job_registry.key, 0, -1)]
    ids += [m.decode().split(":")[0] for m in conn.zrange(queue.started_job_registry.key, 0, -1)]
    return ids


def test_admits_then_reports_conflict_with_the_holder(dedup: Deduplicator, queue: Queue) -> None:
    first = dedup.enqueue(42, TASK, "a", job_timeout="10m")
    assert first.admitted and first.job is not None and first.job_id == first.job.id
    assert first.status.state is JobState.QUEUED and first.status.enqueued_at is not None
    second = dedup.enqueue("42", TASK, "b")
    assert not second.admitted and second.conflict
    assert second.job_id == first.job_id and second.job is None
    assert second.status.to_dict()["has_queued_job"] is True
    assert second.status.to_dict()["state"] == "queued"
    assert rq_pending(queue) == [first.job_id]
    job = Job.fetch(first.job_id, connection=queue.connection)
    assert job.get_status() == JobStatus.QUEUED and job.timeout == 600 and job.args == ("a",)


def test_lookalike_keys_have_separate_slots(dedup: Deduplicator) -> None:
    admitted = [dedup.enqueue(k, TASK, "x").admitted for k in ("a_b", "a/b", "a:b", "a-5fb")]
    assert admitted == [True, True, True, True]


def test_the_written_job_hash_has_the_fields_rq_enqueue_writes(dedup: Deduplicator, queue: Queue) -> None:
    ours = dedup.enqueue("u", TASK, "x", job_timeout=30)
    theirs = queue.enqueue(TASK, "x", job_timeout=30)
    conn = queue.connection
    our_hash, rq_hash = conn.hgetall(f"rq:job:{ours.job_id}"), conn.hgetall(f"rq:job:{theirs.id}")
    assert set(our_hash) == set(rq_hash)
    assert our_hash[b"status"] == rq_hash[b"status"] == b"queued"
    assert our_hash[b"origin"] == b"test"
    assert conn.sismember("rq:queues", queue.key)


def test_a_job_written_by_lua_runs_and_frees_the_slot(dedup: Deduplicator, queue: Queue) -> None:
    adm = dedup.enqueue("u", TASK, "ran")
    rqstate.run_all(queue)
    assert Job.fetch(adm.job_id, connection=queue.connection).get_status() == JobStatus.FINISHED
    assert queue.connection.llen("test:runs:ran") == 1
    assert not dedup.has_pending("u")
    again = dedup.enqueue("u", TASK, "ran")
    assert again.admitted and again.recovered == "ended"


def test_a_failed_job_frees_the_slot(dedup: Deduplicator, queue: Queue) -> None:
    dedup.enqueue("u", "tests.tasks.fail", "f")
    rqstate.run_all(queue)
    assert not dedup.has_pending("u")
    assert dedup.enqueue("u", TASK, "f").admitted


def test_scheduled_job_holds_the_slot_from_the_start(dedup: Deduplicator, queue: Queue) -> None:
    when = datetime.now(timezone.utc) + timedelta(hours=1)
    adm = dedup.enqueue_at(when, "u", TASK, "s")
    assert adm.admitted and adm.status.state is JobState.SCHEDULED
    status = dedup.status("u")
    assert status.has_scheduled_job and dedup.is_scheduled("u") and not dedup.is_queued("u")
    assert status.scheduled_for == when.replace(microsecond=0)
    assert not dedup.enqueue("u", TASK, "now").admitted
    assert not dedup.enqueue_in(timedelta(seconds=5), "u", TASK, "later").admitted
    assert queue.connection.zscore(queue.scheduled_job_registry.key, adm.job_id) == int(when.timestamp())
    assert Job.fetch(adm.job_id, connection=queue.connection).get_status() == JobStatus.SCHEDULED


def test_running_job_blocks_while_its_lease_lives(dedup: Deduplicator, queue: Queue) -> None:
    adm = dedup.enqueue("u", TASK, "r")
    execution = rqstate.start(queue.connection, queue, adm.job_id, lease=30)
    status = dedup.status("u")
    assert status.has_running_job and dedup.is_running("u") and status.started_at is not None
    conflict = dedup.enqueue("u", TASK, "r")
    assert not conflict.admitted and conflict.status.state is JobState.RUNNING
    rqstate.heartbeat(queue.connection, queue, execution, lease=-1)  # the worker died; lease ran out
    assert not dedup.has_pending("u")
    taken = dedup.enqueue("u", TASK, "r")
    assert taken.admitted and taken.recovered == "dead"
    assert dedup.stats()["dead"] == 1


def test_running_job_without_timeout_has_an_infinite_lease(dedup: Deduplicator, queue: Queue) -> None:
    adm = dedup.enqueue("u", TASK, "r", job_timeout=-1)
    rqstate.start(queue.connection, queue, adm.job_id, lease=None)
    assert dedup.is_running("u")


def test_started_job_without_executions_is_dead(dedup: Deduplicator, queue: Queue) -> None:
    adm = dedup.enqueue("u", TASK, "r")
    queue.connection.hset(f"rq:job:{adm.job_id}", "status", "started")
    assert dedup.enqueue("u", TASK, "r").recovered == "dead"


@pytest.mark.parametrize("damage", ["deleted", "heartbeat_ghost", "orphan_scheduled", "canceled", "stopped"])
def test_stale_holders_are_taken_over(dedup: Deduplicator, queue: Queue, damage: str) -> None:
    conn = queue.connection
    if damage == "orphan_scheduled":
        adm = dedup.enqueue_in(timedelta(hours=1), "u", TASK, "x")
        conn.zrem(queue.scheduled_job_registry.key, adm.job_id)
    else:
        adm = dedup.enqueue("u", TASK, "x")
    key = f"rq:job:{adm.job_id}"
    if damage == "deleted":
        conn.delete(key)
    elif damage == "heartbeat_ghost":  # rq#1450: a late heartbeat re-creates the hash
        conn.delete(key)
        conn.hset(key, "last_heartbeat", "2026-01-01T00:00:00.000000Z")
    elif damage in ("canceled", "stopped"):
        conn.hset(key, "status", damage)
    assert not dedup.has_pending("u")
    again = dedup.enqueue("u", TASK, "x")
    assert again.admitted and again.recovered in ("gone", "ended")


def test_job_ttl_expiring_while_queued_frees_the_slot(dedup: Deduplicator, queue: Queue) -> None:
    dedup.enqueue("u", TASK, "x", ttl=1)
    assert queue.connection.ttl(f"rq:job:{dedup.status('u').job_id}") in (0, 1)
    time.sleep(1.2)
    assert dedup.enqueue("u", TASK, "x").recovered == "gone"


def test_id_collision_is_refused_and_writes_nothing(dedup: Deduplicator, queue: Queue,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    conn = queue.connection
    conn.hset("rq:job:job_u_1", mapping={"status": "finished", "origin": "elsewhere"})
    monkeypatch.setattr(dd, "job_id_of", lambda prefix, encoded: f"{prefix}_{encoded}_1")
    with pytest.raises(JobIdCollisionError) as err:
        dedup.enqueue("u", TASK, "x")
    assert err.value.job_id == "job_u_1"
    assert conn.hgetall("rq:job:job_u_1") == {b"status": b"finished", b"origin": b"elsewhere"}
    assert conn.llen(queue.key) == 0 and not conn.hexists(dedup.keys.slots, "u")
    assert dedup.stats()["collision"] == 1


def test_scripts_reload_after_script_flush(dedup: Deduplicator, queue: Queue) -> None:
    assert dedup.enqueue("a", TASK).admitted
    queue.connection.script_flush()
    assert not dedup.enqueue("a", TASK).admitted
    queue.connection.script_flush()
    assert dedup.status("a").pending
    queue.connection.script_flush()
    assert dedup.cancel("a")


def test_enqueue_many_one_call_per_batch(dedup: Deduplicator, queue: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_call = dedup._scripts.call
    monkeypatch.setattr(dedup._scripts, "call", lambda *a: calls.append(a[0].name) or real_call(*a))
    later = datetime.now(timezone.utc) + timedelta(minutes=10)
    requests = [EnqueueRequest(i, TASK, (i,), at=later if i % 2 else None) for i in range(25)]
    requests.append(EnqueueRequest(3, TASK, (3,)))  # same key again in the same call
    result = dedup.enqueue_many(requests, batch_size=10)
    assert calls == ["admit.lua"] * 3
    assert [a.admitted for a in result] == [True] * 25 + [False]
    assert result[-1].job_id == result[3].job_id and result[3].status.state is JobState.SCHEDULED
    assert queue.connection.llen(queue.key) == 13
    assert queue.connection.zcard(queue.scheduled_job_registry.key) == 12
    assert sorted(rq_pending(queue)) == sorted(a.job_id for a in result[:25])


def test_enqueue_many_bad_request(dedup: Deduplicator, queue: Queue) -> None:
    requests = [EnqueueRequest("ok", TASK), EnqueueRequest("", TASK),
                EnqueueRequest("ok2", TASK, kwargs={"job_id": "x"})]
    with pytest.raises(InvalidKeyError):
        dedup.enqueue_many(requests)
    assert queue.connection.llen(queue.key) == 0, "nothing written when a request is bad"
    result = dedup.enqueue_many(requests, raise_errors=False)
    assert [a.admitted for a in result] == [True, False, False]
    assert isinstance(result[1].error, InvalidKeyError) and isinstance(result[2].error, InvalidRequestError)
    assert not result[1].conflict


def test_cancel_queued_job(dedup: Deduplicator, queue: Queue) -> None:
    adm = dedup.enqueue("u", TASK)
    assert dedup.cancel("u") is True
    job = Job.fetch(adm.job_id, connection=queue.connection)
    assert job.get_status() == JobStatus.CANCELED
    assert adm.job_id in queue.canceled_job_registry.get_job_ids()
    assert queue.connection.llen(queue.key) == 0
    assert not dedup.has_pending("u") and dedup.enqueue("u", TASK).admitted
    assert dedup.stats()["cancelled"] == 1


def test_cancel_scheduled_job_far_and_due(dedup: Deduplicator, queue: Queue) -> None:
    far = dedup.enqueue_in(timedelta(hours=2), "far", TASK)
    assert dedup.cancel("far") is True
    assert far.job_id not in queue.scheduled_job_registry.get_job_ids()
    dedup.enqueue_in(timedelta(seconds=20), "due", TASK)
    assert dedup.cancel("due") is False, "within the due margin RQ's scheduler may be promoting it"
    assert dedup.is_scheduled("due")


def test_cancel_leaves_running_and_dequeued_jobs_alone(dedup: Deduplicator, queue: Queue) -> None:
    adm = dedup.enqueue("run", TASK)
    rqstate.start(queue.connection, queue, adm.job_id)
    assert dedup.cancel("run") is False and dedup.is_running("run")
    assert dedup.cancel("run", stop_running=True) is True  # RQ's stop command was sent
    took = dedup.enqueue("taken", TASK)
    queue.connection.lrem(queue.key, 1, took.job_id)  # a worker's LMOVE, before it marks the job started
    assert dedup.cancel("taken") is False
    assert dedup.is_queued("taken")
    assert dedup.cancel("nobody") is False


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"job_id": "mine"}, "job_id"), ({"depends_on": "other"}, "depends_on"), ({"job_timeout": 0}, "timeout"),
     ({"ttl": -1}, "ttl"), ({"unique": True}, "unique")],
)
def test_refused_options(dedup: Deduplicator, queue: Queue, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        dedup.enqueue("u", TASK, **kwargs)
    assert queue.connection.dbsize() == 0


def test_bad_delays_and_times(dedup: Deduplicator) -> None:
    with pytest.raises(InvalidRequestError, match="negative"):
        dedup.enqueue_in(timedelta(seconds=-1), "u", TASK)
    with pytest.raises(InvalidRequestError):
        dedup.enqueue_at("tomorrow", "u", TASK)  # type: ignore[arg-type]
    past = dedup.enqueue_at(datetime.now(timezone.utc) - timedelta(hours=1), "u", TASK)
    assert past.admitted and past.status.has_scheduled_job


def test_main_module_functions_are_refused(dedup: Deduplicator) -> None:
    def f() -> None: ...

    f.__module__ = "__main__"
    with pytest.raises(InvalidRequestError, match="__main__"):
        dedup.enqueue("u", f)


def test_gc_removes_slots_of_ended_jobs(queue: Queue) -> None:
    dedup = Deduplicator(queue, gc_budget=6, gc_min_age=0)  # the walk covers all 6 slots in one call
    for k in range(5):
        dedup.enqueue(f"old{k}", TASK)
    rqstate.run_all(queue)
    assert queue.connection.hlen(dedup.keys.slots) == 5
    dedup.enqueue("new", TASK)
    assert queue.connection.hlen(dedup.keys.slots) == 1
    assert dedup.stats()["swept"] == 5
    dedup.enqueue("new2", TASK)
    assert queue.connection.hlen(dedup.keys.slots) == 2, "gc keeps slots whose job is pending"


def test_redis_down_raises_typed_error_quickly() -> None:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from .support import free_port

    # redis-py >= 6 retries connection errors 3 times with backoff by default; an
    # application that wants to fail fast (a web request) configures that away.
    conn = redis.Redis(port=free_port(), socket_connect_timeout=0.5, socket_timeout=0.5, retry=Retry(NoBackoff(), 0))
    dedup = Deduplicator(Queue("x", connection=conn))
    started = time.monotonic()
    for call in (lambda: dedup.enqueue("u", TASK), lambda: dedup.status("u"), lambda: dedup.cancel("u"),
                 dedup.stats, lambda: dedup.enqueue_many([EnqueueRequest("u", TASK)])):
        with pytest.raises(RedisUnavailableError) as err:
            call()
        assert isinstance(err.value.__cause__, redis.exceptions.ConnectionError)
    assert time.monotonic() - started < 5


def test_damaged_data_fails_one_request_not_the_batch(dedup: Deduplicator, queue: Queue) -> None:
    from dedupkit import ScriptError

    conn = queue.connection
    conn.hset(dedup.keys.slots, "bad", "job_bad_1")
    conn.set("rq:job:job_bad_1", "not a hash")  # WRONGTYPE for the holder check
    result = dedup.enqueue_many([EnqueueRequest("ok1", TASK), EnqueueRequest("bad", TASK),
                                 EnqueueRequest("ok2", TASK)])
    assert [a.admitted for a in result] == [True, False, True]
    assert isinstance(result[1].error, ScriptError) and "WRONGTYPE" in str(result[1].error)
    assert "admit.lua" in str(result[1].error)
    assert queue.get_job_ids() == [result[0].job_id, result[2].job_id]
    with pytest.raises(ScriptError, match=r"admit\.lua"):
        dedup.enqueue("bad", TASK)


def test_damaged_data_met_by_gc_does_not_fail_the_admission(queue: Queue) -> None:
    dedup = Deduplicator(queue, gc_budget=5, gc_min_age=0)
    conn = queue.connection
    dedup.enqueue("old", TASK)
    rqstate.run_all(queue)
    conn.hset(dedup.keys.slots, "bad", "job_bad_1")
    conn.set("rq:job:job_bad_1", "not a hash")
    assert dedup.enqueue("fine", TASK).admitted
    assert conn.hexists(dedup.keys.slots, "bad"), "left for a later walk"
    assert not conn.hexists(dedup.keys.slots, encode_key("old")), "the walk went on past it"
    assert dedup.stats()["swept"] == 1


def test_status_many_answers_like_status_for_every_state(dedup: Deduplicator, queue: Queue) -> None:
    from . import rqstate

    done = dedup.enqueue("done", TASK, "x")
    rqstate.run_all(queue)
    dedup.enqueue("queued", TASK, "x")
    dedup.enqueue_in(timedelta(hours=1), "scheduled", TASK, "x")
    running = dedup.enqueue("running", TASK, "x")
    rqstate.start(queue.connection, queue, running.job_id)
    dedup.enqueue("running", TASK, "y", on_conflict="follow_up")
    keys = ["free", "done", "queued", "scheduled", "running", 7, "7"]
    for batch_size in (500, 2, 1):
        many = dedup.status_many(keys, batch_size=batch_size)
        assert many == [dedup.status(k) for k in keys]
    assert [s.state for s in many] == [None, None, JobState.QUEUED, JobState.SCHEDULED, JobState.RUNNING, None, None]
    assert many[1].last_run is not None and many[1].last_run.job_id == done.job_id
    assert many[4].follow_up_job_id is not None
    assert [s.key for s in many] == ["free", "done", "queued", "scheduled", "running", "7", "7"]
    assert dedup.status_many([]) == []


def test_status_many_checks_every_key_before_reading(dedup: Deduplicator) -> None:
    with pytest.raises(InvalidKeyError):
        dedup.status_many(["fine", ""])
    with pytest.raises(InvalidRequestError):
        dedup.status_many(["fine"], batch_size=0)

"""Tests written to kill the mutants of dedupkit/lua/mutants.toml (issue 10).

`make mutate` runs this file first for every script. Each test reads one thing the other
test files do not (a boundary, a piece of bookkeeping, a registry entry), on fakeredis and
on a real redis-server.
"""

from __future__ import annotations

import time
import types
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import fakeredis
import pytest
import redis
from fakeredis.commands_mixins import server_mixin
from rq import Queue
from rq.job import Job

from dedupkit import Deduplicator, EnqueueRequest, JobState

from . import rqstate
from .servers import server_binary, server_version
from .support import RedisServer

TASK = "tests.tasks.work"
T = 1_800_000_000.0  # the frozen server clock (RQ stores run times in whole seconds)


class Clock:
    """fakeredis's TIME, frozen at ``now`` (real Redis's clock cannot be stopped: the
    boundary tests run on fakeredis only)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = T
        monkeypatch.setattr(server_mixin, "time", types.SimpleNamespace(time=lambda: self.now))


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    return Clock(monkeypatch)


@pytest.fixture
def fqueue(fake_redis: redis.Redis) -> Queue:
    return Queue("test", connection=fake_redis)


def test_frozen_clock_is_what_the_scripts_read(clock: Clock, fake_redis: fakeredis.FakeRedis) -> None:
    assert fake_redis.eval("local t = redis.call('TIME') return tostring(t[1] + t[2] / 1000000)", 0) == b"1800000000"


def test_a_lease_ending_exactly_now_has_ended(clock: Clock, fqueue: Queue) -> None:
    dedup = Deduplicator(fqueue)
    adm = dedup.enqueue("u", TASK, "x")
    execution = rqstate.start(fqueue.connection, fqueue, adm.job_id)
    fqueue.connection.zadd(fqueue.started_job_registry.key, {execution.composite_key: T})
    fqueue.connection.zadd(f"rq:executions:{adm.job_id}", {execution.id: T + 60})
    assert not dedup.has_pending("u")
    clock.now = T - 0.5
    assert dedup.is_running("u")


def test_a_scheduled_job_due_exactly_at_the_margin_is_kept(clock: Clock, fqueue: Queue) -> None:
    dedup = Deduplicator(fqueue, due_margin=60)
    dedup.enqueue_at(datetime.fromtimestamp(T + 60, tz=timezone.utc), "u", TASK, "x")
    assert not dedup.cancel("u") and dedup.status("u").state is JobState.SCHEDULED
    clock.now = T - 0.5  # due half a second after the margin: cancellable
    assert dedup.cancel("u") and not dedup.has_pending("u")


def test_a_popped_job_is_lost_exactly_at_its_mark(clock: Clock, fqueue: Queue) -> None:
    dedup = Deduplicator(fqueue, due_margin=5)
    adm = dedup.enqueue("u", TASK, "x")
    fqueue.connection.lpop(fqueue.key)  # a worker of several queues popped it and died
    assert not dedup.cancel("u")  # marked: lost from T + 5
    clock.now = T + 4.5
    assert dedup.has_pending("u")
    assert not dedup.cancel("u")  # a second cancel keeps the first mark
    clock.now = T + 5
    assert not dedup.has_pending("u")
    nxt = dedup.enqueue("u", TASK, "x")
    assert nxt.admitted and nxt.recovered == "lost"
    assert dedup.status("u").last_run.status == "lost"  # type: ignore[union-attr]
    assert dedup.status("u").last_run.job_id == adm.job_id  # type: ignore[union-attr]


# -- last-run bookkeeping -----------------------------------------------------------------


def _last(dedup: Deduplicator, key: str = "u") -> tuple[str, str, datetime | None]:
    last = dedup.status(key).last_run
    assert last is not None
    return last.job_id, last.status, last.ended_at


def test_a_dead_holder_taken_over_is_recorded_dead_at_the_takeover(dedup: Deduplicator, queue: Queue) -> None:
    adm = dedup.enqueue("u", TASK, "x")
    execution = rqstate.start(queue.connection, queue, adm.job_id)
    rqstate.heartbeat(queue.connection, queue, execution, lease=-1)
    before = datetime.now(timezone.utc)
    nxt = dedup.enqueue("u", TASK, "x")
    assert nxt.recovered == "dead"
    job_id, status, ended = _last(dedup)
    assert (job_id, status) == (adm.job_id, "dead")
    assert ended is not None and abs(ended - before).total_seconds() < 60
    assert dedup.stats()["dead"] == 1 and dedup.stats()["recovered"] == 1


def test_the_last_run_keeps_rqs_own_ended_at(dedup: Deduplicator, queue: Queue) -> None:
    adm = dedup.enqueue("u", TASK, "x")
    rqstate.run_all(queue)
    ended = Job.fetch(adm.job_id, connection=queue.connection).ended_at
    # An hour ago: within the retention (an end older than that is dropped as expired).
    when = (datetime.now(timezone.utc) - timedelta(hours=1)).replace(microsecond=7)
    queue.connection.hset(f"rq:job:{adm.job_id}", "ended_at", when.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    dedup.enqueue("u", TASK, "x")
    assert ended is not None
    assert _last(dedup) == (adm.job_id, "finished", when)


def _finish(queue: Queue, job_id: str, execution: object) -> None:
    """What RQ's worker does when a job succeeds: finished, execution gone, dependents enqueued."""
    from rq.job import JobStatus

    conn = queue.connection
    job = Job.fetch(job_id, connection=conn)
    with conn.pipeline() as pipe:
        job.set_status(JobStatus.FINISHED, pipeline=pipe)
        execution.delete(job, pipe)  # type: ignore[attr-defined]
        pipe.execute()
    queue.enqueue_dependents(job)


def test_a_holder_handed_to_its_follow_up_is_the_last_run(dedup: Deduplicator, queue: Queue) -> None:
    first = dedup.enqueue("u", TASK, "x")
    execution = rqstate.start(queue.connection, queue, first.job_id)
    follow = dedup.enqueue("u", TASK, "x", on_conflict="follow_up")
    _finish(queue, first.job_id, execution)
    answer = dedup.enqueue("u", TASK, "x")  # a conflict with the follow-up, which now holds the slot
    assert answer.conflict and answer.job_id == follow.job_id
    assert _last(dedup)[:2] == (first.job_id, "finished")
    assert queue.connection.hget(dedup.keys.slots, _field("u")) == follow.job_id.encode()
    assert not queue.connection.hexists(dedup.keys.followups, _field("u"))
    assert dedup.status("u").job_id == follow.job_id and dedup.status("u").follow_up_job_id is None


def _field(key: str) -> str:
    from dedupkit.keys import encode_key

    return encode_key(key)


# -- follow-ups: RQ's registries after a cancel and after a release ------------------------


def _dependents(queue: Queue, job_id: str) -> set[bytes]:
    return queue.connection.smembers(Job(job_id, connection=queue.connection).dependents_key)


def test_a_cancelled_follow_up_leaves_every_rq_registry(dedup: Deduplicator, queue: Queue) -> None:
    conn = queue.connection
    first = dedup.enqueue("u", TASK, "x")
    rqstate.start(conn, queue, first.job_id)
    follow = dedup.enqueue("u", TASK, "x", on_conflict="follow_up")
    assert follow.follow_up_of == first.job_id
    job = Job.fetch(follow.job_id, connection=conn)
    assert job.enqueued_at is None and job.dependency_ids == [first.job_id]  # as RQ defers a job
    assert job.allow_dependency_failures
    assert conn.smembers(job.dependencies_key) == {first.job_id.encode()}
    assert _dependents(queue, first.job_id) == {follow.job_id.encode()}
    assert dedup.cancel("u")
    assert conn.zscore(queue.deferred_job_registry.key, follow.job_id) is None
    assert _dependents(queue, first.job_id) == set()
    assert conn.zscore(queue.canceled_job_registry.key, follow.job_id) is not None
    assert not conn.hexists(dedup.keys.followups, _field("u"))
    assert dedup.stats()["cancelled"] == 1
    assert dedup.status("u").job_id == first.job_id and dedup.status("u").follow_up_job_id is None


@pytest.mark.parametrize("at_front", [False, True])
@pytest.mark.parametrize("how", ["admit", "sweep", "cancel"])
def test_a_dead_holders_follow_up_is_released_as_rq_enqueues_a_dependent(dedup: Deduplicator, queue: Queue,
                                                                          at_front: bool, how: str) -> None:
    conn = queue.connection
    first = dedup.enqueue("u", TASK, "x")
    execution = rqstate.start(conn, queue, first.job_id)
    follow = dedup.enqueue("u", TASK, "x", on_conflict="follow_up", at_front=at_front)
    other = dedup.enqueue("other", TASK, "x")  # already waiting in the queue
    rqstate.heartbeat(conn, queue, execution, lease=-1)  # the holder's worker died
    if how == "admit":
        answer = dedup.enqueue("u", TASK, "x")
        assert answer.conflict and answer.job_id == follow.job_id and answer.status.state is JobState.QUEUED
    elif how == "sweep":
        assert dedup.sweep() == 0
    else:
        assert dedup.cancel("u")  # the released follow-up, queued now, is what it cancels
    expected = [follow.job_id, other.job_id] if at_front else [other.job_id, follow.job_id]
    if how == "cancel":
        expected = [other.job_id]
    assert [j.decode() for j in conn.lrange(queue.key, 0, -1)] == expected
    job = Job.fetch(follow.job_id, connection=conn)
    assert job.get_status() == ("canceled" if how == "cancel" else "queued")
    assert conn.zscore(queue.deferred_job_registry.key, follow.job_id) is None
    assert _dependents(queue, first.job_id) == set()  # RQ's cleanup of the holder will not enqueue it again
    assert _last(dedup)[:2] == ((follow.job_id, "canceled") if how == "cancel" else (first.job_id, "dead"))
    assert not conn.hexists(dedup.keys.followups, _field("u"))
    if how != "cancel":
        assert dedup.status("u").job_id == follow.job_id
        assert conn.hget(dedup.keys.slots, _field("u")) == follow.job_id.encode()


# -- gc, sweep, adopt, cancel: the slots hash, gc's walk and the counters ----------------


def _ended(dedup: Deduplicator, queue: Queue, keys: list[str]) -> None:
    dedup.enqueue_many([EnqueueRequest(k, TASK, ("x",)) for k in keys])
    rqstate.run_all(queue)


def test_gc_collects_ended_slots_and_forgets_them(queue: Queue) -> None:
    conn = queue.connection
    dedup = Deduplicator(queue, gc_budget=1, gc_min_age=0)
    _ended(dedup, queue, ["a", "b", "c"])
    conn.delete(dedup.keys.gc)  # a new walk starts at the next call
    dedup.enqueue_many([EnqueueRequest(k, TASK, ("y",)) for k in ["d", "e"]])  # budget 1 x 2 requests
    assert conn.hlen(dedup.keys.slots) == 3  # 2 of a, b, c collected; d, e admitted
    assert dedup.stats()["swept"] == 2
    assert {_last(dedup, k)[1] for k in "abc"} == {"finished"}


def test_gc_walk_goes_on_where_the_last_call_stopped(queue: Queue) -> None:
    conn = queue.connection
    dedup = Deduplicator(queue, gc_budget=1, gc_min_age=0)
    pending = dedup.enqueue("p", TASK, "x")
    _ended(dedup, queue, ["a", "b", "c"])
    dedup.enqueue("p2", TASK, "x")
    queue.connection.delete(dedup.keys.gc)
    rqstate.run_all(queue)  # p and p2 end too
    held = dedup.enqueue("h", TASK, "x")
    queue.connection.delete(dedup.keys.gc)  # the walk starts at the next call, over p, a, b, c, p2, h
    for _ in range(5):  # one slot a call: a call that starts over never gets past the first slot
        assert not dedup.enqueue("h", TASK, "x").admitted
    assert conn.hkeys(dedup.keys.slots) == [_field("h").encode()], "every ended slot checked once"
    assert dedup.stats()["swept"] == 5 and held.admitted and pending.admitted


def test_gc_leaves_slots_checked_less_than_min_age_ago(queue: Queue) -> None:
    dedup = Deduplicator(queue, gc_budget=5, gc_min_age=60)
    _ended(dedup, queue, ["a", "b"])
    dedup.enqueue("c", TASK, "x")
    assert queue.connection.hlen(dedup.keys.slots) == 3 and "swept" not in dedup.stats()


def test_gc_walk_reads_a_small_hash_again_without_skipping_what_it_deleted(queue: Queue) -> None:
    # A small hash (listpack) answers HSCAN whole, from cursor 0 every time: the walk keeps
    # how many of its entries it checked, less those it deleted. (fakeredis's HSCAN pages
    # a snapshot instead; the test holds there too.)
    conn = queue.connection
    dedup = Deduplicator(queue, gc_budget=2, gc_min_age=60)
    for k in ("k1", "k2", "k3", "k4"):
        conn.hset(dedup.keys.slots, _field(k), f"job_{k}_1")  # ids of long ago, their jobs gone
    assert dedup.enqueue("z", TASK, "x").admitted  # the walk checks k1, k2: both collected
    assert dedup.stats()["swept"] == 2
    assert not dedup.enqueue("z", TASK, "x").admitted  # then k3, k4, not z and beyond
    assert conn.hkeys(dedup.keys.slots) == [_field("z").encode()] and dedup.stats()["swept"] == 4


def test_gc_walk_goes_past_a_small_hash_s_first_slots_it_keeps(queue: Queue) -> None:
    conn = queue.connection
    dedup = Deduplicator(queue, gc_budget=2, gc_min_age=60)
    dedup.enqueue("p1", TASK, "x")
    dedup.enqueue("p2", TASK, "x")  # pending, and young: passed over
    for k in ("k1", "k2"):
        conn.hset(dedup.keys.slots, _field(k), f"job_{k}_1")  # ids of long ago, their jobs gone
    conn.delete(dedup.keys.gc)  # the walk starts at the next call
    dedup.enqueue("z", TASK, "x")
    dedup.enqueue("z", TASK, "x")  # a small hash answers whole: the second call goes on past p1, p2
    assert dedup.stats()["swept"] == 2
    assert sorted(conn.hkeys(dedup.keys.slots)) == sorted(_field(k).encode() for k in ("p1", "p2", "z"))


def test_gc_starts_a_new_walk_only_gc_min_age_after_the_last(queue: Queue) -> None:
    conn = queue.connection
    dedup = Deduplicator(queue, gc_budget=5, gc_min_age=60)
    conn.hset(dedup.keys.slots, _field("x"), "job_x_1")  # ids of long ago, their jobs gone
    dedup.enqueue("a", TASK, "x")  # the walk: x collected, a young; the walk ends
    assert dedup.stats()["swept"] == 1
    conn.hset(dedup.keys.slots, _field("y"), "job_y_1")
    dedup.enqueue("b", TASK, "x")  # the last walk started just now: none starts
    assert conn.hexists(dedup.keys.slots, _field("y")) and dedup.stats()["swept"] == 1


def test_gc_passes_over_slots_admitted_less_than_min_age_ago(queue: Queue) -> None:
    conn = queue.connection
    dedup = Deduplicator(queue, gc_budget=5, gc_min_age=60)
    _ended(dedup, queue, ["a", "b"])  # ended, but admitted just now: by their ids, young
    conn.hset(dedup.keys.slots, _field("old"), "job_old_1")  # an id of long ago, its job gone
    conn.hset(dedup.keys.slots, _field("rq"), "9f0c3a2e-rq-uuid")  # not dedupkit's: checked
    conn.delete(dedup.keys.gc)  # the walk starts at the next call
    dedup.enqueue("c", TASK, "x")
    assert sorted(conn.hkeys(dedup.keys.slots)) == sorted(_field(k).encode() for k in "abc")
    assert dedup.stats()["swept"] == 2


def test_gc_checks_at_most_100_slots_a_call(queue: Queue) -> None:
    dedup = Deduplicator(queue, gc_budget=2, gc_min_age=0)
    _ended(dedup, queue, [f"old{i}" for i in range(150)])
    queue.connection.delete(dedup.keys.gc)  # a new walk starts at the next call
    # 60 requests (2 x 60 > 100), one admitted: the walk checks 100 of the 151 slots.
    dedup.enqueue_many([EnqueueRequest("new", TASK, ("x",)) for i in range(60)])
    assert 99 <= dedup.stats()["swept"] <= 100
    assert queue.connection.hlen(dedup.keys.slots) in (51, 52)


def test_sweep_counts_slots_and_forgets_them(dedup: Deduplicator, queue: Queue) -> None:
    conn = queue.connection
    _ended(dedup, queue, ["a", "b", "c"])
    dedup.enqueue("d", TASK, "x")
    assert dedup.sweep(batch_size=10) == 3
    assert conn.hkeys(dedup.keys.slots) == [_field("d").encode()]
    assert dedup.stats()["swept"] == 3
    assert _last(dedup, "b")[1] == "finished"


def test_sweep_deletes_the_gc_zset_of_an_earlier_version(dedup: Deduplicator, queue: Queue) -> None:
    conn = queue.connection
    old = f"{dedup.namespace}:gc:{queue.name}"
    conn.zadd(old, {_field("a"): 1.0, _field("b"): 2.0})
    conn.set(f"{dedup.namespace}:gc:other", "not ours to judge")
    dedup.sweep()
    assert not conn.exists(old) and conn.get(f"{dedup.namespace}:gc:other") == b"not ours to judge"
    conn.set(old, "a string there is not the old index")
    dedup.sweep()
    assert conn.get(old) == b"a string there is not the old index"


def test_cancel_frees_the_slot_and_forgets_it(dedup: Deduplicator, queue: Queue) -> None:
    conn = queue.connection
    adm = dedup.enqueue("u", TASK, "x")
    assert dedup.cancel("u")
    assert not conn.hexists(dedup.keys.slots, _field("u"))
    assert dedup.stats()["cancelled"] == 1
    assert conn.zscore(queue.canceled_job_registry.key, adm.job_id) is not None
    assert _last(dedup)[:2] == (adm.job_id, "canceled")


def test_cancel_of_an_ended_holder_records_it_and_frees_the_slot(dedup: Deduplicator, queue: Queue) -> None:
    conn = queue.connection
    adm = dedup.enqueue("u", TASK, "x")
    rqstate.run_all(queue)
    assert not dedup.cancel("u")
    assert not conn.hexists(dedup.keys.slots, _field("u"))
    assert conn.hget(dedup.keys.last, _field("u")).decode().startswith(f"{adm.job_id}|finished|")


def test_adopted_slots_are_collected_like_the_others(queue: Queue) -> None:
    conn = queue.connection
    old = queue.enqueue(TASK, "x", job_id="email_process_u_1")
    dedup = Deduplicator(queue, gc_budget=5, gc_min_age=0)
    assert dedup.adopt("email_process_{key}_*")["adopted"] == 1
    assert conn.hget(dedup.keys.slots, _field("u")) == old.id.encode()
    assert dedup.adopt("email_process_{key}_*")["already"] == 1
    rqstate.run_all(queue)
    dedup.enqueue("other", TASK, "x")
    assert not conn.hexists(dedup.keys.slots, _field("u"))
    assert _last(dedup)[:2] == (old.id, "finished")


# -- the scheduler's leader lease ----------------------------------------------------------


def test_a_replica_whose_lease_expired_neither_renews_nor_releases_the_new_leaders(dedup: Deduplicator) -> None:
    from dedupkit.scheduler import Scheduler

    conn = dedup.connection
    old, new = (Scheduler(dedup, list, interval=60, lease_ttl=30) for _ in range(2))
    assert old.acquire_lease()
    conn.delete(old.lease_key)  # its lease expired; the other replica took it
    assert new.acquire_lease()
    assert not old.acquire_lease()
    assert conn.get(new.lease_key) == new.token.encode()
    old.release_lease()  # it still believed it led until the renew failed; now a stop
    old._leading = True  # a stop that comes before it noticed
    old.release_lease()
    assert conn.get(new.lease_key) == new.token.encode()
    conn.pexpire(new.lease_key, 100)
    assert new.acquire_lease() and conn.pttl(new.lease_key) > 20_000  # renewed to 30 s
    new.release_lease()
    assert conn.get(new.lease_key) is None


# -- leases ----------------------------------------------------------------------------------


def test_any_of_the_newest_executions_with_a_live_lease_holds_the_key(dedup: Deduplicator, queue: Queue) -> None:
    """An execution that died with a long job timeout (its executions score far ahead, its
    wip entry expired) and a newer live one: the live one holds the key."""
    conn = queue.connection
    adm = dedup.enqueue("u", TASK, "x")
    live = rqstate.start(conn, queue, adm.job_id, lease=30)
    now = time.time()
    conn.zadd(queue.started_job_registry.key, {f"{adm.job_id}:dead-exec": now - 1})
    conn.zadd(f"rq:executions:{adm.job_id}", {"dead-exec": now + 1000})
    assert dedup.is_running("u") and dedup.status("u").job_id == adm.job_id
    rqstate.heartbeat(conn, queue, live, lease=-1)
    assert not dedup.has_pending("u")


def test_a_queued_job_counts_only_its_wip_entry_as_a_lease(dedup: Deduplicator, queue: Queue) -> None:
    """A queued job's executions score (an execution RQ 3 made for a worker that died
    before starting it) is no lease: only a wip entry is."""
    conn = queue.connection
    adm = dedup.enqueue("u", TASK, "x")
    conn.zadd(f"rq:executions:{adm.job_id}", {"ghost": time.time() + 1000})
    assert dedup.status("u").state is JobState.QUEUED


def test_an_execution_without_a_wip_entry_holds_until_its_score_less_60_s(dedup: Deduplicator, queue: Queue) -> None:
    """RQ's Job.cancel of a running job takes the wip entry away; the heartbeat keeps the
    execution's score at lease + 60 s, so the lease is that score less 60 s."""
    conn = queue.connection
    adm = dedup.enqueue("u", TASK, "x")
    execution = rqstate.start(conn, queue, adm.job_id, lease=30)
    Job.fetch(adm.job_id, connection=conn).cancel()
    assert dedup.is_running("u")
    conn.zadd(f"rq:executions:{adm.job_id}", {execution.id: time.time() + 30})  # lease ended 30 s ago
    assert not dedup.has_pending("u")


def test_a_created_holder_is_over(dedup: Deduplicator, queue: Queue) -> None:
    """'created' is a job nothing enqueued (RQ sets 'queued' before it pushes a job)."""
    adm = dedup.enqueue("u", TASK, "x")
    queue.connection.lrem(queue.key, 1, adm.job_id)
    queue.connection.hset(f"rq:job:{adm.job_id}", "status", "created")
    assert not dedup.has_pending("u")
    assert dedup.enqueue("u", TASK, "x").recovered == "ended"


@pytest.mark.parametrize("status", ["started", "queued"])
def test_a_hash_without_origin_is_a_ghost_whatever_its_status(dedup: Deduplicator, queue: Queue,
                                                               status: str) -> None:
    """A worker's late writes (heartbeat, status) after the hash was deleted (result_ttl=0,
    rq#1450) re-create a hash without 'origin': no job."""
    conn = queue.connection
    adm = dedup.enqueue("u", TASK, "x")
    conn.lrem(queue.key, 1, adm.job_id)
    conn.delete(f"rq:job:{adm.job_id}")
    conn.hset(f"rq:job:{adm.job_id}", mapping={"status": status, "last_heartbeat": "2026-01-01T00:00:00Z"})
    assert not dedup.has_pending("u")
    assert dedup.enqueue("u", TASK, "x").recovered == "gone"


def test_a_popped_job_with_an_expired_wip_entry_is_not_lost_until_rq_cleans_it(clock: Clock, fqueue: Queue) -> None:
    """RQ 3: a worker that died after creating the execution leaves an expired wip entry
    on a queued job; until RQ's cleanup removes it, the job is RQ's, not lost."""
    conn = fqueue.connection
    dedup = Deduplicator(fqueue, due_margin=5)
    adm = dedup.enqueue("u", TASK, "x")
    conn.lpop(fqueue.key)
    assert not dedup.cancel("u")  # marked: lost from T + 5 if nothing else shows up
    conn.zadd(fqueue.started_job_registry.key, {f"{adm.job_id}:exec": T + 1})
    conn.zadd(f"rq:executions:{adm.job_id}", {"exec": T + 61})
    clock.now = T + 10
    assert dedup.status("u").state is JobState.QUEUED
    conn.zrem(fqueue.started_job_registry.key, f"{adm.job_id}:exec")  # RQ 3's cleanup
    assert not dedup.has_pending("u")


def test_a_follow_up_that_cannot_be_cancelled_is_the_one_named(dedup: Deduplicator, queue: Queue,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """cancel(key) takes the waiting follow-up; when RQ 3 is already moving it onto the
    queue ('ready_to_enqueue') it stays, and the answer names it, not the holder."""
    conn = queue.connection
    first = dedup.enqueue("u", TASK, "x")
    rqstate.start(conn, queue, first.job_id)
    follow = dedup.enqueue("u", TASK, "x", on_conflict="follow_up")
    conn.hset(f"rq:job:{follow.job_id}", "status", "ready_to_enqueue")
    with caplog.at_level("INFO", logger="dedupkit"):
        assert not dedup.cancel("u")
    assert f"not cancelled (ready, job {follow.job_id})" in caplog.text


def test_a_follow_up_cancelled_by_rq_is_forgotten_and_never_the_last_run(dedup: Deduplicator, queue: Queue) -> None:
    conn = queue.connection
    first = dedup.enqueue("u", TASK, "x")
    execution = rqstate.start(conn, queue, first.job_id)
    follow = dedup.enqueue("u", TASK, "x", on_conflict="follow_up")
    Job.fetch(follow.job_id, connection=conn).cancel()  # RQ's own cancel, not dedupkit's
    answer = dedup.enqueue("u", TASK, "x")
    assert answer.conflict and answer.job_id == first.job_id and answer.status.follow_up_job_id is None
    assert not conn.hexists(dedup.keys.followups, _field("u"))
    _finish(queue, first.job_id, execution)
    assert dedup.enqueue("u", TASK, "x").admitted
    assert _last(dedup)[:2] == (first.job_id, "finished")


# -- admit: the request count, replays, replace's bookkeeping, damaged requests -------------


def test_a_request_count_that_does_not_match_the_keys_is_refused(dedup: Deduplicator) -> None:
    from dedupkit import protocol
    from dedupkit.errors import ScriptError

    prepared = dedup._prepare(EnqueueRequest("u", TASK, ("x",)))
    call = protocol.ADMIT.bind(dedup.keys)
    keys = call.key_list([dedup.keys.job_key(prepared.job.id)])  # one job key ...
    args = call.arg_list({"n": 2, "gc_budget": 0, "gc_min_age": 0, "due_margin": 0, "now_text": "",
                          "retention": 3600},
                         prepared.argv())  # ... but n = 2
    with pytest.raises(ScriptError, match="ARGV\\[3\\]=2 but 1 job keys"):
        dedup._scripts.call(protocol.ADMIT, keys, args)


def test_a_replay_after_the_slot_was_collected_is_still_that_admission(queue: Queue) -> None:
    dedup = Deduplicator(queue, gc_min_age=0)
    prepared = dedup._prepare(EnqueueRequest("u", TASK, ("x",)))
    first = dedup._admit([prepared])[0]
    assert dedup._admit([prepared])[0].status.state is JobState.QUEUED  # a replay describes the job
    rqstate.run_all(queue)
    dedup.enqueue("other", TASK, "gc")  # gc deletes u's ended slot, its last run names the job
    assert not queue.connection.hexists(dedup.keys.slots, _field("u"))
    again = dedup._admit([prepared])[0]
    assert again.admitted and again.job_id == first.job_id and again.error is None


def test_replace_records_the_replaced_holder_as_the_last_run(dedup: Deduplicator, queue: Queue) -> None:
    first = dedup.enqueue("u", TASK, "x")
    second = dedup.enqueue("u", TASK, "x", on_conflict="replace")
    assert second.replaced == first.job_id
    assert _last(dedup)[:2] == (first.job_id, "canceled")
    assert queue.connection.smembers(queue.redis_queues_keys) == {queue.key.encode()}


def test_replacing_a_holder_rq_requeued_takes_its_waiting_follow_up_too(dedup: Deduplicator, queue: Queue) -> None:
    """A follow-up waits behind a holder whose worker died; RQ's cleanup re-queues the
    holder (a retry left) and keeps the follow-up deferred. Replacing the holder cancels both."""
    from rq import Retry
    from rq.registry import StartedJobRegistry

    conn = queue.connection
    first = dedup.enqueue("u", TASK, "x", retry=Retry(max=1))
    execution = rqstate.start(conn, queue, first.job_id)
    follow = dedup.enqueue("u", TASK, "x", on_conflict="follow_up")
    rqstate.heartbeat(conn, queue, execution, lease=-1)
    StartedJobRegistry(queue=queue).cleanup()
    assert dedup.status("u").state is JobState.QUEUED and dedup.status("u").follow_up_job_id == follow.job_id
    third = dedup.enqueue("u", TASK, "x", on_conflict="replace")
    assert third.admitted and third.replaced == first.job_id
    assert Job.fetch(follow.job_id, connection=conn).get_status() == "canceled"
    assert not conn.hexists(dedup.keys.followups, _field("u"))
    assert _dependents(queue, first.job_id) == set()
    assert dedup.stats()["cancelled"] == 1
    assert dedup.status("u").job_id == third.job_id and dedup.status("u").follow_up_job_id is None


def test_a_rate_limit_request_without_its_key_writes_nothing(dedup: Deduplicator, queue: Queue) -> None:
    prepared = dedup._prepare(EnqueueRequest("u", TASK, ("x",)))
    prepared.mode = "rate_limit"  # without a rate_limit_key field (and on RQ 2 without the template)
    answer = dedup._admit([prepared])[0]
    assert answer.error is not None and "rate_limit mode" in str(answer.error)
    assert not queue.connection.exists(dedup.keys.job_key(prepared.job.id))
    assert not queue.connection.exists(queue.redis_queues_keys)


RQ3 = int(__import__("rq").__version__.split(".")[0]) >= 3


@pytest.mark.rq_version
@pytest.mark.skipif(not RQ3, reason="RQ 3's rate limits")
def test_the_script_alone_withdraws_a_rate_limited_job_from_its_waiting_zset(dedup: Deduplicator, queue: Queue,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """cancel.lua takes the job out of the limit's waiting zset itself: a client that dies
    before RQ's RateLimitRegistry.cancel leaves nothing RQ would promote."""
    from rq.rate_limit import RateLimit

    conn = queue.connection
    limit = RateLimit("k", concurrency=1)
    dedup.enqueue("other", TASK, "x", rate_limit=limit)  # takes the one slot
    adm = dedup.enqueue("u", TASK, "x", rate_limit=limit)
    assert dedup.status("u").state is JobState.RATE_LIMITED
    # The client died here: the flow that runs RQ's RateLimitRegistry.cancel does nothing.
    monkeypatch.setattr(Deduplicator, "_release_rate_limit_flow", lambda *_: iter(()))
    assert dedup.cancel("u")
    waiting = dedup.keys.rate_limited_template.replace("%s", "k")
    assert conn.zscore(waiting, adm.job_id) is None


def test_at_front_goes_to_the_front_and_the_rest_to_the_back(dedup: Deduplicator, queue: Queue) -> None:
    a = dedup.enqueue("a", TASK, "x")
    b = dedup.enqueue("b", TASK, "x")
    c = dedup.enqueue("c", TASK, "x", at_front=True)
    assert [j.decode() for j in queue.connection.lrange(queue.key, 0, -1)] == [c.job_id, a.job_id, b.job_id]


# -- dk_in_list without LPOS (Redis 5, which RQ allows) ------------------------------------


@pytest.fixture(scope="module")
def lposless_server() -> Iterator[RedisServer]:
    """A real server on which LPOS is an unknown command, as on Redis 5: renamed away on a newer
    server, or the server itself when it predates LPOS (DEDUPKIT_SERVER=redis5.0)."""
    binary = server_binary()
    version = server_version(binary)
    major = int(version.split()[1].split(".")[0]) if version.split()[1][:1].isdigit() else 99
    server = RedisServer() if version.startswith("redis") and major < 6 else RedisServer("--rename-command", "LPOS", "")
    yield server
    server.close()


@pytest.mark.real
def test_without_lpos_an_id_in_the_intermediate_list_is_still_found(lposless_server: RedisServer) -> None:
    """dk_in_list's LRANGE fallback: an id a worker has dequeued (in the intermediate list) is
    never withdrawn by a replace or cancel, and with retries left it holds the key."""
    from rq import Retry

    from .test_windows import _dequeue_into_intermediate

    conn = redis.Redis.from_url(lposless_server.url)
    conn.flushall()
    with pytest.raises(redis.exceptions.ResponseError, match=r"(?i)unknown command"):
        conn.execute_command("LPOS", "any", "x")
    queue = Queue("test", connection=conn)
    dedup = Deduplicator(queue)
    adm = dedup.enqueue("u", TASK, "i", retry=Retry(max=2))
    _dequeue_into_intermediate(conn, queue)
    queue._enqueue_job(Job.fetch(adm.job_id, connection=conn))  # RQ's retry pushes it again
    answer = dedup.enqueue("u", TASK, "x", on_conflict="replace")
    assert not answer.admitted and answer.reason == "dequeued"
    assert not dedup.cancel("u")
    assert conn.lrange(queue.key, 0, -1) == [adm.job_id.encode()]
    # Its hash says 'failed' now (as RQ's cleanup may write before it retries): only the
    # intermediate list, read without LPOS, keeps the key held.
    conn.lrem(queue.key, 0, adm.job_id)
    conn.hset(f"rq:job:{adm.job_id}", "status", "failed")
    assert dedup.status("u").job_id == adm.job_id
    assert not dedup.enqueue("u", TASK, "y").admitted
    conn.close()

"""dedupkit.scheduler: batched ticks, the log lines, replicas, the leader lease, outages."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
import redis
from rq import Queue

from dedupkit import Deduplicator, InvalidKeyError
from dedupkit.scheduler import ScheduleEntry, Scheduler, shard_of

from .snapshot import violations
from .support import RedisServer, wait_for

TASK = "tests.tasks.work"
N = 1000


def entries(n: int, *, future_every: int | None = 2) -> list[ScheduleEntry]:
    """n users: every ``future_every``-th one due in 30 s (none if None), the others overdue."""
    now = datetime.now(timezone.utc)
    out = []
    for uid in range(n):
        when = now + timedelta(seconds=30) if future_every and uid % future_every == 0 else now - timedelta(minutes=5)
        out.append(ScheduleEntry(uid, when, TASK, ("sched",)))
    return out


def pending_ids(queue: Queue) -> list[str]:
    conn = queue.connection
    return ([j.decode() for j in conn.lrange(queue.key, 0, -1)]
            + [j.decode() for j in conn.zrange(queue.scheduled_job_registry.key, 0, -1)])


def key_of(job_id: str) -> str:
    return job_id.split("_")[1]


@pytest.fixture
def rqueue(real_redis: redis.Redis) -> Queue:
    return Queue("sched", connection=real_redis)


def test_tick_admits_each_user_once_in_batches(rqueue: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    dedup = Deduplicator(rqueue)
    calls: list[int] = []
    real = dedup.enqueue_many

    def spy(requests, **kw):  # type: ignore[no-untyped-def]
        requests = list(requests)
        calls.append(len(requests))
        return real(requests, **kw)

    monkeypatch.setattr(dedup, "enqueue_many", spy)
    result = Scheduler(dedup, lambda: entries(N), interval=60, batch_size=400, leader_lease=False).tick()
    assert result.ok and (result.entries, result.admitted, result.skipped, result.errors) == (N, N, 0, 0)
    assert calls == [400, 400, 200]  # one script call per batch, never one per user
    ids = pending_ids(rqueue)
    assert len(ids) == N and len({key_of(i) for i in ids}) == N
    assert rqueue.count == N // 2
    assert rqueue.scheduled_job_registry.count == N // 2
    assert all(dedup.status(uid).has_scheduled_job for uid in range(0, 20, 2))
    assert all(dedup.status(uid).has_queued_job for uid in range(1, 20, 2))


def test_shard_of_is_stable_total_and_checks_its_input() -> None:
    # CRC-32 of the normalized key's UTF-8: the same in every process and Python run.
    assert [shard_of(k, 4) for k in ("u1", "u2", "ü", 123)] == [2, 0, 1, 2]
    assert shard_of(123, 7) == shard_of("123", 7) and shard_of("anything", 1) == 0
    assert {shard_of(f"u{i}", 3) for i in range(100)} == {0, 1, 2}
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="shards"):
            shard_of("u", bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidKeyError):
        shard_of("", 2)


def test_sharded_schedulers_admit_each_user_once(rqueue: Queue) -> None:
    shards = 3
    results = [Scheduler(Deduplicator(rqueue), lambda i=i: [e for e in entries(N) if shard_of(e.key, shards) == i],
                         interval=60, name=f"shard{i}").tick() for i in range(shards)]
    assert all(r.ok for r in results) and sum(r.admitted for r in results) == N
    assert all(r.admitted > N // 5 for r in results)
    ids = pending_ids(rqueue)
    assert len(ids) == N and len({key_of(i) for i in ids}) == N
    again = Scheduler(Deduplicator(rqueue), lambda: entries(N), interval=60, name="all").tick()
    assert (again.admitted, again.skipped) == (0, N)


def test_second_tick_skips_every_pending_user_with_the_log_line(rqueue: Queue,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    sched = Scheduler(Deduplicator(rqueue), lambda: entries(N), interval=60, leader_lease=False)
    with caplog.at_level(logging.INFO, logger="dedupkit.scheduler"):
        first = sched.tick()
        scheduled_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Scheduled job ")]
        caplog.clear()
        second = sched.tick()
    assert first.admitted == N
    assert len(scheduled_lines) == N
    future = next(line for line in scheduled_lines if " for user 0 at " in line)
    assert future.startswith("Scheduled job job_0_") and future.endswith(" UTC")
    assert (second.admitted, second.skipped, second.errors) == (0, N, 0)
    skips = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Skipping job scheduling")]
    assert len(skips) == N
    line = next(s for s in skips if s.startswith("Skipping job scheduling for user 1 - "))
    assert line.startswith("Skipping job scheduling for user 1 - job already pending: {")
    assert "'has_queued_job': True" in line and "'state': 'queued'" in line
    summary = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Scheduler tick:")]
    assert summary == [summary[0]] and f"{N} entries, 0 admitted, {N} skipped (pending)" in summary[0]
    assert len(pending_ids(rqueue)) == N
    assert [a.job_id for _, a in second.admissions] == [a.job_id for _, a in first.admissions]


@pytest.mark.parametrize("precheck", [True, False])
def test_precheck_builds_no_job_for_a_pending_user(rqueue: Queue, precheck: bool,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    dedup = Deduplicator(rqueue)
    sched = Scheduler(dedup, lambda: entries(N, future_every=None), interval=60, leader_lease=False,
                      precheck=precheck)
    assert sched.tick().admitted == N
    dedup.cancel(7)  # one free user among the pending ones
    built: list[str] = []
    real = dedup._prepare

    def spy(request):  # type: ignore[no-untyped-def]
        built.append(str(request.key))
        return real(request)

    monkeypatch.setattr(dedup, "_prepare", spy)
    second = sched.tick()
    assert (second.admitted, second.skipped, second.errors) == (1, N - 1, 0)
    assert len(pending_ids(rqueue)) == N
    # With the precheck only user 7's job is built; its skips are counted as the conflicts
    # they stand for, so the decision counters read the same either way.
    assert built == (["7"] if precheck else [str(uid) for uid in range(N)])
    assert dedup.stats().get("conflict", 0) == N - 1


def test_precheck_opens_no_window_between_the_read_and_the_admission(
        rqueue: Queue, real_server: RedisServer, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Between a batch's status read and its admission call, user "freed"'s job is
    cancelled (the read said pending) and another client admits a job for user "taken"
    (the read said free). The tick skips "freed" and the script refuses "taken": never a
    second job. The next tick, reading afresh, admits "freed"."""
    dedup = Deduplicator(rqueue)
    other = Deduplicator(Queue("sched", connection=redis.Redis.from_url(real_server.url)))
    overdue = datetime.now(timezone.utc) - timedelta(minutes=1)
    users = ["freed", "taken"]
    sched = Scheduler(dedup, lambda: [ScheduleEntry(u, overdue, TASK, ("x",)) for u in users], interval=60,
                      leader_lease=False)
    held = dedup.enqueue("freed", TASK, "x")
    real = dedup.status_many
    taken: list[str] = []

    def read_then_race(keys, **kw):  # type: ignore[no-untyped-def]
        statuses = real(keys, **kw)
        assert [s.pending for s in statuses] == [True, False]
        assert dedup.cancel("freed")
        taken.append(other.enqueue("taken", TASK, "y").job_id)
        return statuses

    monkeypatch.setattr(dedup, "status_many", read_then_race)
    with caplog.at_level(logging.INFO, logger="dedupkit.scheduler"):
        first = sched.tick()
    assert (first.admitted, first.skipped, first.errors) == (0, 2, 0)
    outcome = dict(first.admissions)
    assert outcome["freed"].job_id == held.job_id and not outcome["freed"].admitted
    assert outcome["taken"].job_id == taken[0] and not outcome["taken"].admitted
    skips = [r.getMessage() for r in caplog.records if "job already pending" in r.getMessage()]
    assert len(skips) == 2 and held.job_id in skips[0] and taken[0] in skips[1]
    assert dedup.stats()["conflict"] == 2  # one from the read, one from the script
    assert violations(rqueue.connection, rqueue) == {}
    assert pending_ids(rqueue) == [taken[0]]

    monkeypatch.setattr(dedup, "status_many", real)
    second = sched.tick()
    assert (second.admitted, second.skipped) == (1, 1)
    assert dict(second.admissions)["freed"].admitted
    assert violations(rqueue.connection, rqueue) == {}
    assert sorted(key_of(i) for i in pending_ids(rqueue)) == ["freed", "taken"]
    other.queue.connection.close()


@pytest.mark.parametrize("precheck", [True, False])
def test_two_replicas_racing_give_one_job_per_user(real_server: RedisServer, real_redis: redis.Redis,
                                                   precheck: bool) -> None:
    """Two schedulers on their own connections tick over the same users at the same
    moment, batch for batch (a barrier holds them in step), so both send the same keys
    in overlapping script calls. No lease: the guarantee must hold without it, with or
    without the precheck (a status read that may find the key free or already taken)."""
    batch = 25
    barrier = threading.Barrier(2)
    calls: list[tuple[int, float, float]] = []
    conns = [redis.Redis.from_url(real_server.url) for _ in range(2)]

    def make(index: int) -> Scheduler:
        def source() -> Iterator[ScheduleEntry]:
            for i, entry in enumerate(entries(N)):
                if i % batch == 0:
                    barrier.wait(10)
                yield entry

        dedup = Deduplicator(Queue("sched", connection=conns[index]))
        sched = Scheduler(dedup, source, interval=60, batch_size=batch, leader_lease=False, precheck=precheck)
        real = sched._admit

        def timed(requests, result):  # type: ignore[no-untyped-def]
            started = time.monotonic()
            try:
                return real(requests, result)
            finally:
                calls.append((index, started, time.monotonic()))

        sched._admit = timed  # type: ignore[method-assign]
        return sched

    scheds = [make(0), make(1)]
    results = []
    threads = [threading.Thread(target=lambda s=s: results.append(s.tick())) for s in scheds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 2 and all(r.ok for r in results)
    assert sum(r.admitted for r in results) == N
    assert sum(r.skipped for r in results) == N
    ids = pending_ids(Queue("sched", connection=real_redis))
    assert len(ids) == N and len({key_of(i) for i in ids}) == N
    a = [(s, e) for i, s, e in calls if i == 0]
    b = [(s, e) for i, s, e in calls if i == 1]
    overlapping = sum(1 for (s1, e1), (s2, e2) in zip(a, b, strict=True) if s1 < e2 and s2 < e1)
    assert overlapping >= len(a) // 2, f"only {overlapping} of {len(a)} batch calls overlapped"
    for c in conns:
        c.close()


def test_entries_beyond_the_horizon_wait_for_a_later_tick(rqueue: Queue) -> None:
    now = datetime.now(timezone.utc)
    source = [ScheduleEntry("soon", now + timedelta(seconds=50), TASK, ("x",)),
              ScheduleEntry("later", now + timedelta(hours=2), TASK, ("x",)),
              ScheduleEntry("naive-overdue", datetime.now() - timedelta(hours=1), TASK, ("x",)),
              ScheduleEntry("never-ran", None, TASK, ("x",))]
    result = Scheduler(Deduplicator(rqueue), lambda: source, interval=60, leader_lease=False).tick()
    # A naive next_run is a bad entry (RQ and Python read it an hour apart in winter).
    assert (result.admitted, result.not_due, result.errors) == (2, 1, 1)
    dedup = Deduplicator(rqueue)
    assert dedup.status("soon").has_scheduled_job and not dedup.has_pending("later")
    assert not dedup.has_pending("naive-overdue") and dedup.status("never-ran").has_queued_job


def test_bad_entries_and_a_script_error_cost_only_their_own_user(rqueue: Queue,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    conn = rqueue.connection
    # A real server-side failure for one key: its slot points at a "job" key of the wrong
    # type, so admit.lua's HMGET on it fails with WRONGTYPE; the script answers 'error' for
    # that request alone and decides the rest of the batch.
    conn.hset("dedupkit:slots:sched", "broken", "job_broken_1")
    conn.set("rq:job:job_broken_1", "not a hash")
    now = datetime.now(timezone.utc)
    good = [ScheduleEntry(f"u{i}", now, TASK, ("x",)) for i in range(6)]
    source = [*good[:2], "not an entry", ScheduleEntry("", now, TASK), ScheduleEntry("broken", now, TASK, ("x",)),
              ScheduleEntry("late", "tomorrow", TASK), *good[2:]]  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, logger="dedupkit.scheduler"):
        result = Scheduler(Deduplicator(rqueue), lambda: source, interval=60, batch_size=50,
                           leader_lease=False).tick()
    assert result.ok and result.entries == 10
    assert result.errors == 4  # the non-entry, the empty key, the WRONGTYPE key, the bad time
    assert result.admitted == 6 and result.skipped == 0
    assert sorted(key_of(i) for i in pending_ids(rqueue)) == sorted(f"u{i}" for i in range(6))
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("Could not schedule job for user broken: admit.lua failed") for m in messages)
    # The precheck read hit the same WRONGTYPE: the batch went on to admission as a whole.
    assert any(m.startswith("Reading the status of a batch of 7 failed") for m in messages)


def test_source_failure_is_logged_and_the_next_tick_runs(rqueue: Queue) -> None:
    calls = []

    def source() -> Iterator[ScheduleEntry]:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("database is locked")
        yield ScheduleEntry("a", None, TASK, ("x",))

    sched = Scheduler(Deduplicator(rqueue), source, interval=60, leader_lease=False)
    assert sched.tick().aborted == "source failed"
    assert sched.tick().admitted == 1


def test_stop_ends_the_tick_after_the_current_batch(rqueue: Queue) -> None:
    sched: Scheduler

    def source() -> Iterator[ScheduleEntry]:
        for e in entries(100, future_every=None):
            if e.key == 30:  # while batch 2 is being read: batch 1 (0..24) is written
                sched.stop()
            yield e

    sched = Scheduler(Deduplicator(rqueue), source, interval=60, batch_size=25, leader_lease=False)
    result = sched.tick()
    assert result.aborted == "stopping" and result.admitted == 25
    assert sched.run(handle_signals=False) == 0  # a stopped scheduler does not start another tick


def test_redis_outage_is_logged_and_the_loop_keeps_going(caplog: pytest.LogCaptureFixture) -> None:
    server = RedisServer()
    conn = redis.Redis.from_url(server.url, socket_connect_timeout=0.3, socket_timeout=1)
    sched = Scheduler(Deduplicator(Queue("sched", connection=conn)), lambda: entries(10, future_every=None),
                      interval=0.3, leader_lease=True, lease_ttl=1)
    thread = threading.Thread(target=sched.run, kwargs={"handle_signals": False})
    try:
        with caplog.at_level(logging.INFO, logger="dedupkit.scheduler"):
            thread.start()
            wait_for(lambda: conn.llen("rq:queue:sched") == 10, 5, what="the first tick")
            server.stop()
            wait_for(lambda: any("Redis is unavailable" in r.getMessage() for r in caplog.records), 5,
                     what="the outage to be logged")
            assert thread.is_alive()
            server.start()  # same port, empty: every user is overdue again
            wait_for(lambda: conn.llen("rq:queue:sched") == 10, 10, what="a tick after Redis came back")
    finally:
        sched.stop()
        thread.join(10)
        conn.close()
        server.close()
    assert not thread.is_alive()


def test_one_replica_leads_and_another_takes_over_when_it_dies(real_server: RedisServer,
                                                                real_redis: redis.Redis) -> None:
    interval = 1.0
    ticks: dict[str, list[float]] = {"a": [], "b": []}

    def make(name: str) -> Scheduler:
        def source() -> list[ScheduleEntry]:
            ticks[name].append(time.monotonic())
            return entries(5, future_every=None)

        conn = redis.Redis.from_url(real_server.url)
        return Scheduler(Deduplicator(Queue("sched", connection=conn)), source, interval=interval)

    a, b = make("a"), make("b")
    ta = threading.Thread(target=a.run, kwargs={"handle_signals": False})
    ta.start()
    wait_for(lambda: a.is_leader, 5, what="a to lead")
    tb = threading.Thread(target=b.run, kwargs={"handle_signals": False})
    tb.start()
    try:
        time.sleep(3 * interval)
        assert len(ticks["a"]) >= 3 and ticks["b"] == [] and not b.is_leader
        # a dies without a word: no release, its lease must expire on its own.
        a.release_lease = lambda: None  # type: ignore[method-assign]
        a.stop()
        ta.join(5)
        died = time.monotonic()
        wait_for(lambda: ticks["b"], 3 * interval, what="b to take over")
        assert ticks["b"][0] - died <= interval + 0.2  # within one interval
        assert b.is_leader
    finally:
        a.stop()
        b.stop()
        ta.join(5)
        tb.join(5)
    assert real_redis.get(b.lease_key) is None  # a clean stop gives the lease up
    assert len({key_of(i) for i in pending_ids(Queue("sched", connection=real_redis))}) == 5


def test_precheck_reads_a_batch_only_while_the_previous_one_found_keys_pending(
        rqueue: Queue, monkeypatch: pytest.MonkeyPatch) -> None:
    dedup = Deduplicator(rqueue)
    reads: list[int] = []
    real = dedup.status_many

    def spy(keys, **kw):  # type: ignore[no-untyped-def]
        keys = list(keys)
        reads.append(len(keys))
        return real(keys, **kw)

    monkeypatch.setattr(dedup, "status_many", spy)
    sched = Scheduler(dedup, lambda: entries(500, future_every=None), interval=60, batch_size=100, leader_lease=False)
    first = sched.tick()
    assert first.admitted == 500 and reads == [100]  # the first batch found nothing pending: no more reads
    reads.clear()
    second = sched.tick()
    assert second.skipped == 500 and reads == [100] * 5  # all pending: every batch read, no job built
    for uid in range(100):
        assert dedup.cancel(uid)
    reads.clear()
    third = sched.tick()
    # Batch 1 read, all free; batch 2 not read, its 100 conflicts come from the script, so
    # batches 3 to 5 are read again. The counters see 400 conflicts either way.
    assert (third.admitted, third.skipped) == (100, 400) and reads == [100] * 4
    assert dedup.stats()["conflict"] == 900
    assert len(pending_ids(rqueue)) == 500

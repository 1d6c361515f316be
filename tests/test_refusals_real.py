"""Server refusals (READONLY, OOM, BUSY, ...) raise RedisRefusedError, a RedisUnavailableError
carrying the server's code and words; the Scheduler survives them and never splits a batch."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from rq import Queue

from dedupkit import Deduplicator, EnqueueRequest, RedisRefusedError, RedisUnavailableError, ScriptError
from dedupkit.scheduler import ScheduleEntry, Scheduler
from dedupkit.scripts import redis_errors, refusal

from .support import RedisServer, free_port, wait_for

TASK = "tests.tasks.work"


@pytest.fixture(scope="module")
def own_server() -> Iterator[RedisServer]:
    """A server of this module's own: the tests turn it into a replica, fill its memory,
    keep it busy; the session's server must stay a writable noeviction primary."""
    server = RedisServer()
    yield server
    server.close()


@pytest.fixture
def own(own_server: RedisServer) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(own_server.url, socket_timeout=5, retry=Retry(NoBackoff(), 0))
    conn.replicaof("NO", "ONE")
    conn.config_set("maxmemory", 0)
    conn.flushall()
    conn.script_flush()
    yield conn
    conn.replicaof("NO", "ONE")
    conn.config_set("maxmemory", 0)
    conn.close()


def read_only(conn: redis.Redis) -> None:
    """What a failover does to the old primary: it becomes a replica (of a primary that is
    not there; it keeps its data and serves reads, replica-read-only yes)."""
    conn.replicaof("127.0.0.1", free_port())


def script_calls(conn: redis.Redis) -> int:
    stats = conn.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in ("evalsha", "eval"))


def test_a_replica_answers_readonly_with_its_words(own: redis.Redis) -> None:
    dedup = Deduplicator(Queue("ref", connection=own))
    dedup.enqueue("before", TASK)
    read_only(own)
    for call in (lambda: dedup.enqueue("a", TASK),
                 lambda: dedup.enqueue_many([EnqueueRequest("b", TASK), EnqueueRequest("c", TASK)],
                                            raise_errors=False),
                 lambda: dedup.cancel("before")):
        with pytest.raises(RedisRefusedError) as info:
            call()
        assert isinstance(info.value, RedisUnavailableError)
        assert info.value.code == "READONLY"
        assert info.value.server_message is not None
        assert info.value.server_message.startswith("READONLY You can't write against a read only replica")
    assert dedup.status("before").pending  # reads still work on a replica


def test_out_of_memory_is_a_refusal(own: redis.Redis) -> None:
    dedup = Deduplicator(Queue("ref", connection=own))
    dedup.enqueue("warm", TASK)  # scripts loaded, eviction policy read
    assert own.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
    own.config_set("maxmemory", 1)
    try:
        with pytest.raises(RedisRefusedError) as info:
            dedup.enqueue("a", TASK)
        assert info.value.code == "OOM" and "maxmemory" in (info.value.server_message or "")
    finally:
        own.config_set("maxmemory", 0)
    assert not dedup.status("a").pending


def test_busy_server_refuses_script_and_plain_calls(own: redis.Redis, own_server: RedisServer) -> None:
    dedup = Deduplicator(Queue("ref", connection=own))
    dedup.enqueue("a", TASK)
    own.config_set("busy-reply-threshold", 50)  # ms; default 5 s
    spinner = redis.Redis.from_url(own_server.url)
    thread = threading.Thread(target=lambda: _ignore(lambda: spinner.eval("while true do end", 0)))
    thread.start()
    try:
        time.sleep(0.3)
        calls = (lambda: dedup.status("a"), dedup.stats, lambda: dedup.slots(), lambda: dedup.enqueue("b", TASK))
        for call in calls:
            with pytest.raises(RedisRefusedError) as info:
                call()
            assert info.value.code == "BUSY" and (info.value.server_message or "").startswith("BUSY")
    finally:
        wait_for(lambda: _ignore(own.script_kill), 5, what="SCRIPT KILL")
        thread.join(5)
        spinner.close()
        own.config_set("busy-reply-threshold", 5000)


def _ignore(call: object) -> bool:
    try:
        call()  # type: ignore[operator]
    except redis.exceptions.RedisError:
        return False
    return True


@pytest.mark.parametrize(("exc", "code"), [
    (redis.exceptions.ResponseError("MISCONF Redis is configured to save RDB snapshots, but it's not able to"),
     "MISCONF"),
    (redis.exceptions.ResponseError("NOREPLICAS Not enough good replicas to write."), "NOREPLICAS"),
    (redis.exceptions.BusyLoadingError("Redis is loading the dataset in memory", status_code="LOADING"), "LOADING"),
    (redis.exceptions.MasterDownError("Link with MASTER is down", status_code="MASTERDOWN"), "MASTERDOWN"),
    (redis.exceptions.ReadOnlyError("You can't write against a read only replica.", status_code="READONLY"),
     "READONLY"),
])
def test_every_refusal_code_is_recognised(exc: redis.exceptions.RedisError, code: str) -> None:
    assert refusal(exc) is not None and refusal(exc)[0] == code  # type: ignore[index]
    with pytest.raises(RedisRefusedError) as info, redis_errors():
        raise exc
    assert info.value.code == code and (info.value.server_message or "").startswith(code)


def test_a_request_error_is_not_a_refusal() -> None:
    assert refusal(redis.exceptions.ResponseError("WRONGTYPE Operation against a key holding the wrong kind")) is None
    with pytest.raises(redis.exceptions.ResponseError), redis_errors():
        raise redis.exceptions.ResponseError("WRONGTYPE Operation against a key holding the wrong kind")


def fresh_entries(n: int) -> Iterator[ScheduleEntry]:
    """n keys never seen before, all due now: every one needs an admission."""
    stamp = time.monotonic_ns()
    overdue = datetime.now(timezone.utc) - timedelta(minutes=1)
    return (ScheduleEntry(f"u{stamp}-{i}", overdue, TASK, ("x",)) for i in range(n))


def test_a_refused_tick_aborts_after_one_call_and_never_goes_key_by_key(own: redis.Redis) -> None:
    sched = Scheduler(Deduplicator(Queue("ref", connection=own)), lambda: fresh_entries(200), interval=60,
                      batch_size=500, leader_lease=False)
    assert sched.tick().admitted == 200  # scripts loaded
    read_only(own)
    own.config_resetstat()
    result = sched.tick()
    assert result.aborted == "redis refused"
    assert result.errors == 0 and result.admitted == 0
    # The precheck read (allowed on a replica) and the one admission call it refused;
    # before, the refusal came back as 200 request errors (or 202 calls, key by key).
    assert script_calls(own) == 2


def test_the_scheduler_outlives_a_failover_lease_included(own: redis.Redis, own_server: RedisServer,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    conn = redis.Redis.from_url(own_server.url, socket_timeout=2, retry=Retry(NoBackoff(), 0))
    queue = Queue("ref", connection=conn)
    sched = Scheduler(Deduplicator(queue), lambda: fresh_entries(200), interval=0.3, lease_ttl=1)
    thread = threading.Thread(target=sched.run, kwargs={"handle_signals": False})
    try:
        with caplog.at_level(logging.INFO, logger="dedupkit.scheduler"):
            thread.start()
            wait_for(lambda: own.llen(queue.key) >= 200, 5, what="a first tick")
            read_only(own)  # mid-run: lease renewals and admissions now answer READONLY
            own.config_resetstat()
            time.sleep(2)
            assert thread.is_alive()
            # Only lease attempts, backing off: no per-key calls.
            assert script_calls(own) < 15
            assert any("cannot take the scheduler lease" in r.getMessage() for r in caplog.records)
            queued = own.llen(queue.key)
            own.replicaof("NO", "ONE")  # promoted again
            wait_for(lambda: own.llen(queue.key) >= queued + 200, 10, what="ticks after the promotion")
    finally:
        sched.stop()
        thread.join(10)
        conn.close()
    assert not thread.is_alive()


def test_a_script_error_of_the_whole_call_aborts_the_tick(own: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    dedup = Deduplicator(Queue("ref", connection=own))
    calls = []

    def broken(*args: object, **kwargs: object) -> None:
        calls.append(1)
        raise ScriptError("admit.lua", RuntimeError("ERR something broke the whole script"))

    monkeypatch.setattr(dedup, "_admit_flow", broken)
    result = Scheduler(dedup, lambda: fresh_entries(50), interval=60, leader_lease=False).tick()
    assert result.aborted == "script failed" and result.errors == 0
    assert calls == [1]  # not once more per key

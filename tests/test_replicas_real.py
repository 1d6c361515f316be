"""Acknowledged admissions (issue 13): ``Deduplicator(queue, min_replicas=N, replica_timeout=s)``
sends the admit script and ``WAIT`` in one round trip; what fewer replicas acknowledged is
reported ``confirmed=False``, never as certain."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.connection import Connection
from rq import Queue

from dedupkit import Deduplicator, EnqueueRequest, InvalidRequestError

from .support import RedisServer, wait_for
from .topology import replicas_online

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[RedisServer, RedisServer]]:
    primary = RedisServer("--repl-diskless-sync-delay", "0")
    replica = RedisServer("--replicaof", "127.0.0.1", str(primary.port))
    client = redis.Redis.from_url(primary.url)
    wait_for(lambda: replicas_online(client) == 1, 20, what="the replica to sync")
    client.close()
    yield primary, replica
    replica.close()
    primary.close()


@pytest.fixture
def primary_conn(pair: tuple[RedisServer, RedisServer]) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(pair[0].url, socket_timeout=10)
    conn.flushall()
    conn.script_flush()  # the NOSCRIPT path of the pipelined call runs first
    yield conn
    conn.close()


def _sends(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the writes to the socket (a pipeline writes all its commands at once)."""
    sent: list[int] = []
    original = Connection.send_packed_command

    def counting(self: Connection, command: Any, check_health: bool = True) -> None:
        sent.append(1)
        original(self, command, check_health)

    monkeypatch.setattr(Connection, "send_packed_command", counting)
    return sent


def test_confirmed_by_the_replica_in_one_round_trip(primary_conn: redis.Redis, pair: tuple[RedisServer, RedisServer],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    dedup = Deduplicator(Queue("acked", connection=primary_conn), min_replicas=1, replica_timeout=2)
    first = dedup.enqueue("warm", "tests.tasks.work")  # NOSCRIPT, load, resend
    assert first.admitted and first.confirmed is True and first.replicas == 1
    sent = _sends(monkeypatch)
    adm = dedup.enqueue("alice", "tests.tasks.work")
    assert sent == [1], "script and WAIT must go out together"
    assert adm.admitted and adm.confirmed is True and adm.replicas == 1
    replica = redis.Redis.from_url(pair[1].url)
    # Acknowledged means on the replica: the job and its slot are there when we return.
    assert replica.exists(f"rq:job:{adm.job_id}") == 1
    assert replica.hget("dedupkit:slots:acked", "alice") == adm.job_id.encode()  # type: ignore[union-attr]
    conflict = dedup.enqueue("alice", "tests.tasks.work")
    assert conflict.conflict and conflict.confirmed is True
    many = dedup.enqueue_many([EnqueueRequest("bob", "tests.tasks.work"), EnqueueRequest("carol", "tests.tasks.work")])
    assert [a.confirmed for a in many] == [True, True]
    replica.close()


def test_without_min_replicas_nothing_is_asked(primary_conn: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    dedup = Deduplicator(Queue("acked", connection=primary_conn))
    dedup.enqueue("warm", "tests.tasks.work")
    sent = _sends(monkeypatch)
    adm = dedup.enqueue("alice", "tests.tasks.work")
    assert sent == [1]
    assert adm.admitted and adm.confirmed is None and adm.replicas is None


def test_too_few_replicas_is_unconfirmed_not_certain(primary_conn: redis.Redis) -> None:
    dedup = Deduplicator(Queue("acked", connection=primary_conn), min_replicas=2, replica_timeout=0.05)
    adm = dedup.enqueue("alice", "tests.tasks.work")
    # Written on the primary (it may run), but only one replica of two acknowledged it.
    assert adm.admitted and adm.confirmed is False and adm.replicas == 1
    assert dedup.status("alice").pending


def test_a_stopped_replica_leaves_admissions_unconfirmed(pair: tuple[RedisServer, RedisServer],
                                                         primary_conn: redis.Redis) -> None:
    dedup = Deduplicator(Queue("acked", connection=primary_conn), min_replicas=1, replica_timeout=0.2)
    assert dedup.enqueue("before", "tests.tasks.work").confirmed is True
    replica = pair[1]
    assert replica.proc is not None
    replica.proc.send_signal(signal.SIGSTOP)  # a replica that stopped acknowledging
    try:
        adm = dedup.enqueue("during", "tests.tasks.work")
        assert adm.admitted and adm.confirmed is False and adm.replicas == 0
    finally:
        replica.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: dedup.enqueue_many([EnqueueRequest("before", "tests.tasks.work")])[0].confirmed, 10,
             what="the replica to acknowledge again")


@pytest.mark.parametrize("bad", [{"min_replicas": -1}, {"min_replicas": True}, {"min_replicas": 1.5},
                                 {"replica_timeout": 0}, {"replica_timeout": "1"}, {"replica_timeout": 1e9}])
def test_bad_replica_settings_are_refused(primary_conn: redis.Redis, bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequestError):
        Deduplicator(Queue("acked", connection=primary_conn), **bad)


def test_async_deduplicator_waits_for_replicas_in_the_same_call(primary_conn: redis.Redis,
                                                                 pair: tuple[RedisServer, RedisServer]) -> None:
    """AsyncDeduplicator runs the same admission flow: script + WAIT pipelined, the same answers."""
    import asyncio

    import redis.asyncio

    from dedupkit.asyncio import AsyncDeduplicator

    async def scenario() -> list[tuple[bool, bool | None, int | None]]:
        aconn = redis.asyncio.Redis.from_url(pair[0].url, socket_timeout=10)
        try:
            queue = Queue("acked", connection=primary_conn)
            two = AsyncDeduplicator(queue, connection=aconn, min_replicas=2, replica_timeout=0.2)
            one = AsyncDeduplicator(queue, connection=aconn, min_replicas=1, replica_timeout=2)
            answers = []
            for dedup, key in ((one, "warm"), (one, "alice"), (one, "alice"), (two, "bob")):
                adm = await dedup.enqueue(key, "tests.tasks.work")
                answers.append((adm.admitted, adm.confirmed, adm.replicas))
            return answers
        finally:
            await aconn.aclose()

    # NOSCRIPT path first (the fixture flushed the scripts), then a confirmed admission, a
    # confirmed conflict, and with 2 replicas asked of 1: admitted but not confirmed.
    assert asyncio.run(scenario()) == [(True, True, 1), (True, True, 1), (False, True, 1), (True, False, 1)]

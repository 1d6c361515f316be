"""Tests written to kill the mutants of dedupkit/lua/mutants.toml (issue 10).

`make mutate` runs this file first for every script. Each test reads one thing the other
test files do not (a boundary, a piece of bookkeeping, a registry entry), on fakeredis and
on a real redis-server.
"""

from __future__ import annotations

import types
from datetime import datetime, timezone

import fakeredis
import pytest
import redis
from fakeredis.commands_mixins import server_mixin
from rq import Queue
from rq.job import Job

from dedupkit import Deduplicator, JobState

from . import rqstate

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

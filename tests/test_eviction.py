"""The eviction policy is read once, at the first admission: anything but noeviction is
refused unless allow_eviction=True; no INFO (fakeredis) is a warning, once."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import redis
from rq import Queue

from dedupkit import Deduplicator, EvictionPolicyError
from dedupkit.scheduler import ScheduleEntry, Scheduler

TASK = "tests.tasks.work"


@pytest.fixture
def evicting(real_redis: redis.Redis) -> Iterator[redis.Redis]:
    real_redis.config_set("maxmemory-policy", "allkeys-lru")
    try:
        yield real_redis
    finally:  # the session's server must stay noeviction for every other test
        real_redis.config_set("maxmemory-policy", "noeviction")


def test_an_evicting_server_is_refused_before_anything_is_written(evicting: redis.Redis) -> None:
    dedup = Deduplicator(Queue("ev", connection=evicting))
    with pytest.raises(EvictionPolicyError) as info:
        dedup.enqueue("alice", TASK)
    assert info.value.policy == "allkeys-lru" and "allow_eviction=True" in str(info.value)
    assert evicting.dbsize() == 0
    assert dedup.status("alice").pending is False  # reading is not refused
    evicting.config_set("maxmemory-policy", "noeviction")  # the operator fixes the server
    assert dedup.enqueue("alice", TASK).admitted


def test_allow_eviction_admits_with_a_warning(evicting: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    dedup = Deduplicator(Queue("ev", connection=evicting), allow_eviction=True)
    with caplog.at_level(logging.WARNING, logger="dedupkit"):
        assert dedup.enqueue("alice", TASK).admitted
        assert dedup.enqueue("bob", TASK).admitted
    warnings = [r for r in caplog.records if "allkeys-lru" in r.getMessage()]
    assert len(warnings) == 1


def test_the_policy_is_read_once(real_redis: redis.Redis) -> None:
    dedup = Deduplicator(Queue("ev", connection=real_redis))
    real_redis.config_resetstat()
    for key in range(5):
        dedup.enqueue(key, TASK)
    assert int(real_redis.info("commandstats")["cmdstat_info"]["calls"]) == 1


def test_the_scheduler_aborts_its_tick_on_an_evicting_server(evicting: redis.Redis) -> None:
    entries = [ScheduleEntry("u", None, TASK, ("x",))]
    result = Scheduler(Deduplicator(Queue("ev", connection=evicting)), lambda: entries, leader_lease=False).tick()
    assert result.aborted == "eviction policy" and result.admitted == 0 and result.errors == 0
    assert Scheduler(Deduplicator(Queue("ev", connection=evicting), allow_eviction=True), lambda: entries,
                     leader_lease=False).tick().admitted == 1


def test_without_info_it_warns_once_and_admits(fake_redis: redis.Redis, caplog: pytest.LogCaptureFixture) -> None:
    dedup = Deduplicator(Queue("ev", connection=fake_redis))
    with caplog.at_level(logging.WARNING, logger="dedupkit"):
        assert dedup.enqueue("alice", TASK).admitted
        assert dedup.enqueue("bob", TASK).admitted
    assert len([r for r in caplog.records if "maxmemory-policy" in r.getMessage()]) == 1

"""Cooldown (no admission within a key's cooldown after its last run ended) and the bounded
last-run history (records expire after the retention), on fakeredis and a real redis-server."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import fakeredis
import fakeredis.aioredis
import pytest
import redis
import redis.asyncio
from rq import Queue
from rq.executions import ExecutionRegistry
from rq.job import Job
from rq.utils import utcformat

from dedupkit import Deduplicator, EnqueueRequest, InvalidRequestError, JobState, job_utils
from dedupkit.scheduler import ScheduleEntry, Scheduler

from . import rqstate
from .support import RedisServer, RQWorker, wait_for

TASK = "tests.tasks.work"
MINUTE = timedelta(minutes=1)


def redis_now(conn: redis.Redis) -> float:
    seconds, micros = conn.time()
    return seconds + micros / 1e6


def ended_epoch(queue: Queue, job_id: str) -> float:
    job = Job.fetch(job_id, connection=queue.connection)
    assert job.ended_at is not None
    return job.ended_at.replace(tzinfo=timezone.utc).timestamp()


def test_a_finished_run_closes_the_key_for_the_cooldown(queue: Queue) -> None:
    dedup = Deduplicator(queue, cooldown=MINUTE)
    first = dedup.enqueue("u", TASK, "x")
    rqstate.run_all(queue)
    refused = dedup.enqueue("u", TASK, "x")
    assert not refused.admitted and refused.conflict and refused.reason == "cooldown"
    assert refused.job_id == first.job_id
    assert refused.retry_after is not None and refused.retry_after.tzinfo is not None
    assert refused.retry_after.utcoffset() == timedelta(0)
    assert refused.retry_after.timestamp() == pytest.approx(ended_epoch(queue, first.job_id) + 60, abs=1e-3)
    assert refused.status.job_id is None and refused.status.last_run is not None
    assert refused.status.last_run.job_id == first.job_id
    # Other keys are not affected, and the refusal is counted.
    assert dedup.enqueue("v", TASK, "x").admitted
    assert dedup.stats()["cooldown"] == 1
    # "replace" has nothing to replace: the cooldown still answers.
    assert dedup.enqueue("u", TASK, "x", on_conflict="replace").reason == "cooldown"


def test_the_key_reopens_when_the_cooldown_has_passed(queue: Queue) -> None:
    dedup = Deduplicator(queue, cooldown=timedelta(seconds=1))
    job_id = dedup.enqueue("u", TASK, "x").job_id
    rqstate.run_all(queue)
    # (a burst worker on a real server may take longer than the cooldown to quit)
    queue.connection.hset(queue.job_class.key_for(job_id), "ended_at",  # type: ignore[arg-type]
                          utcformat(datetime.fromtimestamp(redis_now(queue.connection), tz=timezone.utc)))
    refused = dedup.enqueue("u", TASK, "x")
    assert refused.reason == "cooldown" and refused.retry_after is not None
    wait_for(lambda: redis_now(queue.connection) > refused.retry_after.timestamp(), 5,  # type: ignore[union-attr]
             what="the cooldown to pass")
    again = dedup.enqueue("u", TASK, "x")
    assert again.admitted and again.retry_after is None


def test_a_pending_job_is_a_plain_conflict_not_a_cooldown(queue: Queue) -> None:
    dedup = Deduplicator(queue, cooldown=MINUTE)
    first = dedup.enqueue("u", TASK, "x")
    second = dedup.enqueue("u", TASK, "x")
    assert second.conflict and second.reason is None and second.job_id == first.job_id
    assert second.retry_after is None


@pytest.mark.parametrize("end", ["failed", "canceled", "dead", "gone", "stopped"])
def test_every_way_a_job_ends_starts_the_cooldown(queue: Queue, end: str) -> None:
    """Final statuses with RQ's ended_at count from it; a cancel, a dead worker or a hash
    that is gone count from when a script first saw the end (Redis's clock)."""
    conn = queue.connection
    dedup = Deduplicator(queue, cooldown=MINUTE)
    job_id = dedup.enqueue("u", "tests.tasks.fail" if end == "failed" else TASK, "x").job_id
    assert job_id is not None
    if end == "failed":
        rqstate.run_all(queue)
    elif end == "canceled":
        assert dedup.cancel("u")
    elif end == "dead":
        execution = rqstate.start(conn, queue, job_id)
        rqstate.heartbeat(conn, queue, execution, lease=-1)
    elif end == "gone":
        conn.delete(queue.job_class.key_for(job_id))
    else:  # what RQ writes for a job stopped by its stop command
        rqstate.start(conn, queue, job_id)
        conn.hset(queue.job_class.key_for(job_id), mapping={"status": "stopped", "ended_at": utcformat(
            datetime.now(timezone.utc) - timedelta(seconds=20))})
        conn.delete(queue.started_job_registry.key, ExecutionRegistry.key_template.format(job_id))
    before = redis_now(conn)
    refused = dedup.enqueue("u", TASK, "x")
    assert refused.reason == "cooldown" and refused.job_id == job_id and refused.retry_after is not None
    reopens = refused.retry_after.timestamp()
    if end == "failed":
        assert reopens == pytest.approx(ended_epoch(queue, job_id) + 60, abs=1e-3)
    elif end == "stopped":
        assert reopens == pytest.approx(before - 20 + 60, abs=2)
    else:
        assert before - 5 + 60 <= reopens <= redis_now(conn) + 60
    # The end is dated once: asking again later gives the same time.
    time.sleep(0.05)
    assert dedup.enqueue("u", TASK, "x").retry_after == refused.retry_after


def test_a_worker_clock_ahead_of_redis_cannot_stretch_the_cooldown(queue: Queue) -> None:
    conn = queue.connection
    dedup = Deduplicator(queue, cooldown=MINUTE)
    job_id = dedup.enqueue("u", TASK, "x").job_id
    rqstate.run_all(queue)
    conn.hset(queue.job_class.key_for(job_id), "ended_at",  # type: ignore[arg-type]
              utcformat(datetime.now(timezone.utc) + timedelta(hours=1)))
    refused = dedup.enqueue("u", TASK, "x")
    assert refused.retry_after is not None
    assert refused.retry_after.timestamp() <= redis_now(conn) + 60


def test_the_end_time_is_parsed_exactly(queue: Queue) -> None:
    """dk_epoch: RQ's ended_at text to epoch seconds, across a leap day, to the microsecond."""
    conn = queue.connection
    dedup = Deduplicator(queue, cooldown=timedelta(days=3650), retention=timedelta(days=3650))
    for i, when in enumerate([datetime(2024, 2, 29, 23, 59, 59, 999999, tzinfo=timezone.utc),
                              datetime(2020, 3, 1, 0, 0, 0, 1, tzinfo=timezone.utc),
                              datetime(2017, 12, 31, 12, 30, 0, tzinfo=timezone.utc)]):
        job_id = dedup.enqueue(f"k{i}", TASK, "x").job_id
        rqstate.run_all(queue)
        conn.hset(queue.job_class.key_for(job_id), "ended_at", utcformat(when))  # type: ignore[arg-type]
        refused = dedup.enqueue(f"k{i}", TASK, "x")
        assert refused.retry_after is not None
        assert refused.retry_after.timestamp() == pytest.approx(when.timestamp() + 3650 * 86400, abs=1e-5)


def test_per_call_cooldown_overrides_the_default(queue: Queue) -> None:
    dedup = Deduplicator(queue)  # no cooldown by default
    dedup.enqueue("u", TASK, "x")
    rqstate.run_all(queue)
    assert dedup.enqueue("u", TASK, "x", cooldown=MINUTE).reason == "cooldown"
    assert dedup.enqueue("u", TASK, "x").admitted
    strict = Deduplicator(queue, cooldown=MINUTE)
    strict.enqueue("w", TASK, "x")
    rqstate.run_all(queue)
    assert strict.enqueue("w", TASK, "x").reason == "cooldown"
    assert strict.enqueue("w", TASK, "x", cooldown=timedelta(0)).admitted


def test_enqueue_at_and_enqueue_in_honour_the_cooldown(queue: Queue) -> None:
    dedup = Deduplicator(queue, cooldown=timedelta(minutes=10))
    dedup.enqueue("u", TASK, "x")
    rqstate.run_all(queue)
    assert dedup.enqueue_in(timedelta(minutes=1), "u", TASK, "x").reason == "cooldown"
    assert dedup.enqueue_at(datetime.now(timezone.utc) + MINUTE, "u", TASK, "x").reason == "cooldown"
    # A run time after the key reopens is fine: the run keeps the cooldown.
    later = dedup.enqueue_in(timedelta(minutes=11), "u", TASK, "x")
    assert later.admitted and later.status.state is JobState.SCHEDULED


def test_enqueue_many_decides_each_key(queue: Queue) -> None:
    dedup = Deduplicator(queue)
    dedup.enqueue_many([EnqueueRequest("a", TASK, ("x",)), EnqueueRequest("b", TASK, ("x",))])
    rqstate.run_all(queue)
    answers = dedup.enqueue_many([EnqueueRequest("a", TASK, ("x",), cooldown=MINUTE),
                                  EnqueueRequest("b", TASK, ("x",)),
                                  EnqueueRequest("c", TASK, ("x",), cooldown=MINUTE)])
    assert [a.reason for a in answers] == ["cooldown", None, None]
    assert [a.admitted for a in answers] == [False, True, True]


def test_follow_up_waits_out_the_cooldown_as_a_scheduled_job(queue: Queue) -> None:
    dedup = Deduplicator(queue, cooldown=MINUTE)
    first = dedup.enqueue("u", TASK, "x")
    rqstate.run_all(queue)
    waiting = dedup.enqueue("u", TASK, "y", on_conflict="follow_up")
    assert waiting.admitted and waiting.retry_after is not None
    reopens = ended_epoch(queue, first.job_id) + 60  # type: ignore[arg-type]
    assert waiting.retry_after.timestamp() == float(int(reopens) + (reopens % 1 > 0))  # the next whole second
    assert waiting.status.state is JobState.SCHEDULED and waiting.status.scheduled_for == waiting.retry_after
    assert queue.scheduled_job_registry.get_scheduled_time(waiting.job_id).timestamp() == \
        waiting.retry_after.timestamp()  # type: ignore[arg-type]
    job = Job.fetch(waiting.job_id, connection=queue.connection)  # type: ignore[arg-type]
    assert job.get_status() == "scheduled" and job.enqueued_at is None
    # It holds the key while it waits: a second request is a plain conflict with it.
    again = dedup.enqueue("u", TASK, "z")
    assert again.conflict and again.reason is None and again.job_id == waiting.job_id
    assert dedup.status("u").has_scheduled_job


@pytest.mark.parametrize("value", [timedelta(seconds=-1), 5, 5.0, "60", timedelta(days=3651)])
def test_bad_cooldowns_are_refused(queue: Queue, value: object) -> None:
    with pytest.raises(InvalidRequestError, match="cooldown"):
        Deduplicator(queue, cooldown=value)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError, match="cooldown"):
        Deduplicator(queue).enqueue("u", TASK, "x", cooldown=value)  # type: ignore[arg-type]
    assert queue.connection.dbsize() == 0


@pytest.mark.parametrize("value", [timedelta(0), timedelta(seconds=-5), 3600, timedelta(days=4000)])
def test_bad_retentions_are_refused(queue: Queue, value: object) -> None:
    with pytest.raises(InvalidRequestError, match="retention"):
        Deduplicator(queue, retention=value)  # type: ignore[arg-type]


def test_a_cooldown_longer_than_the_retention_is_refused(queue: Queue) -> None:
    with pytest.raises(InvalidRequestError, match="longer than the retention"):
        Deduplicator(queue, cooldown=timedelta(days=8))
    dedup = Deduplicator(queue, retention=timedelta(hours=1))
    with pytest.raises(InvalidRequestError, match="longer than the retention"):
        dedup.enqueue("u", TASK, "x", cooldown=timedelta(hours=2))
    with pytest.raises(InvalidRequestError, match="longer than the retention"):
        dedup.enqueue_many([EnqueueRequest("u", TASK, cooldown=timedelta(hours=2))])
    assert Deduplicator(queue, cooldown=timedelta(hours=1), retention=timedelta(hours=1)).cooldown == \
        timedelta(hours=1)


def test_job_utils_passes_the_cooldown(queue: Queue) -> None:
    conn = queue.connection
    job_utils.configure(legacy_scan=False, cooldown=MINUTE)
    try:
        job_utils.enqueue(conn, "u", TASK, "x", queue_name="test")
        rqstate.run_all(queue)
        refused = job_utils.enqueue(conn, "u", TASK, "x", queue_name="test")
        assert refused.reason == "cooldown" and refused.retry_after is not None
        assert job_utils.enqueue(conn, "u", TASK, "x", queue_name="test", cooldown=timedelta(0)).admitted
        with pytest.raises(InvalidRequestError):
            job_utils.configure(cooldown=timedelta(days=30))
    finally:
        job_utils.configure(legacy_scan=True, cooldown=timedelta(0), retention=timedelta(days=7))


def test_async_deduplicator_has_the_same_cooldown(queue: Queue) -> None:
    from dedupkit.asyncio import AsyncDeduplicator

    conn = queue.connection
    if isinstance(conn, fakeredis.FakeRedis):  # the async client of the same fake server
        aconn = fakeredis.aioredis.FakeRedis(server=conn.connection_pool.connection_kwargs["server"])
    else:
        kwargs = conn.connection_pool.connection_kwargs
        aconn = redis.asyncio.Redis(host=kwargs["host"], port=kwargs["port"])

    async def scenario() -> None:
        dedup = AsyncDeduplicator(queue, connection=aconn, rq_connection=conn, cooldown=MINUTE)
        assert (await dedup.enqueue("u", TASK, "x")).admitted
        rqstate.run_all(queue)
        refused = await dedup.enqueue("u", TASK, "x")
        assert refused.reason == "cooldown" and refused.retry_after is not None
        waiting = await dedup.enqueue("u", TASK, "x", on_conflict="follow_up")
        assert waiting.admitted and waiting.status.state is JobState.SCHEDULED
        with pytest.raises(InvalidRequestError):
            await dedup.enqueue_in(MINUTE, "v", TASK, cooldown=-MINUTE)
        await aconn.aclose()

    asyncio.run(scenario())


def test_the_scheduler_logs_a_cooldown_skip(queue: Queue, caplog: pytest.LogCaptureFixture) -> None:
    dedup = Deduplicator(queue, cooldown=MINUTE)
    entries = [ScheduleEntry("u", None, TASK, ("x",))]
    sched = Scheduler(dedup, lambda: entries, interval=60, leader_lease=False)
    assert sched.tick().admitted == 1
    rqstate.run_all(queue)
    with caplog.at_level(logging.INFO, logger="dedupkit.scheduler"):
        result = sched.tick()
    assert (result.admitted, result.skipped) == (0, 1)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Skipping job scheduling")]
    assert len(lines) == 1 and "cooling down after job" in lines[0] and "next run possible at" in lines[0]
    # A per-entry cooldown of zero lets it through.
    entries[0] = ScheduleEntry("u", None, TASK, ("x",), cooldown=timedelta(0))
    assert sched.tick().admitted == 1


# -- bounded history ---------------------------------------------------------------


def _ended(queue: Queue, dedup: Deduplicator, keys: list[str]) -> None:
    dedup.enqueue_many([EnqueueRequest(k, TASK, ("x",)) for k in keys])
    rqstate.run_all(queue)
    assert dedup.sweep() == len(keys)  # records every run as its key's last


def test_last_runs_expire_after_the_retention_a_few_per_call(queue: Queue) -> None:
    conn = queue.connection
    dedup = Deduplicator(queue, retention=timedelta(seconds=1), gc_budget=2)
    keys = [f"old{i}" for i in range(20)]
    _ended(queue, dedup, keys)
    assert conn.hlen(dedup.keys.last) == conn.zcard(dedup.keys.history) == 20
    assert dedup.status("old0").last_run is not None
    wait_for(lambda: redis_now(conn) > max(s for _, s in conn.zrange(dedup.keys.history, 0, -1, withscores=True))
             + 1, 5, what="the retention to pass")
    # Each single admission drops at most gc_budget + 1 expired records, the oldest first.
    dedup.enqueue("fresh", TASK, "x")
    assert conn.hlen(dedup.keys.last) == 17 and conn.zcard(dedup.keys.history) == 17
    for i in range(10):
        dedup.enqueue(f"fresh{i}", TASK, "x")
    assert conn.hlen(dedup.keys.last) == 0 and conn.zcard(dedup.keys.history) == 0
    assert dedup.status("old0").last_run is None
    assert dedup.stats()["expired"] == 20


def test_a_record_within_the_retention_stays(queue: Queue) -> None:
    conn = queue.connection
    dedup = Deduplicator(queue, retention=timedelta(hours=1), gc_budget=5)
    _ended(queue, dedup, ["a", "b"])
    for i in range(5):
        dedup.enqueue(f"x{i}", TASK, "x")
    assert conn.hlen(dedup.keys.last) == 2 and "expired" not in dedup.stats()


def test_history_stays_bounded_while_new_keys_keep_running(queue: Queue) -> None:
    """Steady state: keys run once each, forever; the records of those older than the
    retention go as fast as new ones come, so the history never holds many more than the
    keys that ended within the retention."""
    conn = queue.connection
    dedup = Deduplicator(queue, retention=timedelta(seconds=1), gc_budget=2, gc_min_age=0)
    peak = 0
    deadline = time.monotonic() + 3
    i = 0
    while time.monotonic() < deadline:
        dedup.enqueue_many([EnqueueRequest(f"k{i}-{j}", TASK, ("x",)) for j in range(10)])
        rqstate.run_all(queue)
        i += 1
        peak = max(peak, conn.hlen(dedup.keys.last))
    rounds_per_second = i / 3
    assert i > 3
    # Within one retention: at most ~rounds_per_second * 10 keys ended; allow the backlog
    # of one retention more (each call drops up to gc_budget*n + n of them).
    assert peak <= 2 * (rounds_per_second + 2) * 10, (peak, rounds_per_second)
    assert dedup.stats().get("expired", 0) > 0


# -- real workers ------------------------------------------------------------------


def test_cooldown_with_a_real_worker_and_a_follow_up_run_at_retry_after(
        real_redis: redis.Redis, real_server: RedisServer, workers: Callable[..., RQWorker]) -> None:
    queue = Queue("test", connection=real_redis)
    dedup = Deduplicator(queue, cooldown=timedelta(seconds=3))
    workers(scheduler=True)
    first = dedup.enqueue("u", TASK, "first")
    wait_for(lambda: Job.fetch(first.job_id, connection=real_redis).get_status() == "finished", 20,  # type: ignore[arg-type]
             what="the first run to finish")
    refused = dedup.enqueue("u", TASK, "again")
    assert refused.reason == "cooldown" and refused.retry_after is not None
    assert refused.retry_after.timestamp() == pytest.approx(ended_epoch(queue, first.job_id) + 3,  # type: ignore[arg-type]
                                                             abs=1e-3)
    waiting = dedup.enqueue("u", TASK, "follow", on_conflict="follow_up")
    assert waiting.admitted and waiting.retry_after is not None
    wait_for(lambda: Job.fetch(waiting.job_id, connection=real_redis).get_status() == "finished", 30,  # type: ignore[arg-type]
             what="the follow-up to run after the cooldown", interval=0.2)
    job = Job.fetch(waiting.job_id, connection=real_redis)  # type: ignore[arg-type]
    assert job.started_at is not None
    started = job.started_at.replace(tzinfo=timezone.utc)
    assert started >= waiting.retry_after - timedelta(seconds=0.01), (started, waiting.retry_after)
    assert started - refused.retry_after >= timedelta(0)
    # Its own end starts the next cooldown.
    assert dedup.enqueue("u", TASK, "x").reason == "cooldown"

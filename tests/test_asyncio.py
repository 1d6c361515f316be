"""AsyncDeduplicator: the same results and errors as Deduplicator, on fakeredis and a real redis-server."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import fakeredis
import fakeredis.aioredis
import pytest
import redis
import redis.asyncio
import rq
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from rq import Queue
from rq.job import JobStatus

from dedupkit import (
    Deduplicator,
    EnqueueRequest,
    InvalidKeyError,
    InvalidRequestError,
    JobIdCollisionError,
    JobState,
    NaiveDatetimeError,
    RedisUnavailableError,
)
from dedupkit.asyncio import AsyncDeduplicator
from dedupkit.models import OnConflict

from . import rqstate
from .support import RedisServer, RQWorker, free_port, wait_for

TASK = "tests.tasks.work"

Pair = tuple[redis.Redis, Any]


@pytest.fixture(params=["fake", "real"])
def pair(request: pytest.FixtureRequest) -> Iterator[Pair]:
    """A sync and an async client on one Redis, flushed, scripts flushed."""
    if request.param == "fake":
        server = fakeredis.FakeServer()
        sync, aconn = fakeredis.FakeRedis(server=server), fakeredis.aioredis.FakeRedis(server=server)
    else:
        real: RedisServer = request.getfixturevalue("real_server")
        sync, aconn = redis.Redis.from_url(real.url), redis.asyncio.Redis.from_url(real.url)
    sync.flushall()
    sync.script_flush()
    yield sync, aconn
    sync.close()


def _run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(_closing(coro))


async def _closing(coro: Awaitable[Any]) -> Any:
    return await coro


def _shape(value: Any) -> Any:
    """What must agree between the two transports: decisions and states, not the generated ids or times."""
    if isinstance(value, list):
        return [_shape(v) for v in value]
    if hasattr(value, "admitted"):
        return (value.admitted, value.conflict, value.reason, value.recovered, bool(value.replaced),
                bool(value.follow_up_of), type(value.error).__name__ if value.error else None,
                _shape(value.status))
    if hasattr(value, "pending"):
        return (value.key, value.state, value.job_id is not None, value.scheduled_for is not None,
                value.follow_up_job_id is not None, value.last_run.status if value.last_run else None)
    return value


async def _script(d: Any, queue: Queue, conn: redis.Redis, call: Callable[[Any], Any]) -> list[Any]:
    """One scenario, written once: ``call`` awaits a coroutine's result or takes a plain one."""
    soon = datetime.now(timezone.utc) + timedelta(hours=1)
    out = [
        await call(d.enqueue("a", TASK, "a")),
        await call(d.enqueue("a", TASK, "a")),  # conflict
        await call(d.enqueue("a", TASK, "a", on_conflict="replace")),
        await call(d.enqueue("a", TASK, "a", on_conflict=OnConflict.REPLACE)),
        await call(d.enqueue_in(timedelta(hours=1), "b", TASK, "b")),
        await call(d.enqueue_at(soon, "c", TASK, "c")),
        await call(d.enqueue_at(soon, "c", TASK, "c", on_conflict="replace")),
        await call(d.enqueue_many([EnqueueRequest("d", TASK), EnqueueRequest("d", TASK), EnqueueRequest("", TASK),
                                   EnqueueRequest("e", TASK, at=timedelta(minutes=5))], raise_errors=False)),
    ]
    running = await call(d.enqueue("r", TASK, "r"))
    rqstate.start(conn, queue, running.job_id)
    out += [
        await call(d.enqueue("r", TASK, "r", on_conflict="follow_up")),
        await call(d.enqueue("r", TASK, "r", on_conflict="follow_up")),  # coalesced
        await call(d.enqueue("r", TASK, "r", on_conflict="replace")),  # running: kept
        await call(d.status_many(["a", "b", "c", "d", "e", "r", "free"])),
        [await call(d.is_running("r")), await call(d.is_queued("a")), await call(d.is_scheduled("b")),
         await call(d.has_pending("free"))],
        await call(d.cancel("a")), await call(d.cancel("a")), await call(d.cancel("r")), await call(d.cancel("r")),
        await call(d.status("a")),
        await call(d.stats()),
    ]
    return _shape(out)


def test_the_same_scenario_gives_the_same_answers(pair: Pair) -> None:
    sync, aconn = pair

    async def plain(value: Any) -> Any:
        return value

    async def awaited(value: Any) -> Any:
        return await value

    q1, q2 = Queue("one", connection=sync), Queue("two", connection=sync)
    expected = asyncio.run(_script(Deduplicator(q1), q1, sync, plain))
    got = asyncio.run(_script(AsyncDeduplicator(q2, connection=aconn), q2, sync, awaited))
    assert got == expected
    assert expected[1][0] is False and expected[2][4] is True  # a conflict, then a replace: the scenario bites


def test_sync_and_async_callers_share_the_slots(pair: Pair) -> None:
    sync, aconn = pair
    queue = Queue("shared", connection=sync)
    dedup, adedup = Deduplicator(queue), AsyncDeduplicator(queue, connection=aconn)

    async def scenario() -> None:
        first = await adedup.enqueue("k", TASK)
        assert first.admitted
        assert not dedup.enqueue("k", TASK).admitted
        assert dedup.status("k").job_id == first.job_id == (await adedup.status("k")).job_id
        assert dedup.cancel("k")
        assert not await adedup.has_pending("k")
        again = dedup.enqueue("k", TASK)
        conflict = await adedup.enqueue("k", TASK)
        assert not conflict.admitted and conflict.job_id == again.job_id

    asyncio.run(scenario())
    assert queue.get_job_ids() == [dedup.status("k").job_id]


def test_the_same_errors(pair: Pair, monkeypatch: pytest.MonkeyPatch) -> None:
    sync, aconn = pair
    queue = Queue("errors", connection=sync)
    adedup = AsyncDeduplicator(queue, connection=aconn)

    async def scenario() -> None:
        with pytest.raises(InvalidKeyError):
            await adedup.enqueue("", TASK)
        with pytest.raises(InvalidKeyError):
            await adedup.status(None)  # type: ignore[arg-type]
        with pytest.raises(InvalidRequestError, match="on_conflict"):
            await adedup.enqueue("k", TASK, on_conflict="ignore")
        with pytest.raises(InvalidRequestError, match="job_id"):
            await adedup.enqueue("k", TASK, job_id="mine")
        with pytest.raises(NaiveDatetimeError):
            await adedup.enqueue_at(datetime.now(), "k", TASK)
        with pytest.raises(InvalidRequestError):
            await adedup.enqueue_in(5, "k", TASK)  # type: ignore[arg-type]
        with pytest.raises(InvalidRequestError):
            await adedup.enqueue_many([], batch_size=0)
        sync.hset("rq:job:job_k_1", mapping={"status": "finished"})
        monkeypatch.setattr("dedupkit.admission.job_id_of", lambda prefix, encoded: f"{prefix}_{encoded}_1")
        with pytest.raises(JobIdCollisionError):
            await adedup.enqueue("k", TASK)

    asyncio.run(scenario())
    assert queue.get_job_ids() == []


def test_bad_construction_is_refused(fake_redis: redis.Redis) -> None:
    aconn = fakeredis.aioredis.FakeRedis()
    with pytest.raises(InvalidRequestError, match="inline"):
        AsyncDeduplicator(Queue("q", connection=fake_redis, is_async=False), connection=aconn)
    with pytest.raises(InvalidRequestError, match=r"redis\.asyncio"):
        AsyncDeduplicator(Queue("q", connection=fake_redis), connection=object())
    with pytest.raises(InvalidRequestError, match=r"rq\.Queue"):
        AsyncDeduplicator("q", connection=aconn)  # type: ignore[arg-type]


def test_no_server_raises_redis_unavailable(fake_redis: redis.Redis) -> None:
    aconn = redis.asyncio.Redis(port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    adedup = AsyncDeduplicator(Queue("down", connection=fake_redis), connection=aconn)
    with pytest.raises(RedisUnavailableError):
        asyncio.run(adedup.enqueue("k", TASK))
    with pytest.raises(RedisUnavailableError):
        asyncio.run(adedup.stats())


def test_stop_running_sends_rqs_stop_command_from_a_thread(real_redis: redis.Redis, real_server: RedisServer,
                                                           workers: Callable[..., RQWorker]) -> None:
    queue = Queue("astop", connection=real_redis)
    adedup = AsyncDeduplicator(queue, connection=redis.asyncio.Redis.from_url(real_server.url))
    workers("astop")

    async def scenario() -> str:
        admission = await adedup.enqueue("long", TASK, "long", 30)
        # The worker names itself on the job after its execution's lease exists (RQ 3): wait for the name.
        await asyncio.to_thread(wait_for, lambda: real_redis.hget(f"rq:job:{admission.job_id}", "worker_name"), 20,
                                0.05, "job start")
        assert await adedup.is_running("long")
        assert await adedup.cancel("long") is False  # running: left alone without stop_running
        assert await adedup.cancel("long", stop_running=True) is True
        await asyncio.to_thread(wait_for, lambda: not real_redis.zcard(queue.started_job_registry.key), 20, 0.05,
                                "job stop")
        return str(admission.job_id)

    job_id = asyncio.run(scenario())
    assert queue.fetch_job(job_id).get_status() == JobStatus.STOPPED  # type: ignore[union-attr]


@pytest.mark.skipif(int(rq.__version__.split(".")[0]) < 3, reason="RQ 3 rate limits")
@pytest.mark.rq_version
def test_rate_limited_admission_and_cancel_run_rqs_registry_in_a_thread(pair: Pair) -> None:
    from rq.rate_limit import RateLimit, RateLimitRegistry

    sync, aconn = pair
    queue = Queue("alimit", connection=sync)
    adedup = AsyncDeduplicator(queue, connection=aconn, rq_connection=sync)
    limit = RateLimit("mail", 1)

    async def scenario() -> tuple[Any, Any, bool, Any]:
        first = await adedup.enqueue("a", TASK, "a", rate_limit=limit)
        second = await adedup.enqueue("b", TASK, "b", rate_limit=limit)
        cancelled = await adedup.cancel("a")  # RQ's RateLimitRegistry.cancel frees its slot: "b" is promoted
        return first, second, cancelled, await adedup.status("b")

    first, second, cancelled, b = asyncio.run(scenario())
    assert first.status.state is JobState.QUEUED and second.status.state is JobState.RATE_LIMITED
    assert cancelled and b.state is JobState.QUEUED
    assert RateLimitRegistry("mail", connection=sync).get_allowed_job_ids() == [second.job_id]

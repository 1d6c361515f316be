"""AsyncDeduplicator under a race, on a real redis-server: many coroutines in several processes,
with sync Deduplicator callers beside them, over a few keys; judged from RQ's own data.

Also: one request (one EVALSHA) per async admission, counted with MONITOR.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing as mp
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import timedelta

import redis
import redis.asyncio
from rq import Queue

from dedupkit import Deduplicator, EnqueueRequest
from dedupkit.asyncio import AsyncDeduplicator
from dedupkit.encoding import encode_key

from . import tasks
from .support import RedisServer, RQWorker, wait_for
from .test_round_trips_real import _requests

ASYNC_PROCS, COROUTINES, CALLS, SYNC_PROCS, KEYS = 3, 40, 12, 2, 4
TASK = "tests.tasks.step_work"


def _keys() -> list[str]:
    return [f"user:{i}" for i in range(KEYS)]


async def _async_caller(url: str, queue_name: str, worker: int, seconds: float) -> list[tuple[str, str]]:
    conn = redis.asyncio.Redis.from_url(url)
    dedup = AsyncDeduplicator(Queue(queue_name, connection=redis.Redis.from_url(url)), connection=conn)
    admitted: list[tuple[str, str]] = []

    async def one(c: int) -> None:
        for i in range(CALLS):
            key = _keys()[(worker + c + i) % KEYS]
            if (c + i) % 3:
                adm = await dedup.enqueue(key, TASK, key, seconds)
            else:  # the batch path races the single path
                adm = (await dedup.enqueue_many([EnqueueRequest(key, TASK, (key, seconds))]))[0]
            if adm.admitted:
                admitted.append((key, str(adm.job_id)))

    await asyncio.gather(*(one(c) for c in range(COROUTINES)))
    await conn.aclose()
    return admitted


def _async_proc(url: str, queue_name: str, worker: int, seconds: float, barrier: object, out: object) -> None:
    barrier.wait()  # type: ignore[attr-defined]
    out.put(asyncio.run(_async_caller(url, queue_name, worker, seconds)))  # type: ignore[attr-defined]


def _sync_proc(url: str, queue_name: str, worker: int, seconds: float, barrier: object, out: object) -> None:
    dedup = Deduplicator(Queue(queue_name, connection=redis.Redis.from_url(url)))
    barrier.wait()  # type: ignore[attr-defined]
    admitted = []
    for i in range(COROUTINES * CALLS // 4):
        key = _keys()[(worker + i) % KEYS]
        adm = dedup.enqueue(key, TASK, key, seconds)
        if adm.admitted:
            admitted.append((key, str(adm.job_id)))
    out.put(admitted)  # type: ignore[attr-defined]


def _race(url: str, queue_name: str, seconds: float) -> list[tuple[str, str]]:
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(ASYNC_PROCS + SYNC_PROCS), ctx.Queue()
    procs = [ctx.Process(target=_async_proc, args=(url, queue_name, w, seconds, barrier, out))
             for w in range(ASYNC_PROCS)]
    procs += [ctx.Process(target=_sync_proc, args=(url, queue_name, w, seconds, barrier, out))
              for w in range(SYNC_PROCS)]
    for p in procs:
        p.start()
    results = [out.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    return [a for r in results for a in r]


def _key_of(job_id: str) -> str:
    return job_id.split("_")[1]


def test_async_and_sync_callers_admit_one_job_per_key(real_server: RedisServer, real_redis: redis.Redis) -> None:
    admitted = _race(real_server.url, "arace", 0.0)
    assert sorted(k for k, _ in admitted) == _keys()  # one admission per key, all callers together
    # RQ's own data: the queue holds exactly one job per key, and nothing else is pending.
    queue = Queue("arace", connection=real_redis)
    queued = queue.get_job_ids()
    assert sorted(queued) == sorted(j for _, j in admitted)
    assert Counter(map(_key_of, queued)) == Counter({encode_key(k): 1 for k in _keys()})
    assert queue.scheduled_job_registry.count == 0 and queue.started_job_registry.count == 0
    stats = Deduplicator(queue).stats()
    total = ASYNC_PROCS * COROUTINES * CALLS + SYNC_PROCS * (COROUTINES * CALLS // 4)
    assert stats["admitted"] == KEYS and stats["conflict"] == total - KEYS


def test_the_race_with_real_workers_never_holds_two_pending_jobs_of_a_key(
        real_server: RedisServer, real_redis: redis.Redis, workers: Callable[..., RQWorker]) -> None:
    queue = Queue("arace-w", connection=real_redis)
    keys = Deduplicator(queue).keys
    for _ in range(2):
        workers("arace-w")
    seen: dict[str, int] = defaultdict(int)
    doubles: list[tuple[str, list[str]]] = []
    stop = threading.Event()

    def sample() -> None:
        """Snapshots of RQ's queue, intermediate list and started registry, each in one MULTI."""
        conn = redis.Redis.from_url(real_server.url)
        while not stop.is_set():
            with conn.pipeline() as pipe:
                pipe.lrange(keys.queue, 0, -1).lrange(keys.intermediate, 0, -1).zrange(keys.started, 0, -1)
                queued, taken, started = pipe.execute()
            ids = {i.decode() for i in queued + taken} | {m.decode().split(":")[0] for m in started}
            per_key: dict[str, list[str]] = defaultdict(list)
            for job_id in ids:
                per_key[_key_of(job_id)].append(job_id)
            for key, held in per_key.items():
                seen[key] += 1
                if len(held) > 1:
                    doubles.append((key, held))
        conn.close()

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    admitted = _race(real_server.url, "arace-w", 0.05)
    wait_for(lambda: not real_redis.llen(keys.queue) and not real_redis.zcard(keys.started), 60, what="the drain")
    time.sleep(0.2)
    stop.set()
    sampler.join(10)

    assert doubles == []
    assert sum(seen.values()) > 100  # the sampler did look while jobs were pending
    assert len(admitted) > KEYS  # keys were freed by finished jobs and admitted again
    # Every admitted job ran exactly once, and no two runs of a key overlapped (each run logs
    # its start and end from the work-horse: tests.tasks.step_work).
    finished = set(queue.finished_job_registry.get_job_ids())
    assert finished == {j for _, j in admitted}
    for key in _keys():
        events = [json.loads(e) for e in real_redis.lrange(tasks.step_log_key(key), 0, -1)]
        runs = Counter(e["job"] for e in events if e["ev"] == "start")
        assert set(runs) == {j for k, j in admitted if k == key} and set(runs.values()) == {1}
        running = 0
        for e in sorted(events, key=lambda e: (e["t"], e["ev"] == "start")):
            running += 1 if e["ev"] == "start" else -1
            assert running <= 1, f"two runs of {key} overlapped"


def test_each_async_call_is_one_request(real_server: RedisServer, real_redis: redis.Redis) -> None:
    conn = redis.asyncio.Redis.from_url(real_server.url)
    dedup = AsyncDeduplicator(Queue("art", connection=real_redis), connection=conn)
    loop = asyncio.new_event_loop()

    def run(coro: object) -> Callable[[], object]:
        return lambda: loop.run_until_complete(coro)  # type: ignore[arg-type]

    try:
        loop.run_until_complete(dedup.enqueue("warm", "tests.tasks.work"))  # loads the scripts, reads INFO
        loop.run_until_complete(dedup.status("warm"))
        loop.run_until_complete(dedup.cancel("warm"))
        assert _requests(real_server, run(dedup.enqueue("a", "tests.tasks.work"))) == ["EVALSHA"]
        assert _requests(real_server, run(dedup.enqueue("a", "tests.tasks.work"))) == ["EVALSHA"]  # conflict
        assert _requests(real_server, run(dedup.enqueue("a", "tests.tasks.work", on_conflict="replace"))) == [
            "EVALSHA"]
        assert _requests(real_server, run(dedup.enqueue_in(timedelta(hours=1), "b", "tests.tasks.work"))) == [
            "EVALSHA"]
        assert _requests(real_server, run(dedup.status("a"))) == ["EVALSHA"]
        assert _requests(real_server, run(dedup.status_many(range(1200)))) == ["EVALSHA"] * 3
        assert _requests(real_server, run(dedup.cancel("a"))) == ["EVALSHA"]
        batch = [EnqueueRequest(f"k{i}", "tests.tasks.work") for i in range(300)]
        assert _requests(real_server, run(dedup.enqueue_many(batch, batch_size=100))) == ["EVALSHA"] * 3
    finally:
        loop.run_until_complete(conn.aclose())
        loop.close()

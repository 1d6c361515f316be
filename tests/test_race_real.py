"""Many processes admitting the same keys at once on a real redis-server: one job per key."""

from __future__ import annotations

import multiprocessing as mp
from collections import Counter

import redis
from rq import Queue

from dedupkit import Deduplicator, EnqueueRequest
from dedupkit.keys import encode_key

from .support import RedisServer

PROCS, CALLS, KEYS = 8, 200, 10


def _hammer(url: str, worker: int, barrier: object, out: object) -> None:
    conn = redis.Redis.from_url(url)
    dedup = Deduplicator(Queue("race", connection=conn))
    barrier.wait()  # type: ignore[attr-defined]
    admitted = []
    for i in range(CALLS):
        key = f"user:{(i + worker) % KEYS}"
        if i % 3:
            adm = dedup.enqueue(key, "tests.tasks.work", key)
        else:  # the scheduler's path races the button's path
            adm = dedup.enqueue_many([EnqueueRequest(key, "tests.tasks.work", (key,))])[0]
        if adm.admitted:
            admitted.append((key, adm.job_id))
    out.put(admitted)  # type: ignore[attr-defined]


def test_8_processes_200_calls_10_keys_give_10_jobs(real_server: RedisServer, real_redis: redis.Redis) -> None:
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(PROCS), ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(real_server.url, w, barrier, out)) for w in range(PROCS)]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    admitted = [a for r in results for a in r]
    assert len(admitted) == KEYS
    assert sorted(k for k, _ in admitted) == sorted(f"user:{i}" for i in range(KEYS))

    # RQ's own data, not dedupkit's: the queue holds exactly one job per key.
    queue = Queue("race", connection=real_redis)
    queued = queue.get_job_ids()
    assert sorted(queued) == sorted(j for _, j in admitted)
    per_key = Counter(j.split("_")[1] for j in queued)
    assert per_key == Counter({encode_key(f"user:{i}"): 1 for i in range(KEYS)})
    assert queue.scheduled_job_registry.count == 0 and queue.started_job_registry.count == 0
    stats = Deduplicator(queue).stats()
    assert stats["admitted"] == KEYS and stats["conflict"] == PROCS * CALLS - KEYS

"""The race is real: the seed's check-then-enqueue makes duplicates under the same
concurrency where dedupkit makes none (real redis-server, 8 processes at once)."""

from __future__ import annotations

import multiprocessing as mp
from typing import Any

import redis
from rq import Queue

from benchmarks.naive import JOB_ID_PREFIX, naive_enqueue
from dedupkit import Deduplicator

from .snapshot import runnable_by_key, violations
from .support import RedisServer

PROCS, KEYS, ROUNDS = 8, 10, 5


def naive_key_of(job_id: str) -> str:
    return job_id[len(JOB_ID_PREFIX) + 1:].rsplit("_", 1)[0]


def _caller(url: str, variant: str, round_no: int, barrier: Any) -> None:
    queue = Queue(f"{variant}{round_no}", connection=redis.Redis.from_url(url))
    dedup = Deduplicator(queue)
    barrier.wait()
    for i in range(KEYS):
        key = f"u{i}"
        if variant == "naive":
            naive_enqueue(queue, key, "tests.tasks.work", key)
        else:
            dedup.enqueue(key, "tests.tasks.work", key)


def _round(url: str, variant: str, round_no: int) -> None:
    ctx = mp.get_context("fork")
    barrier = ctx.Barrier(PROCS)
    procs = [ctx.Process(target=_caller, args=(url, variant, round_no, barrier)) for _ in range(PROCS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0


def test_naive_duplicates_dedupkit_does_not(real_server: RedisServer, real_redis: redis.Redis) -> None:
    naive_dupes = 0
    for round_no in range(ROUNDS):
        _round(real_server.url, "naive", round_no)
        queue = Queue(f"naive{round_no}", connection=real_redis)
        naive_dupes += sum(len(v) - 1 for v in violations(real_redis, queue, naive_key_of).values())
        if naive_dupes:
            break
    for round_no in range(ROUNDS):
        _round(real_server.url, "dedupkit", round_no)
        queue = Queue(f"dedupkit{round_no}", connection=real_redis)
        assert violations(real_redis, queue) == {}
        assert len(runnable_by_key(real_redis, queue)) == KEYS
    print(f"\nnaive check-then-enqueue: {naive_dupes} duplicate jobs; dedupkit: 0 over {ROUNDS} rounds")
    assert naive_dupes > 0, "the naive approach should race in this setup"

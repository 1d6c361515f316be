"""How long one dedupkit Scheduler tick takes for N users on a real redis-server.

    .venv/bin/python -m benchmarks.scheduler_tick [--users 10000] [--batch-size 500] [--repeat 3] [--url URL]

Per repetition, on a flushed db: tick 1 admits every user (half overdue -> queued, half
due within the horizon -> scheduled), tick 2 finds every user pending and skips them all;
both with the Scheduler's precheck (a status read per batch, jobs built only for keys
that may be free) and without it (every job built, the admission script decides).
Both ticks log their one line per user at INFO into a discarding handler, so formatting
the log lines is part of the measured time. For scale it also times the same N users
admitted one ``Deduplicator.enqueue`` call (one round trip) per user. Starts its own
redis-server on loopback unless --url is given (that db is flushed).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import redis
from rq import Queue

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dedupkit import Deduplicator  # noqa: E402
from dedupkit.scheduler import ScheduleEntry, Scheduler  # noqa: E402

TASK = "benchmarks.jobs.process"


def entries(n: int) -> list[ScheduleEntry]:
    now = datetime.now(timezone.utc)
    soon, overdue = now + timedelta(seconds=30), now - timedelta(minutes=5)
    return [ScheduleEntry(uid, soon if uid % 2 else overdue, TASK, (uid,)) for uid in range(n)]


def measure(url: str, users: int, batch_size: int, repeat: int) -> dict[str, list[float]]:
    conn = redis.Redis.from_url(url)
    log = logging.getLogger("benchmark.scheduler")
    log.propagate = False
    log.addHandler(logging.NullHandler())
    log.setLevel(logging.INFO)
    logging.getLogger("dedupkit").setLevel(logging.ERROR)
    times: dict[str, list[float]] = {}
    source = entries(users)
    for _ in range(repeat):
        for precheck in (True, False):  # interleaved, so both see the same machine
            conn.flushdb()
            dedup = Deduplicator(Queue("bench", connection=conn))
            sched = Scheduler(dedup, lambda: source, interval=60, batch_size=batch_size, leader_lease=False,
                              precheck=precheck, log=log)
            first, second = sched.tick(), sched.tick()
            assert (first.admitted, second.skipped) == (users, users), (first, second)
            label = "precheck" if precheck else "no precheck"
            times.setdefault(f"tick 1 (admit all), {label}", []).append(first.duration)
            times.setdefault(f"tick 2 (skip all), {label}", []).append(second.duration)
        conn.flushdb()
        started = time.perf_counter()
        for e in source:
            dedup.enqueue(e.key, e.func, *e.args)
        times.setdefault("one enqueue per user", []).append(time.perf_counter() - started)
    conn.flushdb()
    conn.close()
    return times


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--url", help="measure this Redis instead of a fresh redis-server (its db is flushed)")
    args = p.parse_args(argv)
    server = None
    if args.url:
        url = args.url
    else:
        from tests.support import RedisServer

        server = RedisServer()
        url = server.url
    try:
        version = redis.Redis.from_url(url).info("server").get("redis_version", "?")
        times = measure(url, args.users, args.batch_size, args.repeat)
    finally:
        if server is not None:
            server.close()
    print(f"Scheduler tick, {args.users} users, batch size {args.batch_size}, redis-server {version} on loopback, "
          f"{args.repeat} runs")
    print(f"{'':36}{'median s':>10}{'min s':>10}{'users/s':>12}")
    for name, values in times.items():
        med = statistics.median(values)
        print(f"{name:<36}{med:>10.3f}{min(values):>10.3f}{args.users / med:>12,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

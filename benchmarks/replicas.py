"""The cost of acknowledged admissions: ``min_replicas=1`` against ``min_replicas=0`` (issue 13).

    .venv/bin/python -m benchmarks.replicas [--quick] [--repeat N] [--n 2000]

A redis-server primary with one replica on loopback (started here; ``--url`` is not
used: the replica is part of the setup). One client admits ``--n`` fresh keys with
``enqueue`` (latency per call), then ``--n`` more with ``enqueue_many`` batches of 100,
once with ``Deduplicator(queue)`` and once with ``Deduplicator(queue, min_replicas=1,
replica_timeout=1)`` (script + ``WAIT 1 1000`` pipelined, one round trip), interleaved and
repeated. Reports admissions/s, p50/p99 per ``enqueue`` and how many admissions came back
unconfirmed.
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

from rq import Queue

from dedupkit import Deduplicator, EnqueueRequest

from . import _common as c
from .jobs import process

VARIANTS = (0, 1)


def _run(url: str, min_replicas: int, n: int, tag: str) -> dict[str, Any]:
    conn = c.connect(url, socket_timeout=10)
    dedup = Deduplicator(Queue("replicas", connection=conn), min_replicas=min_replicas, replica_timeout=1.0)
    dedup.enqueue(f"warm-{tag}", process, 0)
    lat: list[float] = []
    unconfirmed = 0
    t0 = time.perf_counter()
    for i in range(n):
        s = time.perf_counter()
        adm = dedup.enqueue(f"{tag}-{i}", process, i)
        lat.append(time.perf_counter() - s)
        unconfirmed += adm.confirmed is False
    single_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for start in range(0, n, 100):
        batch = [EnqueueRequest(f"{tag}-b{i}", process, (i,)) for i in range(start, min(n, start + 100))]
        unconfirmed += sum(a.confirmed is False for a in dedup.enqueue_many(batch))
    batch_s = time.perf_counter() - t0
    conn.close()
    return {"min_replicas": min_replicas, "single_per_s": n / single_s, "p50_us": c.percentile(lat, 50) * 1e6,
            "p99_us": c.percentile(lat, 99) * 1e6, "batch_per_s": n / batch_s, "unconfirmed": unconfirmed}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=None)
    args = p.parse_args(argv)
    n = args.n or (200 if args.quick else 2000)
    reps = c.repeats(args, full=5, quick=1)
    sys.path.insert(0, str(c.ROOT))
    from tests.support import RedisServer, wait_for
    from tests.topology import replicas_online

    primary = RedisServer("--repl-diskless-sync-delay", "0")
    replica = RedisServer("--replicaof", "127.0.0.1", str(primary.port))
    rows: list[dict[str, Any]] = []
    try:
        conn, machine = c.fresh(primary.url)
        wait_for(lambda: replicas_online(conn) == 1, 30, what="the replica to sync")
        for rep in range(reps):
            for m in VARIANTS if rep % 2 == 0 else tuple(reversed(VARIANTS)):
                conn.flushdb()
                rows.append({**_run(primary.url, m, n, f"r{rep}m{m}"), "rep": rep})
        conn.close()
    finally:
        replica.close()
        primary.close()
    summary: dict[str, Any] = {}
    table_rows = []
    for m in VARIANTS:
        rs = [r for r in rows if r["min_replicas"] == m]
        med = {k: statistics.median(r[k] for r in rs) for k in ("single_per_s", "p50_us", "p99_us", "batch_per_s")}
        med["unconfirmed"] = sum(r["unconfirmed"] for r in rs)
        summary[str(m)] = med
        table_rows.append([m, med["single_per_s"], med["p50_us"], med["p99_us"], med["batch_per_s"],
                           med["unconfirmed"]])
    text = c.table(["min_replicas", "enqueue/s", "p50 µs", "p99 µs", "enqueue_many(100) admissions/s",
                    "unconfirmed (all reps)"], table_rows)
    base, acked = summary["0"], summary["1"]
    text += (f"\n\nmin_replicas=1 costs {c.ratio(base['single_per_s'], acked['single_per_s']):.2f}x in enqueue/s, "
             f"p50 {c.ratio(acked['p50_us'], base['p50_us']):.2f}x, enqueue_many "
             f"{c.ratio(base['batch_per_s'], acked['batch_per_s']):.2f}x (medians of {reps}, n={n})")
    data = {"machine": machine, "n": n, "rows": rows, "summary": summary}
    c.write(args, "replicas", data, text)
    return data


if __name__ == "__main__":
    main()

"""Saturation: admissions/s of one Redis with 8 client processes (issue 13).

    .venv/bin/python -m benchmarks.saturation [--quick] [--url URL] [--repeat N] [--procs 8] [--seconds 5]

Every process admits jobs for its own fresh keys as fast as it can for ``--seconds``
(barrier-started, no worker runs: every job stays queued), either one ``enqueue`` per
call or ``enqueue_many`` batches of 100. The table gives admissions/s over all processes,
the redis-server's CPU share over the same wall time (``INFO cpu``: 1.0 is one core busy,
the most a single-threaded Redis can use), and the admit script's server time per
admission (``INFO commandstats``), whose inverse is the ceiling of one Redis when clients
are not the limit. The variants alternate, repeated ``--repeat`` times.
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import time
from typing import Any

from rq import Queue

from dedupkit import Deduplicator, EnqueueRequest

from . import _common as c
from .jobs import process

VARIANTS = ("enqueue", "enqueue_many(100)")


def worker(url: str, variant: str, seconds: float, index: int, barrier: Any, results: Any) -> None:
    conn = c.connect(url)
    dedup = Deduplicator(Queue("saturation", connection=conn))
    dedup.enqueue(f"warm-{index}", process, 0)  # scripts loaded, eviction policy read
    n = 0
    barrier.wait()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        if variant == "enqueue":
            n += dedup.enqueue(f"p{index}-{n}", process, n).admitted
        else:
            batch = [EnqueueRequest(f"p{index}-{n + i}", process, (n + i,)) for i in range(100)]
            n += sum(a.admitted for a in dedup.enqueue_many(batch))
    barrier.wait()
    results.put(n)
    conn.close()


def _cpu(conn: Any) -> float:
    info = conn.info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _admit_usec(conn: Any) -> tuple[float, float]:
    stats = c.commandstats(conn)
    evalsha = stats.get("evalsha", {})
    return float(evalsha.get("usec", 0)), float(evalsha.get("calls", 0))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--procs", type=int, default=8)
    p.add_argument("--seconds", type=float, default=None)
    args = p.parse_args(argv)
    seconds = args.seconds or (1.0 if args.quick else 5.0)
    reps = c.repeats(args, full=3, quick=1)
    ctx = mp.get_context("fork")
    rows: list[dict[str, Any]] = []
    with c.redis_url(args) as url:
        conn, machine = c.fresh(url)
        for rep in range(reps):
            for variant in VARIANTS if rep % 2 == 0 else tuple(reversed(VARIANTS)):
                conn.flushdb()
                conn.config_resetstat()
                barrier = ctx.Barrier(args.procs + 1, timeout=300)
                results = ctx.Queue()
                procs = [ctx.Process(target=worker, args=(url, variant, seconds, i, barrier, results), daemon=True)
                         for i in range(args.procs)]
                for proc in procs:
                    proc.start()
                barrier.wait()
                cpu0, (usec0, calls0), t0 = _cpu(conn), _admit_usec(conn), time.perf_counter()
                barrier.wait()
                wall = time.perf_counter() - t0
                cpu1, (usec1, _) = _cpu(conn), _admit_usec(conn)
                admitted = sum(results.get(timeout=60) for _ in procs)
                for proc in procs:
                    proc.join(30)
                rows.append({"variant": variant, "rep": rep, "wall_s": wall, "admitted": admitted,
                             "admissions_per_s": admitted / wall, "redis_cpu": (cpu1 - cpu0) / wall,
                             "server_usec_per_admission": (usec1 - usec0) / max(admitted, 1),
                             "warm_calls": calls0})
        conn.close()
    table_rows = []
    summary: dict[str, Any] = {}
    for variant in VARIANTS:
        rs = [r for r in rows if r["variant"] == variant]
        rate = statistics.median(r["admissions_per_s"] for r in rs)
        cpu = statistics.median(r["redis_cpu"] for r in rs)
        usec = statistics.median(r["server_usec_per_admission"] for r in rs)
        summary[variant] = {"admissions_per_s": rate, "redis_cpu": cpu, "server_usec_per_admission": usec}
        table_rows.append([variant, args.procs, rate, min(r["admissions_per_s"] for r in rs), cpu, usec,
                           1e6 / usec if usec else float("nan")])
    text = c.table(["variant", "procs", "admissions/s (median)", "min", "redis CPU (cores)",
                    "server µs/admission", "ceiling/s (1e6/µs)"], table_rows)
    data = {"machine": machine, "procs": args.procs, "seconds": seconds, "rows": rows, "summary": summary}
    c.write(args, "saturation", data, text)
    return data


if __name__ == "__main__":
    main()

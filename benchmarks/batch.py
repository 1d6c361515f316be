"""Batch admission (enqueue_many, the scheduler path): admissions/s and where the time goes.

    .venv/bin/python -m benchmarks.batch [--quick] [--url URL] [--repeat N] [--tick-keys N]

For 100, 1,000 and 10,000 requests per ``enqueue_many`` call (default batch_size=500,
so one script call per 500), interleaved with RQ's own ``Queue.enqueue_many`` (one
pipeline, no dedup) as the reference, each on an empty db. The time of one call is
split into Python job building (``_prepare``), Redis server time of the script calls
(INFO commandstats usec of EVALSHA) and the rest (payload encoding, socket, reply
parsing). The full mode then runs a scheduler tick over 1,000,000 distinct keys (in
enqueue_many calls of 10,000) and a second tick over the same keys, which all conflict.
"""

from __future__ import annotations

import resource
import time
from typing import Any

from rq import Queue

from dedupkit import Deduplicator, EnqueueRequest

from . import _common as c
from .jobs import process

SIZES_FULL = (100, 1_000, 10_000)
SIZES_QUICK = (100, 1_000)
TICK_CHUNK = 10_000


def requests(prefix: str, n: int, start: int = 0) -> list[EnqueueRequest]:
    return [EnqueueRequest(f"{prefix}{i}", process, (i,)) for i in range(start, start + n)]


def evalsha_usec(conn: Any) -> tuple[float, float]:
    s = c.commandstats(conn).get("evalsha", {})
    return float(s.get("usec", 0)), float(s.get("calls", 0))


def run_dedupkit(dedup: Deduplicator, n: int) -> dict[str, float]:
    conn = dedup.connection
    conn.flushdb()
    reqs = requests("user", n)
    usec0, calls0 = evalsha_usec(conn)
    t0 = time.perf_counter()
    out = dedup.enqueue_many(reqs)
    wall = time.perf_counter() - t0
    usec1, calls1 = evalsha_usec(conn)
    assert sum(a.admitted for a in out) == n
    # The Python half alone, on the same requests (nothing is sent).
    t1 = time.perf_counter()
    for r in reqs:
        dedup._prepare(r)
    prepare = time.perf_counter() - t1
    server = (usec1 - usec0) / 1e6
    return {"adm_s": n / wall, "wall_s": wall, "prepare_s": prepare, "server_s": server,
            "rest_s": max(0.0, wall - prepare - server), "script_calls": calls1 - calls0}


def run_rq(queue: Queue, n: int) -> dict[str, float]:
    queue.connection.flushdb()
    data = [Queue.prepare_data(process, (i,)) for i in range(n)]
    t0 = time.perf_counter()
    jobs = queue.enqueue_many(data)
    wall = time.perf_counter() - t0
    assert len(jobs) == n
    return {"adm_s": n / wall, "wall_s": wall}


def tick(dedup: Deduplicator, keys: int) -> dict[str, Any]:
    """One pass over ``keys`` keys in enqueue_many calls of TICK_CHUNK requests."""
    conn = dedup.connection
    usec0, _ = evalsha_usec(conn)
    admitted = conflicts = 0
    t0 = time.perf_counter()
    for start in range(0, keys, TICK_CHUNK):
        out = dedup.enqueue_many(requests("tick", min(TICK_CHUNK, keys - start), start))
        admitted += sum(a.admitted for a in out)
        conflicts += sum(not a.admitted for a in out)
    wall = time.perf_counter() - t0
    usec1, _ = evalsha_usec(conn)
    return {"keys": keys, "wall_s": wall, "per_s": keys / wall, "admitted": admitted, "conflicts": conflicts,
            "server_s": (usec1 - usec0) / 1e6, "client_s": wall - (usec1 - usec0) / 1e6}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--tick-keys", type=int, default=None, help="keys per tick (default 1M; 2k quick)")
    args = p.parse_args(argv)
    sizes = SIZES_QUICK if args.quick else SIZES_FULL
    reps = c.repeats(args)
    tick_keys = args.tick_keys or (2_000 if args.quick else 1_000_000)
    with c.redis_url(args) as url:
        conn, machine = c.fresh(url)
        queue = Queue("bench", connection=conn)
        dedup = Deduplicator(queue)
        run_dedupkit(dedup, 100)  # warm: scripts loaded
        runs: dict[str, list[dict[str, float]]] = {}
        cases = [(v, n) for n in sizes for v in ("dedupkit", "rq")]
        for rep in range(reps):
            order = cases[rep % len(cases):] + cases[:rep % len(cases)]
            for variant, n in order:
                r = run_dedupkit(dedup, n) if variant == "dedupkit" else run_rq(queue, n)
                runs.setdefault(f"{variant}:{n}", []).append(r)
        conn.flushdb()
        t_first = tick(dedup, tick_keys)
        t_second = tick(dedup, tick_keys)
        mem = conn.info("memory")["used_memory"]
        conn.flushdb()
        conn.close()
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    rows = []
    summary: dict[str, Any] = {}
    for n in sizes:
        d = runs[f"dedupkit:{n}"]
        r = runs[f"rq:{n}"]
        s = {m: c.spread([x[m] for x in d]) for m in ("adm_s", "prepare_s", "server_s", "rest_s", "wall_s")}
        s["rq_adm_s"] = c.spread([x["adm_s"] for x in r])
        summary[str(n)] = s
        wall = s["wall_s"]["median"]
        rows.append([n, s["adm_s"]["min"], s["adm_s"]["median"], s["rq_adm_s"]["median"],
                     c.ratio(s["adm_s"]["median"], s["rq_adm_s"]["median"]),
                     100 * s["prepare_s"]["median"] / wall, 100 * s["server_s"]["median"] / wall,
                     100 * s["rest_s"]["median"] / wall])
    ticks = [["first (all admitted)", t_first["keys"], t_first["per_s"], t_first["admitted"], t_first["conflicts"],
              t_first["wall_s"], t_first["server_s"]],
             ["second (all conflict)", t_second["keys"], t_second["per_s"], t_second["admitted"],
              t_second["conflicts"], t_second["wall_s"], t_second["server_s"]]]
    best = max(summary[str(n)]["adm_s"]["median"] for n in sizes)
    targets = {"ge_25000_adm_s_one_process": best >= 25_000 and t_first["per_s"] >= 25_000}
    text = (f"Batch admission (enqueue_many, batch_size=500), {reps} interleaved repetitions\n\n"
            + c.table(["requests per call", "dedupkit adm/s min", "dedupkit adm/s median", "rq.enqueue_many /s median",
                       "x rq", "% Python job building", "% Redis server (scripts)", "% rest (encode, socket, parse)"],
                      rows)
            + f"\n\nScheduler tick over {tick_keys:,} distinct keys, enqueue_many calls of {TICK_CHUNK:,}\n\n"
            + c.table(["tick", "keys", "per s", "admitted", "conflicts", "wall s", "Redis server s"], ticks)
            + f"\n\nRedis used_memory after the ticks: {mem / 2**20:,.0f} MiB; client peak RSS {rss_gib:.2f} GiB\n\n"
            + c.table(["target", "met"], [[k, "yes" if v else "no"] for k, v in targets.items()]))
    data = {"machine": machine, "repeat": reps, "sizes": sizes, "summary": summary, "runs": runs,
            "tick_first": t_first, "tick_second": t_second, "redis_used_memory": mem, "client_peak_rss_gib": rss_gib,
            "targets": targets}
    c.write(args, "batch", data, text)
    return data


if __name__ == "__main__":
    main()

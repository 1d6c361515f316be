"""Batch admission (enqueue_many, the scheduler path): admissions/s and where the time goes.

    .venv/bin/python -m benchmarks.batch [--quick] [--url URL] [--repeat N] [--tick-keys N]

For 100, 1,000 and 10,000 requests per ``enqueue_many`` call (default batch_size=500,
so one script call per 500), interleaved with RQ's own ``Queue.enqueue_many`` (one
pipeline, no dedup) as the reference, each on an empty db. The time of one call is
split into Python job building (``_prepare``), Redis server time of the script calls
(INFO commandstats usec of EVALSHA) and the rest (payload encoding, socket, reply
parsing). The full mode then runs a ``Scheduler`` tick over 1,000,000 distinct keys (in
batches of 10,000) and a second tick over the same keys, which are all pending: first with
the Scheduler's precheck (the default), then on a flushed db without it (every job built,
the script answers each conflict). For scale, RQ's own ``Queue.enqueue_many`` then writes
the same number of jobs, in the same batches, with no dedup and no scheduler: what one
process of RQ itself takes to put that many jobs in Redis. With ``--tick-processes N``
(N > 1) the two ticks with the precheck run again split over N processes, each a
``Scheduler`` of its own name over its shard of the keys (``shard_of(key, N)``), started
together: the wall time is from the first start to the last end. ``--tick-only`` runs
just the ticks and writes ``batch_tick.{md,json}``.
"""

from __future__ import annotations

import logging
import multiprocessing
import resource
import time
from collections.abc import Iterator
from typing import Any

from rq import Queue

from dedupkit import Deduplicator, EnqueueRequest
from dedupkit.scheduler import ScheduleEntry, Scheduler, shard_of

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


def _quiet_log() -> logging.Logger:
    log = logging.getLogger("benchmarks.batch.tick")
    log.propagate = False
    if not log.handlers:
        log.addHandler(logging.NullHandler())
    log.setLevel(logging.INFO)
    return log


def _shard_tick(url: str, shard: int, shards: int, keys: int, start_at: float) -> dict[str, Any]:
    """One process of a sharded tick: a Scheduler named after its shard, over the keys
    ``shard_of`` gives it, started at ``start_at`` (time.time) with the others."""
    conn = c.connect(url)
    dedup = Deduplicator(Queue("bench", connection=conn))

    def source() -> Iterator[ScheduleEntry]:
        return (ScheduleEntry(f"tick{i}", None, process, (i,)) for i in range(keys)
                if shard_of(f"tick{i}", shards) == shard)

    sched = Scheduler(dedup, source, interval=60, batch_size=TICK_CHUNK, leader_lease=False, name=f"shard{shard}",
                      log=_quiet_log())
    time.sleep(max(0.0, start_at - time.time()))
    began = time.time()
    result = sched.tick()
    ended = time.time()
    conn.close()
    assert result.ok and result.errors == 0, result
    return {"began": began, "ended": ended, "admitted": result.admitted, "conflicts": result.skipped}


def sharded_tick(url: str, keys: int, shards: int) -> dict[str, Any]:
    """A tick over ``keys`` keys split over ``shards`` processes (spawned, then started together)."""
    conn = c.connect(url)
    usec0, _ = evalsha_usec(conn)
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(shards) as pool:
        start_at = time.time() + 3.0  # after every process has imported and connected
        parts = pool.starmap(_shard_tick, [(url, i, shards, keys, start_at) for i in range(shards)])
    usec1, _ = evalsha_usec(conn)
    conn.close()
    wall = max(p["ended"] for p in parts) - min(p["began"] for p in parts)
    return {"keys": keys, "precheck": True, "processes": shards, "wall_s": wall, "per_s": keys / wall,
            "admitted": sum(p["admitted"] for p in parts), "conflicts": sum(p["conflicts"] for p in parts),
            "server_s": (usec1 - usec0) / 1e6}


def tick(dedup: Deduplicator, keys: int, precheck: bool) -> dict[str, Any]:
    """One ``Scheduler`` tick over ``keys`` overdue keys in batches of TICK_CHUNK, with or
    without its precheck (a status read per batch; jobs built only for keys read as free).
    Each key's log line is made at INFO into a discarding handler, as in scheduler_tick."""
    conn = dedup.connection

    def source() -> Iterator[ScheduleEntry]:
        return (ScheduleEntry(f"tick{i}", None, process, (i,)) for i in range(keys))

    sched = Scheduler(dedup, source, interval=60, batch_size=TICK_CHUNK, leader_lease=False, precheck=precheck,
                      log=_quiet_log())
    usec0, _ = evalsha_usec(conn)
    result = sched.tick()
    usec1, _ = evalsha_usec(conn)
    assert result.ok and result.errors == 0, result
    server = (usec1 - usec0) / 1e6
    return {"keys": keys, "precheck": precheck, "wall_s": result.duration, "per_s": keys / result.duration,
            "admitted": result.admitted, "conflicts": result.skipped, "server_s": server,
            "client_s": result.duration - server}


def rq_alone(queue: Queue, keys: int) -> dict[str, Any]:
    """RQ's own enqueue_many of ``keys`` jobs of the tick's shape, in batches of TICK_CHUNK."""
    queue.connection.flushdb()
    t0 = time.perf_counter()
    for start in range(0, keys, TICK_CHUNK):
        queue.enqueue_many([Queue.prepare_data(process, (i,)) for i in range(start, min(keys, start + TICK_CHUNK))])
    wall = time.perf_counter() - t0
    return {"keys": keys, "wall_s": wall, "per_s": keys / wall}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--tick-keys", type=int, default=None, help="keys per tick (default 1M; 2k quick)")
    p.add_argument("--tick-only", action="store_true", help="only the scheduler ticks (batch_tick.md)")
    p.add_argument("--tick-processes", type=int, default=1, help="also run the ticks split over N processes")
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
        cases = [] if args.tick_only else [(v, n) for n in sizes for v in ("dedupkit", "rq")]
        for rep in range(reps if cases else 0):
            order = cases[rep % len(cases):] + cases[:rep % len(cases)]
            for variant, n in order:
                r = run_dedupkit(dedup, n) if variant == "dedupkit" else run_rq(queue, n)
                runs.setdefault(f"{variant}:{n}", []).append(r)
        ticks_run: list[dict[str, Any]] = []
        mem = 0
        for precheck in (True, False):
            conn.flushdb()
            ticks_run += [tick(dedup, tick_keys, precheck), tick(dedup, tick_keys, precheck)]
            mem = max(mem, conn.info("memory")["used_memory"])
        sharded: list[dict[str, Any]] = []
        if args.tick_processes > 1:
            conn.flushdb()
            sharded = [sharded_tick(url, tick_keys, args.tick_processes) for _ in range(2)]
        rq_tick = rq_alone(queue, tick_keys)
        conn.flushdb()
        conn.close()
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    rows = []
    summary: dict[str, Any] = {}
    for n in sizes if not args.tick_only else ():
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
    ticks = [[f"{'first (all admitted)' if i % 2 == 0 else 'second (all pending)'}, "
              f"{'precheck' if t['precheck'] else 'no precheck'}", t["keys"], t["per_s"], t["admitted"],
              t["conflicts"], t["wall_s"], t["server_s"]] for i, t in enumerate(ticks_run)]
    ticks += [[f"{'first (all admitted)' if i % 2 == 0 else 'second (all pending)'}, precheck, "
               f"{t['processes']} processes", t["keys"], t["per_s"], t["admitted"], t["conflicts"], t["wall_s"],
               t["server_s"]] for i, t in enumerate(sharded)]
    ticks.append(["RQ's own enqueue_many, same jobs, same batches (no dedup, no scheduler)", rq_tick["keys"],
                  rq_tick["per_s"], rq_tick["keys"], "-", rq_tick["wall_s"], "-"])
    best = max((summary[str(n)]["adm_s"]["median"] for n in summary), default=0.0)
    t_first = ticks_run[0]
    targets = {"ge_25000_adm_s_one_process": best >= 25_000 and t_first["per_s"] >= 25_000,
               "tick_under_60_s": all(t["wall_s"] < 60 for t in ticks_run[:2]) and tick_keys >= 1_000_000}
    if sharded:
        targets[f"tick_under_60_s_{args.tick_processes}_processes"] = (all(t["wall_s"] < 60 for t in sharded)
                                                                       and tick_keys >= 1_000_000)
    if args.tick_only:
        del targets["ge_25000_adm_s_one_process"]
    batch_text = "" if args.tick_only else (
        f"Batch admission (enqueue_many, batch_size=500), {reps} interleaved repetitions\n\n"
        + c.table(["requests per call", "dedupkit adm/s min", "dedupkit adm/s median", "rq.enqueue_many /s median",
                   "x rq", "% Python job building", "% Redis server (scripts)", "% rest (encode, socket, parse)"],
                  rows) + "\n\n")
    text = (batch_text
            + f"Scheduler tick over {tick_keys:,} distinct keys, batches of {TICK_CHUNK:,}, log lines at INFO "
              "into a discarding handler\n\n"
            + c.table(["tick", "keys", "per s", "admitted", "pending (skipped or conflict)", "wall s",
                       "Redis server s (scripts)"], ticks)
            + f"\n\nRedis used_memory after the ticks: {mem / 2**20:,.0f} MiB; client peak RSS {rss_gib:.2f} GiB\n\n"
            + c.table(["target", "met"], [[k, "yes" if v else "no"] for k, v in targets.items()]))
    data = {"machine": machine, "repeat": reps, "sizes": sizes, "summary": summary, "runs": runs,
            "ticks": ticks_run, "sharded_ticks": sharded, "rq_enqueue_many_same_jobs": rq_tick,
            "redis_used_memory": mem, "client_peak_rss_gib": rss_gib, "targets": targets}
    c.write(args, "batch_tick" if args.tick_only else "batch", data, text)
    return data


if __name__ == "__main__":
    main()

"""Contention: 8 processes admitting jobs for 1, 10 and 1,000 keys at once.

    .venv/bin/python -m benchmarks.contention [--quick] [--url URL] [--repeat N] [--procs 8]

The run is a series of rounds. In each round every process waits on a barrier, then
makes its attempts (for 1 and 10 keys: 200 attempts on random keys; for 1,000 keys:
every key once, in its own shuffled order) with dedupkit or with the naive
check-then-enqueue (the variant alternates round by round). No worker runs, so every
admitted job stays queued. After the round the coordinator reads RQ's queue and its
scheduled and started registries and counts, per key, the pending jobs beyond the
first: those are duplicates. Then it flushes the db for the next round.
admissions/s and conflicts/s are totals over all processes divided by the round's
wall time (barrier to barrier).
"""

from __future__ import annotations

import multiprocessing as mp
import random
import time
from collections import Counter
from typing import Any

import redis
from rq import Queue

from dedupkit import Deduplicator

from . import _common as c
from .jobs import process
from .naive import JOB_ID_PREFIX, naive_enqueue

KEYSETS_FULL = (1, 10, 1_000)
KEYSETS_QUICK = (1, 10, 100)
VARIANTS = ("dedupkit", "naive")


def plan(keysets: tuple[int, ...], rounds: int) -> list[tuple[str, int]]:
    return [(VARIANTS[r % 2], k) for k in keysets for r in range(2 * rounds)]


def attempts(nkeys: int, ops: int, rng: random.Random) -> list[int]:
    if nkeys >= ops:
        keys = list(range(nkeys))
        rng.shuffle(keys)
        return keys
    return [rng.randrange(nkeys) for _ in range(ops)]


def worker(url: str, schedule: list[tuple[str, int]], ops: int, seed: int, barrier: Any, results: Any) -> None:
    conn = redis.Redis.from_url(url)
    queue = Queue("bench", connection=conn)
    dedup = Deduplicator(queue)
    rng = random.Random(seed)
    for variant, nkeys in schedule:
        plan_keys = attempts(nkeys, ops, rng)
        barrier.wait()
        admitted = conflicts = 0
        for k in plan_keys:
            if variant == "dedupkit":
                ok = dedup.enqueue(f"user{k}", process, k).admitted
            else:
                ok = naive_enqueue(queue, f"user{k}", process, k) is not None
            admitted += ok
            conflicts += not ok
        results.put((admitted, conflicts))
        barrier.wait()
    conn.close()


def key_of(job_id: str) -> str:
    """The user of a job id: ``job_user7_<micros>`` (dedupkit) or ``email_process_user7_<micros>``."""
    head = job_id.rsplit("_", 1)[0]
    return head.removeprefix(JOB_ID_PREFIX + "_").removeprefix("job_")


def duplicates(queue: Queue) -> tuple[int, int]:
    """(jobs pending, jobs beyond the first per key), read from RQ's queue and registries."""
    ids = queue.get_job_ids() + queue.scheduled_job_registry.get_job_ids() + \
        queue.started_job_registry.get_job_ids()
    per_key = Counter(key_of(i) for i in ids)
    return len(ids), sum(n - 1 for n in per_key.values() if n > 1)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--procs", type=int, default=8)
    args = p.parse_args(argv)
    keysets = KEYSETS_QUICK if args.quick else KEYSETS_FULL
    rounds = c.repeats(args, full=10, quick=1)
    ops = 50 if args.quick else 200
    schedule = plan(keysets, rounds)
    ctx = mp.get_context("fork")
    with c.redis_url(args) as url:
        conn, machine = c.fresh(url)
        queue = Queue("bench", connection=conn)
        barrier = ctx.Barrier(args.procs + 1, timeout=300)
        results = ctx.Queue()
        procs = [ctx.Process(target=worker, args=(url, schedule, ops, 1000 + i, barrier, results), daemon=True)
                 for i in range(args.procs)]
        for proc in procs:
            proc.start()
        rows: list[dict[str, Any]] = []
        for variant, nkeys in schedule:
            barrier.wait()
            t0 = time.perf_counter()
            barrier.wait()
            wall = time.perf_counter() - t0
            got = [results.get(timeout=60) for _ in procs]
            admitted = sum(a for a, _ in got)
            conflicts = sum(b for _, b in got)
            pending, dups = duplicates(queue)
            rows.append({"variant": variant, "keys": nkeys, "wall_s": wall, "admitted": admitted,
                         "conflicts": conflicts, "pending_jobs": pending, "duplicates": dups})
            conn.flushdb()
        for proc in procs:
            proc.join(30)
        conn.close()

    summary: dict[str, Any] = {}
    table_rows = []
    for nkeys in keysets:
        for variant in VARIANTS:
            rs = [r for r in rows if r["variant"] == variant and r["keys"] == nkeys]
            adm_s = [r["admitted"] / r["wall_s"] for r in rs]
            con_s = [r["conflicts"] / r["wall_s"] for r in rs]
            att_s = [(r["admitted"] + r["conflicts"]) / r["wall_s"] for r in rs]
            s = {"attempts_s": c.spread(att_s), "admissions_s": c.spread(adm_s), "conflicts_s": c.spread(con_s),
                 "duplicates_total": sum(r["duplicates"] for r in rs),
                 "rounds_with_duplicates": sum(r["duplicates"] > 0 for r in rs), "rounds": len(rs),
                 "admitted_total": sum(r["admitted"] for r in rs),
                 "pending_matches_admitted": all(r["pending_jobs"] == r["admitted"] for r in rs)}
            summary[f"{variant}:{nkeys}"] = s
            table_rows.append([nkeys, variant, s["attempts_s"]["median"], s["admissions_s"]["median"],
                               s["conflicts_s"]["median"], s["admitted_total"], s["duplicates_total"],
                               f"{s['rounds_with_duplicates']}/{s['rounds']}"])
    targets = {
        "dedupkit_zero_duplicates": all(summary[f"dedupkit:{k}"]["duplicates_total"] == 0 for k in keysets),
        "naive_duplicates_found": any(summary[f"naive:{k}"]["duplicates_total"] > 0 for k in keysets),
    }
    text = (f"Contention: {args.procs} processes, {rounds} rounds per variant and key set, "
            f"{ops} attempts per process per round (every key once for >= {ops} keys)\n\n"
            + c.table(["keys", "variant", "attempts/s median", "admissions/s median", "conflicts/s median",
                       "admitted (all rounds)", "duplicates (all rounds)", "rounds with duplicates"], table_rows)
            + "\n\n" + c.table(["target", "met"], [[k, "yes" if v else "no"] for k, v in targets.items()]))
    data = {"machine": machine, "procs": args.procs, "rounds": rounds, "ops": ops, "summary": summary,
            "rounds_detail": rows, "targets": targets}
    c.write(args, "contention", data, text)
    return data


if __name__ == "__main__":
    main()

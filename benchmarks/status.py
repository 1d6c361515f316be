"""Status cost vs queue depth: dedupkit ``status(key)`` against the naive registry scan.

    .venv/bin/python -m benchmarks.status [--quick] [--url URL] [--repeat N]

For each depth (0, 10k, 100k, 1M other jobs; 0 and 1k in quick mode) one queue holds
that many other jobs, half queued and half scheduled, each with a job hash and a dedupkit
slot (written by a filler script, not timed). All queues are filled first; then every
(depth, variant) block is measured, interleaved, the order rotating each repetition:
  dedupkit_pending  status() of a key whose job is queued (the common answer)
  dedupkit_free     status() of a key with no job
  naive             benchmarks.naive.naive_find_pending of a user with no job, the check
                    the seed ran before every enqueue (reads every id, O(depth))
"""

from __future__ import annotations

import time
from typing import Any

import redis
from rq import Queue

from dedupkit import Deduplicator

from . import _common as c
from .jobs import process
from .naive import naive_find_pending

DEPTHS_FULL = (0, 10_000, 100_000, 1_000_000)
DEPTHS_QUICK = (0, 1_000)
FILL_CHUNK = 20_000

# Writes other jobs as the scripts and RQ would leave them: job hash, queue entry or
# scheduled entry, dedupkit slot. Server-side, so a million takes seconds.
FILL_LUA = """
local slots, queue, scheduled, queues = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local job_prefix, first, last, origin, future = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5]
-- job ids unique per queue: the job hashes of all queues share one key space
redis.call('SADD', queues, queue)
for i = first, last do
  local id = 'email_process_filler' .. origin .. 'n' .. i .. '_0'
  local status = (i % 2 == 0) and 'queued' or 'scheduled'
  redis.call('HSET', job_prefix .. id, 'status', status, 'origin', origin, 'created_at', '2025-01-01T00:00:00.000000Z',
             'enqueued_at', '2025-01-01T00:00:00.000000Z', 'description', 'filler', 'timeout', '180')
  if status == 'queued' then
    redis.call('RPUSH', queue, id)
  else
    redis.call('ZADD', scheduled, future, id)
  end
  redis.call('HSET', slots, 'filler' .. i, id)
end
return last - first + 1
"""


def fill(conn: redis.Redis, dedup: Deduplicator, have: int, want: int) -> None:
    script = conn.register_script(FILL_LUA)
    k = dedup.keys
    future = int(time.time()) + 365 * 86400
    for start in range(have, want, FILL_CHUNK):
        last = min(want, start + FILL_CHUNK) - 1
        script(keys=[k.slots, k.queue, k.scheduled, k.queues],
               args=[k.job_prefix, start, last, dedup.queue.name, future])


def time_calls(fn: Any, calls: int) -> list[float]:
    lat = []
    for _ in range(calls):
        t0 = time.perf_counter_ns()
        fn()
        lat.append((time.perf_counter_ns() - t0) / 1000)
    return lat


def naive_calls(depth: int, quick: bool) -> int:
    if quick:
        return 20
    return max(2, min(300, 2_000_000 // max(depth, 1)))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = c.parser(__doc__.splitlines()[0]).parse_args(argv)
    depths = DEPTHS_QUICK if args.quick else DEPTHS_FULL
    reps = c.repeats(args)
    calls = 200 if args.quick else 2000
    with c.redis_url(args) as url:
        conn, machine = c.fresh(url)
        # One queue per depth, all filled first, so the depths are measured interleaved
        # (a load change on a shared machine then hits every depth alike).
        variants: dict[tuple[int, str], tuple[Any, int]] = {}
        for depth in depths:
            queue = Queue(f"bench-d{depth}", connection=conn)
            dedup = Deduplicator(queue)
            assert dedup.enqueue("probe-user", process, 0).admitted
            fill(conn, dedup, 0, depth)
            assert dedup.status("probe-user").has_queued_job
            assert not dedup.status("nobody").pending
            assert naive_find_pending(queue, "nobody") is None
            variants[(depth, "dedupkit_pending")] = (lambda d=dedup: d.status("probe-user"), calls)
            variants[(depth, "dedupkit_free")] = (lambda d=dedup: d.status("nobody"), calls)
            variants[(depth, "naive")] = (lambda q=queue: naive_find_pending(q, "nobody"),
                                          naive_calls(depth, args.quick))
        for fn, _ in variants.values():
            fn()  # warm
        cases = list(variants)
        results: dict[str, dict[str, list[dict[str, float]]]] = {str(d): {} for d in depths}
        for rep in range(reps):
            shift = rep * 5 % len(cases)
            for depth, v in cases[shift:] + cases[:shift]:
                fn, n = variants[(depth, v)]
                lat = time_calls(fn, n)
                results[str(depth)].setdefault(v, []).append(
                    {"p50_us": c.percentile(lat, 50), "p99_us": c.percentile(lat, 99),
                     "mean_us": sum(lat) / n, "calls": n})
            print(f"repetition {rep + 1}/{reps} done", flush=True)
        mem = conn.info("memory")["used_memory"]
        conn.flushdb()
        conn.close()

    def med(depth: int, v: str, m: str = "p50_us") -> float:
        return float(c.spread([r[m] for r in results[str(depth)][v]])["median"])

    def low(depth: int, v: str) -> float:
        return float(c.spread([r["p50_us"] for r in results[str(depth)][v]])["min"])

    top = depths[-1]
    rows = [[d, low(d, "dedupkit_pending"), med(d, "dedupkit_pending"), med(d, "dedupkit_pending", "p99_us"),
             med(d, "dedupkit_free"), med(d, "naive"), c.ratio(med(d, "naive"), med(d, "dedupkit_pending"))]
            for d in depths]
    ratios = {
        f"dedupkit_pending_p50_{top}_vs_0_median": c.ratio(med(top, "dedupkit_pending"), med(0, "dedupkit_pending")),
        f"dedupkit_pending_p50_{top}_vs_0_min": c.ratio(low(top, "dedupkit_pending"), low(0, "dedupkit_pending")),
        f"dedupkit_free_p50_{top}_vs_0_median": c.ratio(med(top, "dedupkit_free"), med(0, "dedupkit_free")),
        f"naive_p50_{top}_vs_0_median": c.ratio(med(top, "naive"), med(0, "naive")),
    }
    targets = {f"dedupkit_flat_le_1.2x_0_to_{top}": ratios[f"dedupkit_pending_p50_{top}_vs_0_median"] <= 1.2,
               "naive_grows_with_depth": med(top, "naive") > 2 * med(0, "naive")}
    text = (f"Status cost vs depth (other jobs, half queued, half scheduled), {reps} interleaved repetitions; "
            f"{calls} dedupkit calls per block, naive fewer at depth\n\n"
            + c.table(["other jobs", "dedupkit p50 us min", "dedupkit p50 us median", "dedupkit p99 us median",
                       "dedupkit free-key p50 us", "naive scan p50 us", "naive / dedupkit"], rows)
            + "\n\n" + c.table(["ratio", "value"], [[k, v] for k, v in ratios.items()])
            + f"\n\nRedis used_memory with all depths filled: {mem / 2**20:,.0f} MiB\n\n"
            + c.table(["target", "met"], [[k, "yes" if v else "no"] for k, v in targets.items()]))
    data = {"machine": machine, "repeat": reps, "depths": depths, "results": results, "ratios": ratios,
            "targets": targets, "redis_used_memory_at_top": mem}
    c.write(args, "status", data, text)
    return data


if __name__ == "__main__":
    main()

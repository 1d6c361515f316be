"""Memory: Redis bytes per pending key beyond RQ's own job, and after many finished keys.

    .venv/bin/python -m benchmarks.memory [--quick] [--url URL] [--keys N]

1. Pending keys: N keys admitted with ``enqueue_many``; ``MEMORY USAGE ... SAMPLES 0``
   of every key in dedupkit's namespace (slots hash, gc cursor, stats, ...) divided by N, next to the
   average RQ job hash (sampled) for scale. Cross-check: ``used_memory`` after the same N
   jobs written by RQ's ``Queue.enqueue_many`` (no dedup) vs by dedupkit, per job.
2. Admitted-and-finished keys (full mode: 1,000,000): N distinct keys admitted, then every
   job finished as a worker would leave it with ``result_ttl=0`` (job hash deleted, queue
   emptied; done server-side). What is left of dedupkit: slots, bytes.
   Then the same N keys admitted again (a second scheduler tick): slots are per key, so
   their number must stay N, not grow to 2N. Then the incremental gc (``gc_budget`` slots
   per request, a walk through the slots hash; here a Deduplicator with gc_min_age=0, so
   walks follow each other at once):
   how many stale slots single ``enqueue`` calls of new keys sweep.
3. Bounded history: every key that ever ran leaves a last-run record (``<ns>:last:<q>``,
   indexed by its end in ``<ns>:history:<q>``). After part 2 the N keys' records are
   written (``sweep`` records the second tick's runs); then a Deduplicator with a short
   ``retention`` (``--retention`` seconds, standing in for the default 7 days) waits it
   out and admits N new distinct keys: each script call drops up to gc's budget plus
   one per request of the expired records, so the old N are gone by the end, while the
   new keys' jobs are pending (no records yet). Bytes of both keys before and after.
"""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import redis
from rq import Queue

from dedupkit import Deduplicator, EnqueueRequest

from . import _common as c
from .jobs import process

CHUNK = 10_000

FINISH_LUA = """
-- Finish up to ARGV[2] queued jobs: pop the id, delete the job hash (result_ttl=0).
local n = 0
for _ = 1, tonumber(ARGV[2]) do
  local id = redis.call('LPOP', KEYS[1])
  if not id then break end
  redis.call('DEL', ARGV[1] .. id)
  n = n + 1
end
return n
"""


def admit(dedup: Deduplicator, prefix: str, n: int) -> None:
    for start in range(0, n, CHUNK):
        out = dedup.enqueue_many([EnqueueRequest(f"{prefix}{i}", process, (i,))
                                  for i in range(start, min(n, start + CHUNK))])
        assert all(a.admitted for a in out), "every key must be admitted"


def usage(conn: redis.Redis, key: str) -> int:
    return int(conn.memory_usage(key, samples=0) or 0)


def ours(conn: redis.Redis, dedup: Deduplicator) -> dict[str, int]:
    """MEMORY USAGE of every key in dedupkit's namespace (found with SCAN, so keys the
    core adds later are counted too), with their total."""
    k = dedup.keys
    sizes = {key.decode(): usage(conn, key.decode())
             for key in conn.scan_iter(match=f"{dedup.namespace}:*", count=1000)}
    return {"keys": sizes, "total": sum(sizes.values()), "slots": sizes.get(k.slots, 0), "gc": sizes.get(k.gc, 0),
            "slot_fields": int(conn.hlen(k.slots))}


def history(conn: redis.Redis, dedup: Deduplicator) -> dict[str, int]:
    """The last-run records and their index: counts, their bytes, and all of dedupkit's."""
    k = dedup.keys
    return {"records": int(conn.hlen(k.last)), "indexed": int(conn.zcard(k.history)),
            "bytes": usage(conn, k.last) + usage(conn, k.history), "total": ours(conn, dedup)["total"]}


def server_time(conn: redis.Redis) -> float:
    seconds, micros = conn.time()
    return float(seconds) + micros / 1e6


def used(conn: redis.Redis) -> int:
    return int(conn.info("memory")["used_memory"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = c.parser(__doc__.splitlines()[0])
    p.add_argument("--keys", type=int, default=None, help="pending keys in part 1 (default 100k; 2k quick)")
    p.add_argument("--finished-keys", type=int, default=None, help="keys in part 2 (default 1M; 2k quick)")
    p.add_argument("--retention", type=float, default=2.0, help="seconds of retention in part 3 (default 2)")
    args = p.parse_args(argv)
    n = args.keys or (2_000 if args.quick else 100_000)
    m = args.finished_keys or (2_000 if args.quick else 1_000_000)
    sweep_calls = 200 if args.quick else 5_000
    with c.redis_url(args) as url:
        conn, machine = c.fresh(url)
        queue = Queue("bench", connection=conn)
        dedup = Deduplicator(queue)

        # 1. pending keys
        base = used(conn)
        admit(dedup, "user", n)
        after_dedup = used(conn)
        pend = ours(conn, dedup)
        ids = [x.decode() for x in conn.lrange(queue.key, 0, 199)]
        job_hash = sum(usage(conn, dedup.keys.job_key(i)) for i in ids) / len(ids)
        conn.flushdb()
        base_rq = used(conn)
        for start in range(0, n, CHUNK):
            queue.enqueue_many([Queue.prepare_data(process, (i,)) for i in range(start, min(n, start + CHUNK))])
        after_rq = used(conn)
        rq_ids = [x.decode() for x in conn.lrange(queue.key, 0, 199)]
        rq_job_hash = sum(usage(conn, dedup.keys.job_key(i)) for i in rq_ids) / len(rq_ids)
        conn.flushdb()
        ours_bytes = pend["total"]
        part1 = {"keys": n, "dedupkit_bytes": pend, "dedupkit_bytes_per_key": ours_bytes / n,
                 "rq_job_hash_bytes_dedupkit_job": job_hash, "rq_job_hash_bytes_rq_job": rq_job_hash,
                 "used_memory_per_job_dedupkit": (after_dedup - base) / n,
                 "used_memory_per_job_rq": (after_rq - base_rq) / n}

        # 2. admitted-and-finished keys
        t0 = time.perf_counter()
        admit(dedup, "tick", m)
        admit_s = time.perf_counter() - t0
        finish = conn.register_script(FINISH_LUA)
        while finish(keys=[queue.key], args=[dedup.keys.job_prefix, 50_000]):
            pass
        finished = ours(conn, dedup)
        finished_used = used(conn)
        t1 = time.perf_counter()
        admit(dedup, "tick", m)  # second tick: same keys, all free again
        second_s = time.perf_counter() - t1
        second = ours(conn, dedup)
        while finish(keys=[queue.key], args=[dedup.keys.job_prefix, 50_000]):
            pass
        sweeper = Deduplicator(queue, gc_min_age=0)
        swept_before = sweeper.stats().get("swept", 0)
        for i in range(sweep_calls):
            sweeper.enqueue(f"fresh{i}", process, i)
        swept = ours(conn, dedup)
        swept_now = sweeper.stats().get("swept", 0) - swept_before

        # 3. bounded history
        dedup.sweep(batch_size=1000)  # every ended run recorded as its key's last
        recorded = history(conn, dedup)
        bounded = Deduplicator(queue, retention=timedelta(seconds=args.retention))
        wait_out = max(0.0, max((s for _, s in conn.zrange(dedup.keys.history, -1, -1, withscores=True)),
                                default=0.0) + args.retention - server_time(conn)) + 0.1
        time.sleep(wait_out)
        t2 = time.perf_counter()
        admit(bounded, "later", m)
        third_s = time.perf_counter() - t2
        trimmed = history(conn, dedup)
        expired = bounded.stats().get("expired", 0)
        conn.flushdb(asynchronous=True)  # millions of keys: a blocking FLUSHDB can outlast the socket timeout
        conn.close()
    part2 = {"keys": m, "admit_s": admit_s, "second_tick_s": second_s, "after_finish": finished,
             "used_memory_after_finish": finished_used,
             "dedupkit_bytes_per_finished_key": finished["total"] / m,
             "after_second_tick": second, "sweep_calls": sweep_calls, "after_sweep": swept,
             "swept_total": swept_now, "swept_per_call": swept_now / sweep_calls}
    calls = -(-m // 500)  # enqueue_many's default batch_size: one script call per 500 requests
    part3 = {"keys": m, "retention_s": args.retention, "recorded": recorded, "after_retention_and_new_keys": trimmed,
             "new_keys_s": third_s, "expired": expired, "calls": calls}
    targets = {"slots_bounded_by_distinct_keys": second["slot_fields"] == m,
               "gc_sweeps_stale_slots": part2["swept_total"] > 0,
               "history_bounded_after_retention": trimmed["records"] == 0 and expired >= recorded["records"]}

    rows1 = [*([key, size, size / n] for key, size in sorted(pend["keys"].items())),
             ["dedupkit total (beyond RQ's job)", ours_bytes, ours_bytes / n],
             ["RQ job hash, dedupkit-written (avg of 200)", "", job_hash],
             ["RQ job hash, Queue.enqueue_many (avg of 200)", "", rq_job_hash],
             ["used_memory per job, dedupkit", after_dedup - base, part1["used_memory_per_job_dedupkit"]],
             ["used_memory per job, RQ enqueue_many", after_rq - base_rq, part1["used_memory_per_job_rq"]]]
    rows2 = [["after 1st tick + all finished", finished["slot_fields"],
              finished["total"], finished["total"] / m],
             ["after 2nd tick over the same keys", second["slot_fields"],
              second["total"], second["total"] / m],
             [f"after all finished + {sweep_calls:,} single enqueues of new keys (gc_min_age=0)",
              swept["slot_fields"], swept["total"], ""]]
    text = (f"Memory per pending key, {n:,} keys (MEMORY USAGE SAMPLES 0)\n\n"
            + c.table(["what", "bytes", "bytes per key"], rows1)
            + f"\n\nAfter {m:,} admitted-and-finished keys (result_ttl=0: job hashes deleted)\n\n"
            + c.table(["state", "slot fields", "dedupkit bytes (all its keys)", "bytes per key"], rows2)
            + f"\n\nThe gc swept {part2['swept_total']:,} stale slots in {sweep_calls:,} calls "
              f"({part2['swept_per_call']:.2f} per call); admitting {m:,} keys took {admit_s:.1f} s, "
              f"the second tick {second_s:.1f} s.\n\n"
            + f"\n\nBounded history: last-run records of {m:,} keys that ran, then the retention "
              f"({args.retention:g} s here; 7 days by default) passed and {m:,} new distinct keys were admitted "
              f"({calls:,} script calls)\n\n"
            + c.table(["state", "last-run records", "history members", "last + history bytes",
                       "dedupkit bytes (all its keys)"],
                      [["all runs recorded", recorded["records"], recorded["indexed"], recorded["bytes"],
                        recorded["total"]],
                       ["retention passed + new keys admitted", trimmed["records"], trimmed["indexed"],
                        trimmed["bytes"], trimmed["total"]]])
            + f"\n\n{expired:,} expired records dropped by those calls ({expired / calls:.0f} per call, at most "
              f"gc's budget + one per request: 600); admitting the {m:,} new keys took {third_s:.1f} s "
              f"(part 2's first tick: {admit_s:.1f} s). The last column, after: the slots of "
              "the new keys' pending jobs.\n\n"
            + c.table(["target", "met"], [[k, "yes" if v else "no"] for k, v in targets.items()]))
    data = {"machine": machine, "pending": part1, "finished": part2, "history": part3, "targets": targets}
    c.write(args, "memory", data, text)
    return data


if __name__ == "__main__":
    main()

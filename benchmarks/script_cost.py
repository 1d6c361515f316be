"""Script cost on the server: usec per call of each dedupkit script, from SLOWLOG and
INFO commandstats, and the commands each runs inside Redis.

    .venv/bin/python -m benchmarks.script_cost [--quick] [--url URL] [--repeat N]

Scenarios, interleaved, each alone between CONFIG RESETSTAT and a commandstats read
(``slowlog-log-slower-than 0`` logs every call with its duration):
  trivial          ``return 1``: the cost of running any script at all
  payload_only     ``return 1`` sent admit_new's KEYS and ARGV: the cost of handing a
                   request's ~60 arguments to Lua
  helpers_only     ``_common.lua`` then ``return 1``, same payload: that plus defining
                   the shared helpers (what every dedupkit script pays before its work)
  minimal_dedup    the least any one-script deduplicating enqueue can do, sent admit_new's
                   payload: HGET the slot; free: HSET the job hash, SADD rq:queues, RPUSH,
                   HSET the slot (no clock, no collision check, no look at whether the
                   holder is still pending: not a correct deduplicator, a floor)
  admit_new        enqueue() of a fresh key (admitted)
  admit_no_housekeeping  admit.lua as shipped but cut before its housekeeping (the gc walk,
                   the history trim, the counters), sent admit_new's payload: what the
                   per-call housekeeping costs, by difference
  admit_conflict   enqueue() of a key whose job is queued (conflict)
  admit_batch_500  enqueue_many() of 500 fresh keys: one script call
  status_pending   status() of a key whose job is queued
  status_free      status() of a key with no slot
  cancel_queued    cancel() of a key whose job is queued
  rq_enqueue       plain queue.enqueue(): the server time of its 8 commands, for scale
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import redis
from rq import Queue

from dedupkit import Deduplicator, EnqueueRequest
from dedupkit.scripts import source

from . import _common as c
from .jobs import process

SCENARIOS = ("trivial", "payload_only", "helpers_only", "minimal_dedup", "admit_no_housekeeping", "admit_new",
             "admit_conflict",
             "admit_batch_500", "status_pending", "status_free", "cancel_queued", "rq_enqueue")


# admit.lua's layout (dedupkit.protocol.ADMIT): KEYS slots=1, queue=5, queues=6, the job
# hash after the 13 fixed keys; ARGV: 11 fixed, then per request 8 fields and the pairs.
MINIMAL_DEDUP = """
local pos = 12
local field, job_id, nfields = ARGV[pos], ARGV[pos + 1], tonumber(ARGV[pos + 7])
if redis.call('HGET', KEYS[1], field) then
  return 0
end
redis.call('HSET', KEYS[14], unpack(ARGV, pos + 8, pos + 7 + 2 * nfields))
redis.call('SADD', KEYS[6], KEYS[5])
redis.call('RPUSH', KEYS[5], job_id)
redis.call('HSET', KEYS[1], field, job_id)
return 1
"""


class Scenario:
    def __init__(self, conn: redis.Redis, dedup: Deduplicator, queue: Queue) -> None:
        self.conn, self.dedup, self.queue = conn, dedup, queue
        self.trivial = conn.register_script("return 1")
        self.helpers = conn.register_script(source("_common.lua") + "\nreturn 1")
        self.minimal = conn.register_script(MINIMAL_DEDUP)
        admit = source("admit.lua")
        cut = admit.index("-- Incremental garbage collection")
        self.no_housekeeping = conn.register_script(source("_common.lua") + "\n" + admit[:cut] + "return replies\n")
        self.seq = 0

    def payload(self, key: str) -> tuple[list[str], list[Any]]:
        """admit.lua's KEYS and ARGV for enqueue(key, process, 0), as Deduplicator sends them."""
        d = self.dedup
        return d.admit_request([d._prepare(EnqueueRequest(key, process, (0,)))])

    def setup(self, name: str, n: int) -> Callable[[], object]:
        """Untimed preparation; returns the operation to repeat n times."""
        d, q = self.dedup, self.queue
        self.seq += 1
        tag = f"s{self.seq}_"
        if name in ("admit_conflict", "status_pending", "cancel_queued"):
            d.enqueue_many([EnqueueRequest(f"{tag}{i}", process, (i,)) for i in range(n)])
        it = iter(range(n))
        if name == "trivial":
            return lambda: self.trivial()
        if name in ("payload_only", "helpers_only", "minimal_dedup", "admit_no_housekeeping"):
            script = {"payload_only": self.trivial, "helpers_only": self.helpers, "minimal_dedup": self.minimal,
                      "admit_no_housekeeping": self.no_housekeeping}[name]
            payloads = iter([self.payload(f"{tag}p{i}") for i in range(n)])

            def send() -> object:
                keys, args = next(payloads)
                return script(keys=keys, args=args)
            return send
        if name == "admit_new":
            return lambda: d.enqueue(f"{tag}new{next(it)}", process, 0)
        if name == "admit_conflict":
            return lambda: d.enqueue(f"{tag}{next(it)}", process, 0)
        if name == "admit_batch_500":
            batches = iter([[EnqueueRequest(f"{tag}b{j}_{i}", process, (i,)) for i in range(500)]
                            for j in range(n)])
            return lambda: d.enqueue_many(next(batches))
        if name == "status_pending":
            return lambda: d.status(f"{tag}{next(it)}")
        if name == "status_free":
            return lambda: d.status(f"{tag}none{next(it)}")
        if name == "cancel_queued":
            return lambda: d.cancel(f"{tag}{next(it)}")
        if name == "rq_enqueue":
            return lambda: q.enqueue(process, 0)
        raise ValueError(name)


def measure(conn: redis.Redis, op: Callable[[], object], n: int) -> dict[str, Any]:
    conn.config_resetstat()
    conn.slowlog_reset()
    for _ in range(n):
        op()
    stats = c.commandstats(conn)
    log = conn.slowlog_get(n + 50)
    for name in ("config|resetstat", "config", "slowlog|reset", "slowlog", "info"):
        stats.pop(name, None)
    evalsha = stats.pop("evalsha", {"calls": 0, "usec": 0})
    inner = {k: int(v["calls"]) for k, v in stats.items()}
    durations = [int(e["duration"]) for e in log
                 if e["command"].split(b" ", 1)[0].upper() in (b"EVALSHA", b"EVAL")]
    all_usec = sum(float(v["usec"]) for v in stats.values())
    return {
        "calls": int(evalsha["calls"]),
        "usec_per_call_commandstats": float(evalsha["usec"]) / evalsha["calls"] if evalsha["calls"] else float("nan"),
        "slowlog_median_us": statistics.median(durations) if durations else float("nan"),
        "slowlog_p99_us": c.percentile(durations, 99) if durations else float("nan"),
        "inner_commands_per_op": {k: v / n for k, v in sorted(inner.items())},
        "inner_commands_total_per_op": sum(inner.values()) / n,
        "non_script_usec_per_op": all_usec / n,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = c.parser(__doc__.splitlines()[0]).parse_args(argv)
    reps = c.repeats(args)
    n = 100 if args.quick else 2000
    with c.redis_url(args) as url:
        conn, machine = c.fresh(url)
        old = conn.config_get("slowlog-*")
        conn.config_set("slowlog-log-slower-than", 0)
        conn.config_set("slowlog-max-len", n + 100)
        queue = Queue("bench", connection=conn)
        dedup = Deduplicator(queue)
        sc = Scenario(conn, dedup, queue)
        for name in SCENARIOS:  # warm: every script loaded
            op = sc.setup(name, 2)
            op()
        runs: dict[str, list[dict[str, Any]]] = {s: [] for s in SCENARIOS}
        for rep in range(reps):
            for name in SCENARIOS[rep % len(SCENARIOS):] + SCENARIOS[:rep % len(SCENARIOS)]:
                count = max(2, n // 50) if name == "admit_batch_500" else n
                conn.flushdb()
                op = sc.setup(name, count)
                runs[name].append(measure(conn, op, count))
        for key, value in old.items():
            conn.config_set(key, value)
        conn.flushdb()
        conn.close()

    summary: dict[str, Any] = {}
    rows = []
    for name in SCENARIOS:
        rs = runs[name]
        s = {m: c.spread([r[m] for r in rs]) for m in ("usec_per_call_commandstats", "slowlog_median_us",
                                                       "slowlog_p99_us", "non_script_usec_per_op",
                                                       "inner_commands_total_per_op")}
        s["inner_commands_per_op"] = rs[-1]["inner_commands_per_op"]
        summary[name] = s
        if name == "rq_enqueue":
            rows.append([name, "-", s["non_script_usec_per_op"]["median"], "-", "-",
                         s["inner_commands_total_per_op"]["median"], "(8 client commands, no script)"])
            continue
        per_req = s["usec_per_call_commandstats"]["median"] / (500 if name == "admit_batch_500" else 1)
        rows.append([name, s["usec_per_call_commandstats"]["min"], s["usec_per_call_commandstats"]["median"],
                     s["slowlog_median_us"]["median"], s["slowlog_p99_us"]["median"],
                     s["inner_commands_total_per_op"]["median"], f"{per_req:.2f} us per request"])
    inner_rows = [[name, ", ".join(f"{k} {v:g}" for k, v in summary[name]["inner_commands_per_op"].items())]
                  for name in SCENARIOS]
    med = {name: summary[name]["usec_per_call_commandstats"]["median"] for name in SCENARIOS}
    rq_usec = summary["rq_enqueue"]["non_script_usec_per_op"]["median"]
    ratios = {
        "admit_new_vs_rq_enqueue": c.ratio(med["admit_new"], rq_usec),
        "admit_batch_per_request_vs_rq_enqueue": c.ratio(med["admit_batch_500"] / 500, rq_usec),
        "admit_new_share_payload_only": c.ratio(med["payload_only"], med["admit_new"]),
        "minimal_dedup_vs_rq_enqueue": c.ratio(med["minimal_dedup"], rq_usec),
        "admit_no_housekeeping_vs_rq_enqueue": c.ratio(med["admit_no_housekeeping"], rq_usec),
        "admit_new_share_housekeeping": c.ratio(med["admit_new"] - med["admit_no_housekeeping"], med["admit_new"]),
        "admit_new_share_helpers_only": c.ratio(med["helpers_only"], med["admit_new"]),
    }
    targets = {"admit_new_le_1.5x_rq_enqueue": ratios["admit_new_vs_rq_enqueue"] <= 1.5,
               "admit_batch_per_request_le_1.5x_rq_enqueue": ratios["admit_batch_per_request_vs_rq_enqueue"] <= 1.5}
    text = (f"Script cost on the server, {n} calls per scenario (batch: {max(2, n // 50)} calls of 500), "
            f"{reps} interleaved repetitions\n\n"
            + c.table(["scenario", "usec/call min (commandstats)", "usec/call median (commandstats)",
                       "slowlog median us", "slowlog p99 us", "commands inside per call", "note"], rows)
            + "\n\nCommands run per call (inside the script, from commandstats)\n\n"
            + c.table(["scenario", "commands"], inner_rows)
            + "\n\n" + c.table(["ratio (medians)", "value"], [[k, v] for k, v in ratios.items()])
            + "\n\n" + c.table(["target", "met"], [[k, "yes" if v else "no"] for k, v in targets.items()]))
    data = {"machine": machine, "repeat": reps, "calls": n, "summary": summary, "runs": runs, "ratios": ratios,
            "targets": targets}
    c.write(args, "script_cost", data, text)
    return data


if __name__ == "__main__":
    main()

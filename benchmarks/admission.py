"""Admission throughput, latency and Redis requests per admission, single client, distinct keys.

    .venv/bin/python -m benchmarks.admission [--quick] [--url URL] [--repeat N]

Variants, interleaved (the order rotates every repetition), each block on an empty db:
  dedupkit      Deduplicator.enqueue(key, func, i)
  rq            queue.enqueue(func, i)
  rq_unique     queue.enqueue(func, i, job_id=..., unique=True)   (RQ 2.8+, per job id)
  naive         benchmarks.naive.naive_enqueue (scan queue + registries, then enqueue);
                its scan grows with the queue, which fills from 0 to n during a block
  evalsha_floor a trivial script (``return 1``) through the same redis-py client: the floor
  evalsha_args  the same trivial script sent dedupkit's full KEYS/ARGV payload (built by
                ``DedupCore.admit_request``, exactly what one enqueue sends)
  evalsha_packed the same trivial script sent the same KEYS and the same ARGV bytes packed
                into ONE argument (length-prefixed, packed in Python on every call): what
                shipping the job hash as one packed argument could gain at most, before
                the script spends anything unpacking it
  dedupkit_pure_py, rq_pure_py  dedupkit and plain RQ again through a redis-py client that
                encodes and parses in Python (hiredis, a dependency, is bypassed): its gain
Requests per admission are counted with MONITOR (commands tagged "lua" apart) and round
trips by counting socket writes. Where dedupkit's time goes: a split of one enqueue (Python
job building, encoding the request, round trip and Redis server time, reply parsing) and
a cProfile of the loop (results/admission_profile.txt).
"""

from __future__ import annotations

import cProfile
import io
import pstats
import time
from collections.abc import Callable
from typing import Any

import redis
from rq import Queue

from dedupkit import Deduplicator
from dedupkit import admission as dk_admission

from . import _common as c
from .jobs import process
from .naive import naive_enqueue

VARIANTS = ("dedupkit", "rq", "rq_unique", "naive", "evalsha_floor", "evalsha_args", "evalsha_packed",
            "dedupkit_pure_py", "rq_pure_py")


def pack(args: list[Any]) -> bytes:
    """ARGV as one length-prefixed blob ("<len>:<bytes>" each), the way a packed argument
    would carry it; str/int/float encoded as redis-py encodes them."""
    parts = []
    for a in args:
        b = a if isinstance(a, bytes) else (repr(a) if isinstance(a, float) else str(a)).encode()
        parts.append(b"%d:%s" % (len(b), b))
    return b"".join(parts)


class Bench:
    def __init__(self, conn: redis.Redis, pure_py: redis.Redis) -> None:
        self.conn = conn
        self.queue = Queue("bench", connection=conn)
        self.dedup = Deduplicator(self.queue)
        self.pure_queue = Queue("bench", connection=pure_py)
        self.pure_dedup = Deduplicator(self.pure_queue)
        self.floor = conn.register_script("return 1")
        prepared = self.dedup._prepare(_request("payload", 0))
        self.payload_keys, self.payload_args = self.dedup.admit_request([prepared])
        self.seq = 0

    def op(self, variant: str) -> Callable[[], object]:
        q, d = self.queue, self.dedup

        def dedupkit(d: Deduplicator = d) -> object:
            self.seq += 1
            admission = d.enqueue(f"user{self.seq}", process, self.seq)
            assert admission.admitted
            return admission

        def rq(q: Queue = q) -> object:
            self.seq += 1
            return q.enqueue(process, self.seq)

        def rq_unique() -> object:
            self.seq += 1
            return q.enqueue(process, self.seq, job_id=f"email_process_{self.seq}", unique=True)

        def naive() -> object:
            self.seq += 1
            job = naive_enqueue(q, self.seq, process, self.seq)
            assert job is not None
            return job

        def evalsha_floor() -> object:
            return self.floor()

        def evalsha_args() -> object:
            return self.floor(keys=self.payload_keys, args=self.payload_args)

        def evalsha_packed() -> object:
            return self.floor(keys=self.payload_keys, args=[pack(self.payload_args)])

        return {"dedupkit": dedupkit, "rq": rq, "rq_unique": rq_unique, "naive": naive,
                "evalsha_floor": evalsha_floor, "evalsha_args": evalsha_args, "evalsha_packed": evalsha_packed,
                "dedupkit_pure_py": lambda: dedupkit(self.pure_dedup), "rq_pure_py": lambda: rq(self.pure_queue),
                }[variant]


def _request(key: str, i: int) -> Any:
    from dedupkit import EnqueueRequest

    return EnqueueRequest(key, process, (i,))


def run_block(bench: Bench, variant: str, n: int) -> dict[str, float]:
    bench.conn.flushdb()
    op = bench.op(variant)
    for _ in range(min(20, n)):  # warm: scripts loaded, connection open
        op()
    bench.conn.flushdb()
    lat: list[float] = []
    clock = time.perf_counter_ns
    start = clock()
    for _ in range(n):
        t0 = clock()
        op()
        lat.append((clock() - t0) / 1000)
    total = (clock() - start) / 1e9
    return {"ops_s": n / total, "p50_us": c.percentile(lat, 50), "p99_us": c.percentile(lat, 99),
            "mean_us": sum(lat) / n}


class _TimedScripts:
    """Stands in for the Deduplicator's Scripts: sends the same EVALSHA by hand on one
    connection and times packing the request apart from the round trip."""

    def __init__(self, real: Any, conn: redis.Redis) -> None:
        self.real = real
        self.connection = conn.connection_pool.get_connection()
        self.pack_ns = self.round_trip_ns = 0

    def call(self, spec: Any, keys: list[Any], args: list[Any]) -> Any:
        sha = self.real._scripts[spec.name].sha
        t0 = time.perf_counter_ns()
        packed = self.connection.pack_command("EVALSHA", sha, len(keys), *keys, *args)
        t1 = time.perf_counter_ns()
        self.connection.send_packed_command(packed)
        reply = self.connection.read_response()
        self.round_trip_ns += time.perf_counter_ns() - t1
        self.pack_ns += t1 - t0
        return reply


def split_dedupkit(bench: Bench, n: int) -> dict[str, float]:
    """Where one Deduplicator.enqueue spends its time: building the job in Python
    (``_prepare``; and for comparison the same with every job built from scratch, no
    template), encoding the EVALSHA request (redis-py ``pack_command``), the round
    trip (of which Redis server time, from commandstats), and turning the reply into an
    Admission (``_admit`` minus the script call)."""
    bench.conn.flushdb()
    d = bench.dedup
    real = d._scripts
    timed = _TimedScripts(real, bench.conn)
    d._scripts = timed  # type: ignore[assignment]
    prep = admit = 0
    clock = time.perf_counter_ns
    before = c.commandstats(bench.conn).get("evalsha", {}).get("usec", 0)
    try:
        for i in range(n):
            t0 = clock()
            p = d._prepare(_request(f"split{i}", i))
            t1 = clock()
            admission = d._admit([p])[0]
            prep += t1 - t0
            admit += clock() - t1
            assert admission.admitted
    finally:
        d._scripts = real
        bench.conn.connection_pool.release(timed.connection)
    server_us = (c.commandstats(bench.conn).get("evalsha", {}).get("usec", 0) - before) / n
    # The same requests' jobs built from scratch by RQ's create_job + to_dict (no template).
    requests = [_request(f"scratch{i}", i) for i in range(n)]
    shape_of = dk_admission.shape_of
    dk_admission.shape_of = lambda *_: None  # type: ignore[assignment]
    try:
        t0 = clock()
        for request in requests:
            d._prepare(request)
        scratch = clock() - t0
    finally:
        dk_admission.shape_of = shape_of
    round_trip_us = timed.round_trip_ns / n / 1000
    return {"prepare_us": prep / n / 1000, "prepare_without_template_us": scratch / n / 1000,
            "pack_us": timed.pack_ns / n / 1000,
            "round_trip_us": round_trip_us, "of_which_server_us": server_us,
            "reply_to_admission_us": (admit - timed.pack_ns - timed.round_trip_ns) / n / 1000,
            "total_us": (prep + admit) / n / 1000}


def profile_dedupkit(bench: Bench, n: int) -> str:
    bench.conn.flushdb()
    op = bench.op("dedupkit")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        op()
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("cumulative").print_stats(30)
    stats.sort_stats("tottime").print_stats(20)
    return out.getvalue()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = c.parser(__doc__.splitlines()[0]).parse_args(argv)
    n = 300 if args.quick else 3000
    reps = c.repeats(args)
    with c.redis_url(args) as url:
        client = c.counting_client(url)
        pure_py = c.counting_client(url, pure_python=True)
        client.flushdb()
        bench = Bench(client, pure_py)
        machine = c.machine(client)

        # Requests per admission, counted once per variant after a warm-up.
        counts: dict[str, dict[str, Any]] = {}
        count_n = 50
        for variant in VARIANTS:
            client.flushdb()
            op = bench.op(variant)
            for _ in range(5):
                op()
            rc = c.count_requests(url, pure_py if variant.endswith("_pure_py") else client, op, count_n)
            counts[variant] = {"commands": rc.commands / count_n, "round_trips": rc.round_trips / count_n,
                               "lua_commands": rc.lua_commands / count_n,
                               "names": {k: v / count_n for k, v in sorted(rc.names.items())}}

        runs: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
        for rep in range(reps):
            order = VARIANTS[rep % len(VARIANTS):] + VARIANTS[:rep % len(VARIANTS)]
            for variant in order:
                runs[variant].append(run_block(bench, variant, n))
        splits = [split_dedupkit(bench, n) for _ in range(reps)]
        profile = profile_dedupkit(bench, min(n, 1000))
        client.flushdb()
        client.close()
        pure_py.close()

    summary = {v: {m: c.spread([r[m] for r in runs[v]]) for m in ("ops_s", "p50_us", "p99_us")} for v in VARIANTS}
    med = {v: {m: summary[v][m]["median"] for m in ("ops_s", "p50_us", "p99_us")} for v in VARIANTS}
    best = {v: {"ops_s": summary[v]["ops_s"]["max"], "p50_us": summary[v]["p50_us"]["min"]} for v in VARIANTS}
    ratios = {
        "dedupkit_vs_rq_throughput_median": c.ratio(med["dedupkit"]["ops_s"], med["rq"]["ops_s"]),
        "dedupkit_vs_rq_throughput_best": c.ratio(best["dedupkit"]["ops_s"], best["rq"]["ops_s"]),
        "dedupkit_vs_rq_unique_throughput_median": c.ratio(med["dedupkit"]["ops_s"], med["rq_unique"]["ops_s"]),
        "dedupkit_vs_naive_throughput_median": c.ratio(med["dedupkit"]["ops_s"], med["naive"]["ops_s"]),
        "dedupkit_p50_vs_floor_median": c.ratio(med["dedupkit"]["p50_us"], med["evalsha_floor"]["p50_us"]),
        "dedupkit_p50_vs_floor_best": c.ratio(best["dedupkit"]["p50_us"], best["evalsha_floor"]["p50_us"]),
        "evalsha_args_p50_vs_floor_median": c.ratio(med["evalsha_args"]["p50_us"], med["evalsha_floor"]["p50_us"]),
        "evalsha_packed_p50_vs_floor_median": c.ratio(med["evalsha_packed"]["p50_us"],
                                                      med["evalsha_floor"]["p50_us"]),
        "dedupkit_hiredis_vs_pure_py_throughput_median": c.ratio(med["dedupkit"]["ops_s"],
                                                                  med["dedupkit_pure_py"]["ops_s"]),
        "rq_hiredis_vs_pure_py_throughput_median": c.ratio(med["rq"]["ops_s"], med["rq_pure_py"]["ops_s"]),
        "dedupkit_vs_rq_both_pure_py_throughput_median": c.ratio(med["dedupkit_pure_py"]["ops_s"],
                                                                  med["rq_pure_py"]["ops_s"]),
    }
    split = {m: c.spread([s[m] for s in splits]) for m in splits[0]}
    targets = {
        "dedupkit_one_request": counts["dedupkit"]["commands"] == 1 and counts["dedupkit"]["round_trips"] == 1,
        "dedupkit_ge_2x_rq_throughput": ratios["dedupkit_vs_rq_throughput_median"] >= 2,
        "dedupkit_p50_le_1.5x_floor": ratios["dedupkit_p50_vs_floor_median"] <= 1.5,
    }

    rows = []
    for v in VARIANTS:
        s = summary[v]
        rows.append([v, s["ops_s"]["min"], s["ops_s"]["median"], s["p50_us"]["min"], s["p50_us"]["median"],
                     s["p99_us"]["median"], c.ratio(med[v]["ops_s"], med["rq"]["ops_s"]),
                     counts[v]["commands"], counts[v]["round_trips"], counts[v]["lua_commands"]])
    text = (f"Admission, single client, distinct keys: {n} ops per block, {reps} interleaved repetitions\n\n"
            + c.table(["variant", "ops/s min", "ops/s median", "p50 us min", "p50 us median", "p99 us median",
                       "x rq ops/s", "cmds/op", "round trips/op", "lua cmds/op"], rows)
            + "\n\n"
            + c.table(["ratio (medians unless 'best')", "value"], [[k, v] for k, v in ratios.items()])
            + "\n\n"
            + c.table(["one dedupkit.enqueue, where the time goes", "us min", "us median"],
                      [[m, split[m]["min"], split[m]["median"]] for m in split])
            + "\n\n"
            + c.table(["target", "met"], [[k, "yes" if v else "no"] for k, v in targets.items()]))
    data = {"machine": machine, "n_per_block": n, "repeat": reps, "summary": summary, "runs": runs,
            "requests": counts, "ratios": ratios, "dedupkit_split": split, "targets": targets}
    c.write(args, "admission", data, text)
    (args.out / ("admission_profile" + ("-quick" if args.quick else "") + ".txt")).write_text(profile)
    return data


if __name__ == "__main__":
    main()

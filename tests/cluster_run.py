"""dedupkit and RQ on a three-primary Redis Cluster, with a slot migration under load (issue 13).

    RQ_KEY_PREFIX='{rq}' python -m tests.cluster_run [--clients 4] [--seconds 6] [--migrations 2]

Must run with RQ 3 and ``RQ_KEY_PREFIX`` carrying a hash tag (RQ reads it at import):
every RQ key and every dedupkit key then lives in the tag's slot. Prints one JSON line:

- ``api``: each Deduplicator call through redis-py's ``RedisCluster`` and its answer;
- ``race``: tests/test_race_real.py through ``RedisCluster``: 8 processes, 200 calls each
  over 10 keys, at once (exactly 10 admitted, 10 queued);
- ``rq``: RQ's own ``Queue.enqueue`` and ``Worker.work(burst=True)`` through the same
  client (RQ's worker reads ``connection.connection_pool``, which ``RedisCluster`` lacks);
- ``load``: ``--clients`` processes admit (reject), replace and cancel over 30 keys for
  ``--seconds`` while the tag's slot is migrated ``--migrations`` times to another primary
  (SETSLOT MIGRATING/IMPORTING, MIGRATE in batches of 5 with pauses); then RQ's data is
  read: keys with more than one pending job (duplicates), admitted jobs whose hash is
  gone, and each key's slot naming its one pending job.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import sys
import time
from collections import Counter, defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import redis
from rq import Queue, Worker

from dedupkit import Deduplicator, EnqueueRequest, RedisUnavailableError

from .topology import ClusterTopology

KEYS = 30
PENDING = {"queued", "scheduled", "started", "deferred", "ready_to_enqueue", "rate_limited"}


def _api(rc: redis.RedisCluster) -> dict[str, Any]:
    d = Deduplicator(Queue("api", connection=rc))
    out: dict[str, Any] = {"slots_key": d.keys.slots, "slot": rc.keyslot(d.keys.slots),
                           "queue_slot": rc.keyslot(d.queue.key)}
    first = d.enqueue("alice", "tests.tasks.work", "a")
    out["admitted"] = first.admitted
    out["conflict"] = d.enqueue("alice", "tests.tasks.work", "a").conflict
    out["replaced"] = d.enqueue("alice", "tests.tasks.work", "a", on_conflict="replace").replaced == first.job_id
    out["scheduled"] = d.enqueue_in(timedelta(hours=1), "bob", "tests.tasks.work", "b").status.state.value  # type: ignore[union-attr]
    many = d.enqueue_many([EnqueueRequest(f"m{i}", "tests.tasks.work", ("m",)) for i in range(50)])
    out["many_admitted"] = sum(a.admitted for a in many)
    out["status_many_pending"] = sum(s.pending for s in d.status_many([f"m{i}" for i in range(50)]))
    out["cancel"] = d.cancel("alice")
    out["status_after_cancel"] = d.status("alice").pending
    out["slots_listed"] = len(d.slots(count=100)[1])
    out["stats"] = d.stats()
    return out


def _rq(rc: redis.RedisCluster) -> dict[str, Any]:
    out: dict[str, Any] = {}
    q = Queue("plain", connection=rc)
    try:
        out["enqueue"] = q.enqueue("tests.tasks.work", "x").get_status().value
    except Exception as exc:
        out["enqueue"] = f"{type(exc).__name__}: {exc}"
    try:
        out["worker"] = Worker([q], connection=rc).work(burst=True)
    except Exception as exc:
        out["worker"] = f"{type(exc).__name__}: {exc}"
    return out


def _client(port: int, stop_at: float, out: str, seed: int) -> None:
    rng = random.Random(seed)
    rc = redis.RedisCluster(host="127.0.0.1", port=port)
    dedup = Deduplicator(Queue("load", connection=rc))
    with open(out, "w") as f:
        while time.time() < stop_at:
            key = f"k{rng.randrange(KEYS)}"
            op = rng.choices(["reject", "replace", "cancel"], [6, 2, 2])[0]
            row: dict[str, Any] = {"op": op, "key": key}
            try:
                if op == "cancel":
                    row["cancelled"] = dedup.cancel(key)
                else:
                    adm = dedup.enqueue(key, "tests.tasks.work", key, on_conflict=op)
                    row.update(admitted=adm.admitted, job=adm.job_id)
                row["ok"] = True
            except RedisUnavailableError as exc:  # TRYAGAIN / ASK while the slot moves: retry later
                row.update(ok=False, error=getattr(exc, "code", None) or type(exc.__cause__).__name__)
                time.sleep(0.01)
            except Exception as exc:  # anything untyped is a finding: record it, go on
                row.update(ok=False, error=f"untyped {type(exc).__name__}: {exc}")
            f.write(json.dumps(row) + "\n")
            f.flush()


def _hammer(port: int, worker: int, barrier: Any, out: Any) -> None:
    """tests/test_race_real.py's process, through RedisCluster: 200 calls over 10 keys."""
    rc = redis.RedisCluster(host="127.0.0.1", port=port)
    dedup = Deduplicator(Queue("race", connection=rc))
    barrier.wait()
    admitted = 0
    for i in range(200):
        key = f"user:{(i + worker) % 10}"
        if i % 3:
            admitted += dedup.enqueue(key, "tests.tasks.work", key).admitted
        else:
            admitted += dedup.enqueue_many([EnqueueRequest(key, "tests.tasks.work", (key,))])[0].admitted
    out.put(admitted)


def _race(topo: ClusterTopology) -> dict[str, Any]:
    """8 processes, 200 calls each, 10 keys, at once: exactly 10 jobs (as on one Redis)."""
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(8), ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(topo.ports[0], w, barrier, out)) for w in range(8)]
    for p in procs:
        p.start()
    admitted = sum(out.get(timeout=300) for _ in procs)
    for p in procs:
        p.join(60)
    rc = topo.client()
    return {"admitted": admitted, "queued": rc.llen(Queue("race", connection=rc).key)}


def _load(topo: ClusterTopology, clients: int, seconds: float, migrations: int, workdir: Path) -> dict[str, Any]:
    rc = topo.client()
    slot = rc.keyslot(Deduplicator(Queue("load", connection=rc)).keys.slots)
    ctx = multiprocessing.get_context("spawn")
    stop_at = time.time() + seconds + 5
    procs = [ctx.Process(target=_client, args=(topo.ports[0], stop_at, str(workdir / f"c{i}.jsonl"), i))
             for i in range(clients)]
    for p in procs:
        p.start()
    time.sleep(5 + seconds / (migrations + 1))  # spawned clients take a moment to start
    owners = [topo.owner(slot)]
    moved_keys = []
    for _ in range(migrations):
        target = next(p for p in topo.ports if p != owners[-1])
        moved_keys.append(topo.migrate_slot(slot, target, batch=5, pause=0.02))
        owners.append(topo.owner(slot))
        time.sleep(seconds / (migrations + 1))
    for p in procs:
        p.join(60)
    rows = [json.loads(line) for i in range(clients) for line in (workdir / f"c{i}.jsonl").read_text().splitlines()]
    admitted = [r for r in rows if r.get("ok") and r.get("admitted")]
    # RQ's data: pending jobs per key; the slots hash.
    pending: dict[str, list[str]] = defaultdict(list)
    for key in rc.scan_iter(match="{rq}:job:*", count=1000, target_nodes=redis.RedisCluster.ALL_NODES):
        name = key.decode()
        status = rc.hget(name, "status")
        if status and status.decode() in PENDING and rc.hget(name, "origin") == b"load":
            pending[name.rsplit(":", 1)[1].rsplit("_", 1)[0]].append(name.rsplit(":", 1)[1])
    dedup = Deduplicator(Queue("load", connection=rc))
    slots = {k.decode(): v.decode() for k, v in rc.hgetall(dedup.keys.slots).items()}
    wrong_holder = [k for k, jobs in pending.items() if len(jobs) == 1 and slots.get(k.removeprefix("job_")) != jobs[0]]
    return {
        "slot": slot, "owners": owners, "keys_moved_per_migration": moved_keys, "requests": len(rows),
        "admitted": len(admitted), "errors": dict(Counter(r["error"] for r in rows if not r.get("ok"))),
        "duplicate_keys": sorted(k for k, v in pending.items() if len(v) > 1),
        "admitted_missing": sum(not rc.exists(f"{{rq}}:job:{r['job']}") for r in admitted),
        "wrong_holder": wrong_holder,
    }


def run(*, clients: int = 4, seconds: float = 6.0, migrations: int = 2, workdir: Path | None = None) -> dict[str, Any]:
    import tempfile

    workdir = Path(workdir or tempfile.mkdtemp(prefix="dedupkit-cluster-"))
    topo = ClusterTopology()
    try:
        rc = topo.client()
        return {"api": _api(rc), "rq": _rq(rc), "race": _race(topo),
                "load": _load(topo, clients, seconds, migrations, workdir)}
    finally:
        topo.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.cluster_run", description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--seconds", type=float, default=6.0)
    p.add_argument("--migrations", type=int, default=2)
    args = p.parse_args(argv)
    print(json.dumps(run(clients=args.clients, seconds=args.seconds, migrations=args.migrations), sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

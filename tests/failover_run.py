"""SIGKILL a Sentinel-managed primary under load and measure what dedupkit's users see (issue 13).

    python -m tests.failover_run [--replicas 1] [--min-replicas 0] [--before 4] [--after 12] [--lag 0]

On loopback: a primary, ``--replicas`` replicas and three sentinels. Everything connects
through RQ's ``SENTINEL`` settings (one settings module, redis-py's ``Sentinel``): two real
``rq worker -c`` processes (one ``--with-scheduler``), ``--clients`` processes that admit
(reject), replace and cancel over 50 keys, the dedupkit Scheduler through the CLI
(``dedupkit scheduler -c ...``) over 50 other keys, the example Flask app (a signed-in
user pressing trigger every 0.1 s) and ``dedupkit status -c ...`` every 0.5 s. After
``--before`` seconds the primary is SIGKILLed (with ``--lag S``, the replicas stream
through relays that hold the stream back for the last S seconds, lost with the primary:
replication lag); load goes on for ``--after`` seconds, then
workers drain and the figures are read:

- acknowledged then lost: admissions answered ``admitted`` whose job hash is not on the new
  primary (with ``--min-replicas``, split into confirmed and unconfirmed ones);
- duplicates: keys with more than one pending job in RQ's own data on the new primary, and
  keys whose runs overlapped in time (every run appends its start and end to a file, not
  to Redis, which the failover may rewind);
- seconds from the kill until an admission succeeded again, and the last failed one;
- the Scheduler's ticks (aborted ones, first good one after the kill), the app's answers
  (503s, first 2xx/409 after the last 503) and the CLI's exit codes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import redis
from rq import Queue, get_current_job

from dedupkit import Deduplicator, ScheduleEntry, Scheduler
from dedupkit.connection import redis_from_settings
from dedupkit.scheduler import TickResult

from .support import ROOT, RQWorker, wait_for
from .topology import MASTER_NAME, SentinelTopology

QUEUE = "failover"
SCHED_QUEUE = "failover-sched"
KEYS = 50
PENDING = {"queued", "started", "scheduled", "deferred", "ready_to_enqueue", "rate_limited"}


# -- run by the rq workers -----------------------------------------------------------

def record_run(key: str, log: str, seconds: float) -> str:
    """A job: append its start and end to ``log`` (a file: the failover cannot rewind it)."""
    job = get_current_job()
    job_id = job.id if job else "?"
    _append(log, {"key": key, "job": job_id, "start": time.time()})
    time.sleep(seconds)
    _append(log, {"key": key, "job": job_id, "end": time.time()})
    return "done"


def _append(path: str, row: dict[str, Any]) -> None:
    with open(path, "a") as f:  # one short write per line: O_APPEND keeps lines whole
        f.write(json.dumps(row) + "\n")


# -- run by `dedupkit scheduler -c SETTINGS --app tests.failover_run:make_scheduler` ---

class LoggingScheduler(Scheduler):
    """The Scheduler, writing each tick's result to $DK_TICK_LOG."""

    def tick(self) -> TickResult:
        result = super().tick()
        _append(os.environ["DK_TICK_LOG"], {"t": time.time(), "ok": result.ok, "aborted": result.aborted,
                                            "admitted": result.admitted, "skipped": result.skipped})
        return result


def make_scheduler(connection: redis.Redis) -> Scheduler:
    runs = os.environ["DK_RUN_LOG"]

    def entries() -> list[ScheduleEntry]:
        now = datetime.now(timezone.utc)
        return [ScheduleEntry(f"s{i}", now, record_run, (f"sched:s{i}", runs, 0.2)) for i in range(KEYS)]

    return LoggingScheduler(Deduplicator(Queue(SCHED_QUEUE, connection=connection)), entries, interval=0.5,
                            lease_ttl=3)


# -- load clients ------------------------------------------------------------------

def _client(settings: dict[str, Any], min_replicas: int, stop_at: float, out: str, runs: str, seed: int) -> None:
    rng = random.Random(seed)
    connection = redis_from_settings({"SENTINEL": settings})
    dedup = Deduplicator(Queue(QUEUE, connection=connection), min_replicas=min_replicas, replica_timeout=0.5)
    with open(out, "a") as f:
        stop_file = Path(out).with_suffix(".stop")
        while time.time() < stop_at and not stop_file.exists():
            key = f"k{rng.randrange(KEYS)}"
            op = rng.choices(["reject", "replace", "cancel"], [6, 2, 2])[0]
            row: dict[str, Any] = {"t0": time.time(), "op": op, "key": key}
            try:
                if op == "cancel":
                    row["cancelled"] = dedup.cancel(key)
                else:
                    adm = dedup.enqueue(key, record_run, key, runs, 0.3, on_conflict=op)
                    row.update(admitted=adm.admitted, job=adm.job_id, confirmed=adm.confirmed,
                               replaced=adm.replaced)
                row["ok"] = True
            except Exception as exc:  # every failure is a data point here
                row.update(ok=False, error=type(exc).__name__)
                time.sleep(0.05)
            row["t"] = time.time()
            f.write(json.dumps(row) + "\n")
            f.flush()


# -- the example app and the CLI, polled from threads -----------------------------------

def _poll_app(settings: dict[str, Any], workdir: Path, stop: threading.Event, out: list[dict[str, Any]]) -> None:
    from examples.flask_app.app import create_app

    from .test_flask_app import PASSWORD, TRIGGER, login

    app = create_app({"TESTING": True, "SECRET_KEY": "failover", "DATABASE": str(workdir / "app.sqlite3"),
                      "SENTINEL": settings, "SEED_DEMO_USERS": True, "DEMO_PASSWORD": PASSWORD,
                      "PASSWORD_HASH_METHOD": "pbkdf2:sha256:1000", "JOB_SECONDS": 0.2})
    client = app.test_client()
    token = login(client, "alice")
    while not stop.is_set():
        t0 = time.time()
        code = client.post(TRIGGER, headers={"X-CSRF-Token": token}).status_code
        out.append({"t0": t0, "t": time.time(), "code": code})
        time.sleep(0.1)


def _poll_cli(workdir: Path, settings_module: str, stop: threading.Event, out: list[dict[str, Any]]) -> None:
    binary = str(Path(sys.executable).with_name("dedupkit"))
    while not stop.is_set():
        t0 = time.time()
        proc = subprocess.run([binary, "status", QUEUE, "-c", settings_module, "--json"], cwd=workdir,
                              capture_output=True, text=True, timeout=60)
        out.append({"t0": t0, "t": time.time(), "code": proc.returncode})
        time.sleep(0.5)


# -- the run -----------------------------------------------------------------------

def run(*, replicas: int = 1, min_replicas: int = 0, clients: int = 3, before: float = 4.0, after: float = 12.0,
        lag: float = 0.0, workdir: Path | None = None) -> dict[str, Any]:
    workdir = Path(workdir or tempfile.mkdtemp(prefix="dedupkit-failover-"))
    workdir.mkdir(parents=True, exist_ok=True)
    runs = str(workdir / "runs.jsonl")
    ticks = str(workdir / "ticks.jsonl")
    topo = SentinelTopology(replicas=replicas, proxied=lag > 0)
    procs: list[Any] = []
    workers: list[RQWorker] = []
    scheduler: subprocess.Popen[bytes] | None = None
    stop = threading.Event()
    app_log: list[dict[str, Any]] = []
    cli_log: list[dict[str, Any]] = []
    threads: list[threading.Thread] = []
    deaths: list[dict[str, Any]] = []
    try:
        settings = topo.settings(SOCKET_TIMEOUT=2, CONNECTION_KWARGS={"socket_connect_timeout": 0.5})
        module = topo.settings_module(workdir, **{"SOCKET_TIMEOUT": 2})
        env = {"PYTHONPATH": str(workdir), "DK_RUN_LOG": runs, "DK_TICK_LOG": ticks}
        def start_worker(i: int) -> RQWorker:
            return RQWorker("", [QUEUE, SCHED_QUEUE, "email_processing"], settings=module, scheduler=i == 0,
                            env=env)

        workers = [start_worker(i) for i in range(2)]
        # RQ's worker exits on a connection error outside its dequeue loop (e.g. setting
        # its state while the primary dies): restart it, as systemd or Kubernetes would.
        threads.append(threading.Thread(target=_supervise, args=(workers, start_worker, stop, deaths), daemon=True))
        scheduler = subprocess.Popen(
            [str(Path(sys.executable).with_name("dedupkit")), "--log-level", "WARNING", "scheduler", "-c", module,
             "--app", "tests.failover_run:make_scheduler", "--path", str(ROOT)],
            cwd=workdir, env={**os.environ, **env, "PYTHONPATH": os.pathsep.join((str(ROOT), str(workdir)))},
            stdout=open(workdir / "scheduler.log", "wb"), stderr=subprocess.STDOUT)
        # The clients run until stop_at; the kill comes `before` seconds after all of them
        # (and the scheduler) are under way, which spawn-started processes take a while to be.
        stop_at = time.time() + 60 + before + after
        ctx = multiprocessing.get_context("spawn")
        for i in range(clients):
            p = ctx.Process(target=_client, args=(settings, min_replicas, stop_at, str(workdir / f"client{i}.jsonl"),
                                                  runs, i))
            p.start()
            procs.append(p)
        threads += [threading.Thread(target=_poll_app, args=(settings, workdir, stop, app_log), daemon=True),
                    threading.Thread(target=_poll_cli, args=(workdir, module, stop, cli_log), daemon=True)]
        for t in threads:
            t.start()
        wait_for(lambda: all(_rows(workdir / f"client{i}.jsonl") for i in range(clients)) and _rows(Path(ticks))
                 and app_log, 60, interval=0.2, what="the clients, the scheduler and the app to start")
        time.sleep(before)
        old_port = topo.master_port()
        if lag:
            # Replication lag made visible: the replicas' links hold back the primary's
            # stream for `lag` seconds before it dies, and what they held is lost with it.
            topo.stall_replication()
            time.sleep(lag)
        topo.kill_primary()
        topo.cut_proxies()
        killed_at = time.time()  # the process is dead (SIGKILL, reaped): nothing it answers comes later
        wait_for(lambda: topo.master_port() not in (None, old_port), 60, what="the sentinels' failover")
        promoted_at = time.time()
        time.sleep(max(0.0, killed_at + after - time.time()))
        for path in (workdir / f"client{i}.jsonl" for i in range(clients)):
            path.with_suffix(".stop").touch()
        for p in procs:
            p.join(60)
        new_port = topo.master_port()
        assert new_port is not None
        conn = redis.Redis(port=new_port)
        try:
            # Drained: nothing queued, and time for the last jobs (0.3 s) to end. (The wip
            # registry is no test: a killed worker's lease lives on for its ttl.)
            wait_for(lambda: conn.llen(f"rq:queue:{QUEUE}") == 0, 90, what="the workers to drain the queue")
            time.sleep(2)
        except AssertionError:
            for w in workers:
                print(f"--- worker {w.proc.pid} (alive: {w.proc.poll() is None}):\n{w.output()[-3000:]}",
                      file=sys.stderr)
            raise
        stop.set()
        for t in threads:
            t.join(60)
        scheduler.terminate()
        scheduler.wait(20)
        report = _judge(workdir, conn, clients, runs, ticks, app_log, cli_log, killed_at, promoted_at)
        report.update(replicas=replicas, min_replicas=min_replicas, clients=clients, lag=lag, old_port=old_port,
                      new_port=new_port, worker_exits=len(deaths),
                      worker_exits_after_s=[round(d["t"] - killed_at, 2) for d in deaths])
        conn.close()
        return report
    finally:
        stop.set()
        for p in procs:
            if p.is_alive():
                p.kill()
        if scheduler is not None and scheduler.poll() is None:
            scheduler.kill()
            scheduler.wait(10)
        for w in workers:
            w.stop()
        topo.close()


def _supervise(workers: list[RQWorker], start: Any, stop: threading.Event, deaths: list[dict[str, Any]]) -> None:
    while not stop.wait(0.5):
        for i, w in enumerate(workers):
            if w.proc.poll() is not None:
                deaths.append({"t": time.time(), "code": w.proc.returncode, "log": w.output()[-1500:]})
                w.stop()
                workers[i] = start(i)


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _judge(workdir: Path, conn: redis.Redis, clients: int, runs: str, ticks: str, app_log: list[dict[str, Any]],
           cli_log: list[dict[str, Any]], killed_at: float, promoted_at: float) -> dict[str, Any]:
    rows = [r for i in range(clients) for r in _rows(workdir / f"client{i}.jsonl")]
    admitted = [r for r in rows if r.get("ok") and r.get("admitted")]
    lost = [r for r in admitted if not conn.exists(f"rq:job:{r['job']}")]
    failed = [r for r in rows if not r.get("ok")]
    ok_after = sorted(r["t"] for r in rows if r.get("ok") and r["t0"] > killed_at)
    admitted_after = sorted(r["t"] for r in admitted if r["t0"] > killed_at)
    # RQ's own data on the new primary: pending jobs per key.
    pending: dict[str, list[str]] = defaultdict(list)
    for key in conn.scan_iter(match="rq:job:*", count=1000):
        name = key.decode()
        if name.count(":") != 2:
            continue
        status, origin = conn.hmget(key, "status", "origin")
        if origin and status and status.decode() in PENDING:
            # job_<encoded key>_<µs>: the key is the id without its time
            pending[f"{origin.decode()}:{name.split(':')[2].rsplit('_', 1)[0]}"].append(name)
    # Runs from the file: overlapping [start, end] of one key.
    spans: dict[str, dict[str, list[float]]] = defaultdict(dict)
    for r in _rows(Path(runs)):
        span = spans[r["key"]].setdefault(r["job"], [r.get("start", 0.0), float("inf")])
        if "end" in r:
            span[1] = r["end"]
    overlapping = []
    for key, jobs in spans.items():
        latest_end = float("-inf")
        for begin, end in sorted(jobs.values()):
            if begin < latest_end:
                overlapping.append(key)
                break
            latest_end = max(latest_end, end)
    tick_rows = _rows(Path(ticks))
    codes_after = [r for r in app_log if r["t0"] > killed_at]
    last_503 = max((r["t"] for r in app_log if r["code"] == 503), default=None)
    back = min((r["t"] for r in app_log if r["code"] in (200, 202, 409) and last_503 and r["t0"] > last_503),
               default=None)
    cli_bad = [r for r in cli_log if r["code"] != 0]
    return {
        "requests": len(rows), "admitted": len(admitted),
        "admitted_before_kill": sum(r["t"] < killed_at for r in admitted),
        "lost": len(lost), "lost_confirmed": sum(r.get("confirmed") is True for r in lost),
        "lost_unconfirmed": sum(r.get("confirmed") is False for r in lost),
        "unconfirmed_admissions": sum(r.get("confirmed") is False for r in admitted),
        "lost_then_ran": sum(r["job"] in spans.get(r["key"], {}) for r in lost),
        "duplicate_keys_rq": sorted(k for k, v in pending.items() if len(v) > 1),
        "overlapping_run_keys": sorted(overlapping),
        "failed_requests": len(failed), "errors": dict(Counter(r["error"] for r in failed)),
        "sentinel_promoted_s": round(promoted_at - killed_at, 2),
        "first_ok_after_s": round(ok_after[0] - killed_at, 2) if ok_after else None,
        "first_admitted_after_s": round(admitted_after[0] - killed_at, 2) if admitted_after else None,
        "last_failure_after_s": round(max(r["t"] for r in failed) - killed_at, 2) if failed else None,
        "ticks": len(tick_rows), "ticks_aborted": dict(Counter(r["aborted"] for r in tick_rows if not r["ok"])),
        "ticks_ok_after_kill": sum(r["ok"] and r["t"] > killed_at for r in tick_rows),
        "first_ok_tick_after_s": min((round(r["t"] - killed_at, 2) for r in tick_rows
                                      if r["ok"] and r["t"] > killed_at), default=None),
        "app_codes_after_kill": dict(Counter(str(r["code"]) for r in codes_after)),
        "app_back_after_s": round(back - killed_at, 2) if back else None,
        "app_last_code": app_log[-1]["code"] if app_log else None,
        "cli_runs": len(cli_log), "cli_failures": len(cli_bad),
        "cli_last_code": cli_log[-1]["code"] if cli_log else None,
        "master_name": MASTER_NAME,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.failover_run", description=__doc__.splitlines()[0])
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--min-replicas", type=int, default=0)
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--before", type=float, default=4.0)
    p.add_argument("--after", type=float, default=12.0)
    p.add_argument("--lag", type=float, default=0.0,
                   help="replication held back this many seconds before the kill, and lost with the primary")
    p.add_argument("--runs", type=int, default=1, help="repeat the whole run")
    args = p.parse_args(argv)
    for _ in range(args.runs):
        report = run(replicas=args.replicas, min_replicas=args.min_replicas, clients=args.clients,
                     before=args.before, after=args.after, lag=args.lag)
        print(json.dumps(report, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Stop real rq workers after every Redis step and judge the key from RQ's own data (issue 9).

    python -m tests.step_matrix [--variant NAME ...] [--mode kill|stop] [--full] [--lanes N]

Per variant, a count-only run of a real ``rq worker`` (tests/stepkill.py inside it) records
the worker's steps (round trips) for one admitted job. Then for each k, a cell: fresh
Redis db, admit the job through Deduplicator, start the worker with STEPKILL_AT=k, SIGKILL
(or SIGSTOP) the worker and its work-horse when it is about to send step k+1, then for a
few seconds keep admitting (reject / replace / follow_up) and cancelling the key while RQ's
own maintenance runs (StartedJobRegistry.cleanup, IntermediateQueue.cleanup, RQScheduler
promotion) and a healthy worker with a scheduler works the queue. A monitor samples RQ's
data all along (tests/step_judge.py). Default: the steps that write job state; --full:
every step.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import redis
from rq import Queue, Retry, Worker
from rq.job import Callback, Job
from rq.repeat import Repeat
from rq.scheduler import SCHEDULER_LOCKING_KEY_TEMPLATE, RQScheduler

from dedupkit import Admission, DedupkitError, Deduplicator
from dedupkit.keys import encode_key

from . import step_judge, tasks
from .support import RedisServer, RQWorker, wait_for

QUEUE = "stepq"
OTHER_QUEUE = "stepq-other"
KEY = "user-1"
ID_PREFIX = f"job_{encode_key(KEY)}_"
WORKER = "tests.stepkill.StepKillWorker"
SIMPLE = "tests.stepkill.StepKillSimpleWorker"
MONITORING_INTERVAL = 1  # s: with 2 s of slack a dead Worker's lease ends ~3 s after its last beat
# One host, one clock: RQ's scheduler reads and writes within milliseconds, and a worker
# starts what it popped within milliseconds, so 5 s covers both (the default 60 s allows for
# clock skew between hosts and would outlast FREE_BOUND for a job lost between pop and start).
DUE_MARGIN = 5.0
FREE_BOUND = 45.0  # s after the churn ends; SimpleWorker lease 5 s + retry interval + a few runs
STATE_WORDS = ("rq:job:", "rq:wip:", "rq:queue:", "rq:scheduled:", "rq:deferred:", "rq:finished:",
               "rq:failed:", "rq:canceled:", "rq:execution", "steplog:", "EVALSHA")


@dataclass(frozen=True)
class Variant:
    """A job config and a worker config."""

    name: str
    func: Callable[..., Any]
    kwargs: Callable[[], dict[str, Any]] = dict  # fresh per admission (Retry/Repeat objects)
    args: tuple[Any, ...] = ()
    worker_class: str = WORKER
    queues: tuple[str, ...] = (QUEUE,)
    scheduler: bool = False  # the step-killed worker runs RQ's scheduler (not burst)
    delay: float | None = None  # admit with enqueue_in(delay)
    churn_func: Callable[..., Any] | None = None
    ttl_drops: bool = False  # RQ itself may drop a queued job whose ttl ran out

    def admit(self, dedup: Deduplicator, policy: str, *, churn: bool = False) -> Admission:
        func = (self.churn_func or self.func) if churn else self.func
        args, kwargs = (KEY, *self.args), self.kwargs()
        if self.delay is not None and policy != "follow_up":
            return dedup.enqueue_in(timedelta(seconds=self.delay), KEY, func, *args, on_conflict=policy, **kwargs)
        return dedup.enqueue(KEY, func, *args, on_conflict=policy, **kwargs)


def _callbacks() -> dict[str, Any]:
    return {"on_success": Callback(tasks.step_on_success), "on_failure": Callback(tasks.step_on_failure)}


VARIANTS: dict[str, Variant] = {v.name: v for v in [
    Variant("success", tasks.step_work),
    Variant("simple-success", tasks.step_work, lambda: {"job_timeout": 3}, worker_class=SIMPLE),
    Variant("two-queues", tasks.step_work, queues=(OTHER_QUEUE, QUEUE)),
    Variant("scheduled", tasks.step_work, scheduler=True, delay=1.0),
    Variant("fail", tasks.step_fail),
    Variant("timeout", tasks.step_work, lambda: {"job_timeout": 1}, args=(3,)),
    Variant("retry", tasks.step_fail, lambda: {"retry": Retry(max=2)}),
    Variant("simple-retry", tasks.step_fail, lambda: {"retry": Retry(max=2), "job_timeout": 3}, worker_class=SIMPLE),
    Variant("retry-interval", tasks.step_fail, lambda: {"retry": Retry(max=2, interval=1)}),
    Variant("repeat", tasks.step_work, lambda: {"repeat": Repeat(times=1)}),
    Variant("ttl", tasks.step_work, lambda: {"ttl": 3}, args=(0.5,), ttl_drops=True),
    Variant("result-ttl-0", tasks.step_work, lambda: {"result_ttl": 0}),
    Variant("callbacks", tasks.step_work, _callbacks),
    Variant("callbacks-fail", tasks.step_fail, _callbacks),
    Variant("follow-up", tasks.step_follow_up, churn_func=tasks.step_work),
    Variant("repeat-follow-up", tasks.step_follow_up, lambda: {"repeat": Repeat(times=1)},
            churn_func=tasks.step_work),
]}


# -- steps ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Step:
    n: int
    role: str
    text: str
    sent: bool

    @property
    def writes_state(self) -> bool:
        return self.sent and any(word in self.text for word in STATE_WORDS)

    @property
    def phase(self) -> str:
        """A coarse name for where in RQ's job life the step falls (for sampling and the report)."""
        t = self.text
        for phase, words in (("dequeue", ("LMOVE",)), ("prepare", ("status=started",)),
                             ("perform", ("steplog:",)), ("retry", ("status=scheduled", "ZADD rq:scheduled")),
                             ("requeue", ("status=queued",)), ("fail", ("status=failed", "rq:failed")),
                             ("finish", ("status=finished", "rq:finished")), ("admit", ("EVALSHA",))):
            if any(w in t for w in words):
                return phase
        return "other"

    def __str__(self) -> str:
        return f"{self.n:>4} {self.role:<9} {'' if self.sent else '(not sent) '}{self.text[:150]}"


def read_steps(directory: Path) -> list[Step]:
    log = directory / "steps.tsv"
    if not log.exists():
        return []
    steps = []
    for line in log.read_text().splitlines():
        n, _pid, role, _t, text = line.split("\t", 4)
        sent = not text.startswith("NOT SENT ")
        steps.append(Step(int(n), role, text.removeprefix("NOT SENT "), sent))
    return steps


# -- processes --------------------------------------------------------------------------

class Lane:
    """One redis-server; cells on a lane run one after another, lanes in parallel."""

    def __init__(self) -> None:
        self.server = RedisServer()
        self.url = self.server.url

    def fresh(self) -> redis.Redis:
        conn = redis.Redis.from_url(self.url)
        conn.flushall()
        conn.script_flush()
        return conn

    def close(self) -> None:
        self.server.close()


def start_worker(lane: Lane, variant: Variant, *, kill_at: int | None, step_dir: Path | None,
                 healthy: bool = False) -> RQWorker:
    env = {"STEPKILL_DIR": str(step_dir), "STEPKILL_AT": str(kill_at or 0)} if step_dir else None
    return RQWorker(lane.url, variant.queues, worker_class=variant.worker_class,
                    monitoring_interval=MONITORING_INTERVAL, scheduler=healthy or variant.scheduler,
                    burst=not (healthy or variant.scheduler), env=env)


# -- the background actors of a cell ----------------------------------------------------

@dataclass
class Ledger:
    """Every admission answered admitted=True, and what the churn saw."""

    admitted: dict[str, str] = field(default_factory=dict)  # job id -> how
    errors: list[str] = field(default_factory=list)
    ops: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    events: list[tuple[float, str]] = field(default_factory=list)  # (time, what): every call and answer

    def record(self, how: str, admission: Admission) -> None:
        with self.lock:
            self.ops += 1
            if admission.admitted and admission.job_id:
                self.admitted[admission.job_id] = how
            self.events.append((time.time(), f"{how}: {_describe_admission(admission)}"))

    def note(self, what: str) -> None:
        with self.lock:
            self.events.append((time.time(), what))


def _describe_admission(a: Admission) -> str:
    words = ["admitted" if a.admitted else "error" if a.error else "conflict", str(a.job_id),
             f"state={a.status.state.value}" if a.status else "state=?"]
    if a.status and a.status.follow_up_job_id:
        words.append(f"waiting={a.status.follow_up_job_id}")
    for name in ("reason", "replaced", "follow_up_of", "recovered", "error"):
        value = getattr(a, name, None)
        if value:
            words.append(f"{name}={value}")
    return " ".join(words)


class Actor(threading.Thread):
    """A loop run every ``period`` seconds until stopped; errors are kept, not raised."""

    def __init__(self, period: float) -> None:
        super().__init__(daemon=True)
        self.period = period
        self.halt = threading.Event()
        self.failures: list[str] = []

    def step(self) -> None:
        raise NotImplementedError

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                self.step()
            except Exception as exc:  # keep going: a harness thread must not hide later steps
                self.failures.append(f"{type(exc).__name__}: {exc}")
            self.halt.wait(self.period)

    def stop(self) -> None:
        self.halt.set()
        self.join(10)


class Monitor(Actor):
    """Samples RQ's data every 20 ms and keeps the first moments with two live jobs.

    Every sample whose description differs from the one before is kept in ``timeline``
    (time, description), for the trace of a failing cell.
    """

    def __init__(self, url: str, queue_name: str) -> None:
        super().__init__(0.02)
        self.conn = redis.Redis.from_url(url)
        self.queue = Queue(queue_name, connection=self.conn)
        self.duplicates: list[str] = []
        self.live = 0
        self.timeline: list[tuple[float, str]] = []

    def sample(self) -> step_judge.State:
        return step_judge.read_state(self.conn, self.queue, ID_PREFIX)

    def step(self) -> None:
        state = self.sample()
        self.live = step_judge.live_count(state)
        text = step_judge.describe_state(state)
        if not self.timeline or self.timeline[-1][1] != text:
            self.timeline.append((state.now, text))
        found = step_judge.duplicate(state)
        if found and len(self.duplicates) < 3 and found not in self.duplicates:
            self.duplicates.append(found)


class Churn(Actor):
    """Other clients: admit (reject / replace / follow_up) and cancel the same key, all the time."""

    def __init__(self, url: str, variant: Variant, ledger: Ledger, seed: int) -> None:
        super().__init__(0.0)
        self.dedup = Deduplicator(Queue(QUEUE, connection=redis.Redis.from_url(url)), due_margin=DUE_MARGIN)
        self.variant, self.ledger, self.rng = variant, ledger, random.Random(seed)

    def step(self) -> None:
        r = self.rng.random()
        try:
            if r < 0.2:
                self.ledger.note(f"churn cancel: {self.dedup.cancel(KEY)}")
            else:
                policy = "reject" if r < 0.55 else "replace" if r < 0.8 else "follow_up"
                self.ledger.record(f"churn {policy}", self.variant.admit(self.dedup, policy, churn=True))
        except DedupkitError as exc:
            self.ledger.errors.append(f"{type(exc).__name__}: {exc}")
        self.halt.wait(self.rng.uniform(0.03, 0.12))


class Maintenance(Actor):
    """RQ's own maintenance, run often instead of every 10 minutes.

    The started registry is cleaned with RQ's clock. RQ fails a job stuck in the
    intermediate list only a minute after first seeing it: once an id has sat there for 2 s
    (a live worker moves it in milliseconds) we age RQ's first-seen stamp by a minute. The
    scheduler promotes only under RQ's scheduler lock, as RQ's own scheduler does.
    """

    def __init__(self, url: str) -> None:
        super().__init__(0.25)
        self.conn = redis.Redis.from_url(url)
        self.queue = Queue(QUEUE, connection=self.conn)
        self.worker = Worker([self.queue], connection=self.conn, name="step-matrix-maintenance")
        self.scheduler = RQScheduler([self.queue], connection=self.conn, logging_level="ERROR")
        self.seen: dict[str, float] = {}

    def step(self) -> None:
        self.queue.started_job_registry.cleanup()
        self._intermediate()
        self.scheduler.acquire_locks()
        if self.scheduler.acquired_locks:
            self.scheduler.enqueue_scheduled_jobs()
            self.scheduler.release_locks()

    def _intermediate(self) -> None:
        inter = self.queue.intermediate_queue
        ids = inter.get_job_ids()
        now = time.time()
        self.seen = {i: self.seen.get(i, now) for i in ids}
        for job_id, since in self.seen.items():
            if now - since > 2:
                self.conn.set(inter.get_first_seen_key(job_id), now - 61, xx=True)
        inter.cleanup(self.worker, self.queue)


class MaintenanceProcess:
    """Runs ``Maintenance`` in a process of its own, in that process's main thread.

    RQ's ``StartedJobRegistry.cleanup`` runs a job's ``on_failure`` callback under RQ's
    ``UnixSignalDeathPenalty`` (SIGALRM), which can only be set up in a main thread: in a
    harness thread the cleanup raised ``ValueError`` before its pipeline, so a dead job with
    callbacks was never failed or retried and the cell reported a loss. RQ's own worker
    runs its maintenance in its main thread; so does this process.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.failures: list[str] = []
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.step_matrix", "--maintenance-loop", self.url],
                                     cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            out, _ = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self.failures += [line.removeprefix("FAILURE ") for line in out.splitlines() if line.startswith("FAILURE ")]
        if self.proc.returncode not in (0, -signal.SIGTERM):
            self.failures.append(f"maintenance process exited {self.proc.returncode}: {out[-300:]}")
        self.proc = None


def maintenance_loop(url: str) -> int:
    """The body of ``MaintenanceProcess``: RQ's maintenance in this main thread until SIGTERM."""
    maintenance = Maintenance(url)
    signal.signal(signal.SIGTERM, lambda *_: maintenance.halt.set())
    maintenance.run()  # the Actor loop, here in the main thread
    for failure in dict.fromkeys(maintenance.failures):
        print(f"FAILURE {failure}", flush=True)
    return 0


# -- one cell ---------------------------------------------------------------------------

@dataclass
class Cell:
    variant: str
    k: int
    mode: str
    reached: bool = True
    duplicates: list[str] = field(default_factory=list)
    losses: list[str] = field(default_factory=list)
    rq_failed: list[str] = field(default_factory=list)  # admitted, never ran, failed by RQ (its own reason)
    free_seconds: float | None = None
    around: list[Step] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)  # victim steps, ledger and samples, merged by time

    @property
    def failed(self) -> bool:
        return bool(self.duplicates or self.losses or self.free_seconds is None) and self.reached


def run_cell(lane: Lane, variant: Variant, k: int, mode: str, churn_seconds: float, seed: int,
             trace: bool = False) -> Cell:
    """One cell. ``trace``: the healthy worker logs its steps too (count only), for the trace."""
    cell = Cell(variant.name, k, mode)
    conn = lane.fresh()
    dedup = Deduplicator(Queue(QUEUE, connection=conn), due_margin=DUE_MARGIN)
    ledger = Ledger()
    monitor = Monitor(lane.url, QUEUE)
    monitor.start()
    step_dir = Path(tempfile.mkdtemp(prefix="stepkill-"))
    healthy_dir = Path(tempfile.mkdtemp(prefix="stephealthy-"))  # count-only log of the healthy worker
    ledger.record("first", variant.admit(dedup, "reject"))
    victim = start_worker(lane, variant, kill_at=k, step_dir=step_dir)
    actors: list[Actor | MaintenanceProcess] = [monitor]
    healthy: RQWorker | None = None
    try:
        if not _wait_trip(victim, step_dir):
            cell.reached = False
            return cell
        frozen_pids, frozen_at = _stop_victim(victim, mode, conn)
        maintenance, churn = MaintenanceProcess(lane.url), Churn(lane.url, variant, ledger, seed)
        actors += [maintenance, churn]
        maintenance.start()
        churn.start()
        healthy = start_worker(lane, variant, kill_at=None, step_dir=healthy_dir if trace else None, healthy=True)
        time.sleep(churn_seconds)
        churn.stop()
        cell.free_seconds = _time_until_free(dedup, variant, ledger)
        _wait_quiet(monitor, 15)
        _judge(cell, conn, variant, ledger, monitor, frozen_pids, frozen_at, popped=_popped_unstarted(step_dir))
        maintenance.stop()  # its failures reach us when it stops: before the notes, not in the finally
        cell.notes += [f"{a.__class__.__name__}: {f}" for a in actors for f in a.failures[:2]]
        cell.notes += ledger.errors[:3]
    finally:
        for actor in actors:
            actor.stop()
        if healthy:
            healthy.stop()
        victim.kill_all()
        victim.stop()
        cell.around = [s for s in read_steps(step_dir) if k - 3 <= s.n <= k + 1]
        cell.trace = _trace(step_dir, healthy_dir, ledger, monitor, conn)
        shutil.rmtree(step_dir, ignore_errors=True)
        shutil.rmtree(healthy_dir, ignore_errors=True)
        conn.close()
    return cell


def _trace(step_dir: Path, healthy_dir: Path, ledger: Ledger, monitor: Monitor, conn: redis.Redis) -> list[str]:
    """The victim's and the healthy worker's steps, every admission and cancel, every changed
    sample and the jobs' logged runs, in one list ordered by time (all clocks are this host's)."""
    rows: list[tuple[float, str]] = []
    for who, directory in (("victim", step_dir), ("healthy", healthy_dir)):
        log = directory / "steps.tsv"
        if not log.exists():
            continue
        for line in log.read_text().splitlines():
            n, pid, role, t, text = line.split("\t", 4)
            if who == "healthy" and not any(w in text for w in (*STATE_WORDS, "LMOVE", "HGETALL", "WATCH")):
                continue  # the healthy worker's idle chatter (worker hash, pubsub, INFO)
            rows.append((float(t), f"{who} step {n} {role}[{pid}] {text[:600]}"))
    with ledger.lock:
        rows += [(t, f"ledger {what}") for t, what in ledger.events]
    rows += [(t, f"sample {what}") for t, what in monitor.timeline]
    try:
        for raw in conn.lrange(tasks.step_log_key(KEY), 0, -1):
            ev = json.loads(raw)
            rows.append((float(ev["t"]), f"run {ev['ev']} {ev['job']} pid {ev['pid']}"
                         + (f" admitted {ev['admitted']}" if "admitted" in ev else "")))
    except redis.RedisError as exc:
        rows.append((time.time(), f"(step log unreadable: {exc})"))
    rows.sort(key=lambda r: r[0])
    start = rows[0][0] if rows else 0.0
    return [f"{t - start:8.3f} {what}" for t, what in rows]


def _wait_trip(victim: RQWorker, step_dir: Path) -> bool:
    """True when the worker reached step k+1; False when it ended (or hung) before."""
    trip = step_dir / "trip"
    try:
        wait_for(lambda: trip.exists() or victim.proc.poll() is not None, 30, what="the kill step")
    except AssertionError:
        return False
    return trip.exists()


def _stop_victim(victim: RQWorker, mode: str, conn: redis.Redis) -> tuple[set[int], float]:
    pids = {victim.proc.pid, *victim.horse_pids()}
    frozen_at = time.time()
    if mode == "kill":
        victim.kill_all()
    else:
        victim.freeze_all()
    # The victim's scheduler lock would block promotion for its 61 s TTL: let it lapse now.
    conn.delete(SCHEDULER_LOCKING_KEY_TEMPLATE % QUEUE)
    return pids, frozen_at


def _time_until_free(dedup: Deduplicator, variant: Variant, ledger: Ledger) -> float | None:
    """Seconds from the end of the churn until status says free and a reject admission gets in."""
    start = time.monotonic()
    while time.monotonic() - start < FREE_BOUND:
        if not dedup.status(KEY).pending:
            admission = variant.admit(dedup, "reject", churn=True)
            ledger.record("final", admission)
            if admission.admitted:
                return round(time.monotonic() - start, 2)
        time.sleep(0.1)
    return None


def _wait_quiet(monitor: Monitor, timeout: float) -> None:
    """Let the healthy worker run the last admission (and whatever RQ still had) to its end."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and step_judge.live_count(monitor.sample()):
        time.sleep(0.1)
    time.sleep(0.2)


def _popped_unstarted(step_dir: Path) -> bool:
    """True when the victim's last dequeue was an LPOP/BLPOP and it never sent the MULTI that
    marks a job started. With several queues RQ 2.12 dequeues by LPOP/BLPOP (no
    intermediate list, rq/queue.py Queue.lpop / Queue.dequeue_any): the popped id is then
    in no list or registry of RQ's, and nothing of RQ's will ever run or fail it."""
    popped = False
    for step in read_steps(step_dir):
        if not step.sent:
            continue
        if step.text.startswith(("LPOP rq:queue:", "BLPOP rq:queue:")):
            popped = True
        elif "LMOVE" in step.text or "status=started" in step.text:
            popped = False
    return popped


def _judge(cell: Cell, conn: redis.Redis, variant: Variant, ledger: Ledger, monitor: Monitor,
           frozen_pids: set[int], frozen_at: float, popped: bool = False) -> None:
    events = [json.loads(e) for e in conn.lrange(tasks.step_log_key(KEY), 0, -1)]
    for ev in events:
        if ev["ev"] == "admitted":
            ledger.admitted.setdefault(ev["admitted"], "follow-up from the task")
    runs = step_judge.executions(events, frozen_pids, frozen_at)
    cell.duplicates = monitor.duplicates + step_judge.overlaps(runs)
    final = monitor.sample()
    if (late := step_judge.duplicate(final)) is not None:
        cell.duplicates.append(f"at the end: {late}")
    ran = {r.job_id for r in runs}
    for job_id, how in ledger.admitted.items():
        if job_id not in ran:
            _judge_unrun(cell, conn, variant, final, job_id, how, popped)


def _judge_unrun(cell: Cell, conn: redis.Redis, variant: Variant, final: step_judge.State, job_id: str,
                 how: str, popped: bool = False) -> None:
    """An admitted job that never ran: cancelled by dedupkit, failed by RQ, lost by RQ, or lost."""
    view = final.jobs.get(job_id)
    status = view.status if view else None
    if (status == "queued" and popped and how == "first" and view is not None
            and step_judge.live_reason(final, view) is None):
        cell.rq_failed.append(f"{job_id} ({how}): LPOPed by the killed worker, never started: RQ lost it "
                              "(several queues: rq/queue.py Queue.lpop, no intermediate list)")
        return
    if status == "canceled":
        return
    if status in ("failed", "stopped"):
        result = Job.fetch(job_id, connection=conn).latest_result()
        reason = ((result.exc_string if result else None) or "").strip().splitlines()[-1:] or ["?"]
        cell.rq_failed.append(f"{job_id} ({how}): {status} by RQ: {reason[0][:100]}")
        return
    if status is None and variant.ttl_drops:
        cell.rq_failed.append(f"{job_id} ({how}): hash expired (ttl) before it ran: RQ dropped it")
        return
    live = step_judge.live_reason(final, view) if view else None
    cell.losses.append(f"{job_id} ({how}): never ran; status {status}, live {live}")


# -- the matrix -------------------------------------------------------------------------

def record_sequence(lane: Lane, variant: Variant) -> list[Step]:
    """A count-only run: the worker's steps for one admitted job, from the run itself."""
    conn = lane.fresh()
    dedup = Deduplicator(Queue(QUEUE, connection=conn), due_margin=DUE_MARGIN)
    step_dir = Path(tempfile.mkdtemp(prefix="stepcount-"))
    variant.admit(dedup, "reject")
    worker = start_worker(lane, variant, kill_at=0, step_dir=step_dir)
    try:
        if variant.scheduler:  # not burst: stop once nothing of the key is live any more
            probe = Monitor(lane.url, QUEUE)
            time.sleep(variant.delay or 0)
            wait_for(lambda: not step_judge.live_count(probe.sample()), 30, what="the job to end")
            time.sleep(0.5)
        else:
            worker.proc.wait(60)
    finally:
        worker.stop()
        conn.close()
    steps = read_steps(step_dir)
    shutil.rmtree(step_dir, ignore_errors=True)
    return steps


def choose_steps(steps: list[Step], full: bool, per_phase: int | None) -> list[int]:
    """Which k to stop after: every step, the state-writing ones, or the first few of each phase."""
    last = max((s.n for s in steps if s.writes_state), default=0)
    candidates = [s for s in steps if s.n < last or (s.n == last and full)]
    if full:
        return [s.n for s in candidates]
    writers = [s for s in candidates if s.writes_state]
    if per_phase is None:
        return [s.n for s in writers]
    picked: dict[str, list[int]] = {}
    for s in writers:
        if len(picked.setdefault(s.phase, [])) < per_phase:
            picked[s.phase].append(s.n)
    return sorted(n for ns in picked.values() for n in ns)


def run_matrix(names: Iterable[str], mode: str, full: bool, lanes: int, churn_seconds: float,
               per_phase: int | None = None, out: Callable[[str], None] = print,
               only_k: list[int] | None = None, repeat: int = 1, trace: bool = False) -> list[Cell]:
    pool = [Lane() for _ in range(lanes)]
    free = list(pool)
    guard = threading.Lock()

    def on_lane(fn: Callable[[Lane], Any]) -> Any:
        with guard:
            lane = free.pop()
        try:
            return fn(lane)
        finally:
            with guard:
                free.append(lane)

    cells: list[Cell] = []
    try:
        with ThreadPoolExecutor(lanes) as ex:
            variants = [VARIANTS[n] for n in names]
            sequences = list(ex.map(lambda v: on_lane(lambda lane: record_sequence(lane, v)), variants))
            jobs = []
            for variant, steps in zip(variants, sequences, strict=True):
                ks = only_k if only_k else choose_steps(steps, full, per_phase)
                out(f"# {variant.name}: {len(steps)} steps recorded, stopping after k in {ks}")
                for s in steps:
                    out(f"#   {s}")
                for k in ks:
                    for r in range(repeat):
                        jobs.append(ex.submit(on_lane, lambda lane, v=variant, k=k, r=r: run_cell(
                            lane, v, k, mode, churn_seconds, seed=k + 1000 * r, trace=trace)))
            try:
                for job in jobs:
                    cell = job.result()
                    cells.append(cell)
                    out(_cell_line(cell))
            except BaseException:
                ex.shutdown(cancel_futures=True)  # Ctrl-C: finish the running cells only
                raise
    finally:
        for lane in pool:
            lane.close()
    return cells


def _cell_line(cell: Cell) -> str:
    verdict = "FAIL" if cell.failed else ("not reached" if not cell.reached else "ok")
    return (f"  {cell.variant} k={cell.k}: {verdict} dup={len(cell.duplicates)} lost={len(cell.losses)} "
            f"rq_failed={len(cell.rq_failed)} free={cell.free_seconds}")


def report(cells: list[Cell], mode: str, trace: bool = False) -> str:
    lines = [f"mode={mode}", f"{'variant':<18} {'cells':>5} {'dups':>5} {'losses':>6} {'rq-failed':>9} "
             f"{'max s free':>10}  failing k"]
    by_variant: dict[str, list[Cell]] = {}
    for c in cells:
        if c.reached:
            by_variant.setdefault(c.variant, []).append(c)
    for name, group in by_variant.items():
        frees = [c.free_seconds for c in group if c.free_seconds is not None]
        never = sum(1 for c in group if c.free_seconds is None)
        free_text = f"{max(frees):.1f}" if frees else "-"
        if never:
            free_text += f" ({never} never)"
        failing = ",".join(str(c.k) for c in group if c.failed) or "-"
        lines.append(f"{name:<18} {len(group):>5} {sum(1 for c in group if c.duplicates):>5} "
                     f"{sum(1 for c in group if c.losses):>6} {sum(len(c.rq_failed) for c in group):>9} "
                     f"{free_text:>10}  {failing}")
    lines.append("(dups / losses: cells with at least one; rq-failed: admitted jobs RQ failed before they ran)")
    failing_cells = [c for c in cells if c.failed]
    if failing_cells:
        lines.append("\nFailing cells:")
    for c in failing_cells:
        lines.append(f"- {c.variant} k={c.k} ({c.mode}), free after {c.free_seconds}s")
        lines += [f"    duplicate: {d}" for d in c.duplicates]
        lines += [f"    lost: {x}" for x in c.losses]
        lines += [f"    note: {n}" for n in c.notes]
        lines += [f"    step {s}" for s in c.around]
    if trace:
        for c in (failing_cells or [c for c in cells if c.reached]):
            lines.append(f"\nTrace of {c.variant} k={c.k} ({c.mode}){' FAILING' if c.failed else ''}:")
            lines += [f"  {row}" for row in c.trace]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    # RQ's maintenance in this process logs every lock and cleanup; the table is the output.
    logging.getLogger("rq").setLevel(logging.ERROR)
    logging.getLogger("dedupkit").setLevel(logging.WARNING)
    args_in = argv if argv is not None else sys.argv[1:]
    if args_in[:1] == ["--maintenance-loop"]:
        logging.getLogger("rq").setLevel(logging.CRITICAL)  # RQ logs the callback errors it re-raises
        return maintenance_loop(args_in[1])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--variant", action="append", choices=sorted(VARIANTS), help="repeatable; default all")
    parser.add_argument("--mode", choices=("kill", "stop"), default="kill")
    parser.add_argument("--full", action="store_true", help="every step, not only the state-writing ones")
    parser.add_argument("--per-phase", type=int, default=None, help="sample the first N steps of each phase")
    parser.add_argument("--lanes", type=int, default=2, help="cells in parallel, one redis-server each")
    parser.add_argument("--churn-seconds", type=float, default=4.0)
    parser.add_argument("--k", type=int, action="append", default=None,
                        help="run only this step k (repeatable); the recorded steps are still printed")
    parser.add_argument("--repeat", type=int, default=1, help="run each chosen cell this many times")
    parser.add_argument("--trace", action="store_true",
                        help="print each failing cell's trace (every cell's when none failed): the victim's "
                             "steps, every admission/cancel and its answer, every changed sample of RQ's data")
    args = parser.parse_args(argv)
    started = time.monotonic()
    cells = run_matrix(args.variant or list(VARIANTS), args.mode, args.full, args.lanes, args.churn_seconds,
                       args.per_phase, only_k=args.k, repeat=args.repeat, trace=args.trace)
    print(report(cells, args.mode, trace=args.trace))
    print(f"\n{len(cells)} cells in {time.monotonic() - started:.0f} s: "
          f"python -m tests.step_matrix {' '.join(argv if argv is not None else sys.argv[1:])}")
    return 1 if any(c.failed for c in cells) else 0


if __name__ == "__main__":
    sys.exit(main())

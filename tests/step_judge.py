"""The step matrix's judge: reads RQ's own data (never dedupkit's) and says what RQ would still run.

A job of the key is *live* when RQ would still run it or may revive it:
- one of its executions holds an unexpired lease in the started registry (a running horse,
  whatever the job's status or hash says), except a final status (finished, failed,
  stopped, canceled) without retries left: RQ leaves such a lease behind when it re-runs
  its success transaction after a WatchError (no horse runs the job; RQ's cleanup will
  only fail it), and an actual second run is caught by the run log instead;
- its id sits in the queue list or the scheduled registry and its hash exists (RQ runs or
  promotes whatever id it finds there), or in the intermediate list (a worker dequeued
  it) while still ``queued`` or with retries left;
- status ``deferred`` (it runs when its dependency ends);
- an expired lease still in the started registry and ``retries_left`` > 0, whatever the
  status (RQ's ``StartedJobRegistry.cleanup`` will ``job.retry()`` it).
A duplicate is two live jobs at one sampled moment, not counting a deferred job whose
dependency is itself live (a follow-up waiting behind its holder), or two executions of the
key whose logged [start, end] overlap.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import redis
from rq import Queue
from rq.job import Job

JOB_NS = Job.redis_job_namespace_prefix
FINAL = frozenset({"finished", "failed", "stopped", "canceled"})


@dataclass
class JobView:
    job_id: str
    status: str | None
    retries_left: int
    dependencies: list[str]


@dataclass
class State:
    """One atomic (MULTI/EXEC) read of a queue's lists and registries and the key's job hashes."""

    now: float
    queued: set[str]
    intermediate: set[str]
    scheduled: set[str]
    leases: dict[str, list[float]]
    jobs: dict[str, JobView] = field(default_factory=dict)
    lease_ids: dict[str, list[str]] = field(default_factory=dict)  # job id -> execution ids, as leases


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode()


def _dependencies(ids: bytes | None, single: bytes | None) -> list[str]:
    if ids:
        return [str(i) for i in json.loads(ids)]
    return [single.decode()] if single else []


def read_state(conn: redis.Redis, queue: Queue, id_prefix: str) -> State:
    """Read everything the judge needs in one transaction, so no RQ step lands half-seen."""
    found = (k.decode()[len(JOB_NS):] for k in conn.scan_iter(match=f"{JOB_NS}{id_prefix}*", count=1000))
    ids = sorted(i for i in found if ":" not in i)  # skip rq:job:<id>:dependents and the like
    with conn.pipeline(transaction=True) as pipe:
        pipe.time()
        pipe.lrange(queue.key, 0, -1)
        pipe.lrange(queue.intermediate_queue_key, 0, -1)
        pipe.zrange(queue.scheduled_job_registry.key, 0, -1)
        pipe.zrange(queue.started_job_registry.key, 0, -1, withscores=True)
        for job_id in ids:
            pipe.hmget(Job.key_for(job_id), "status", "retries_left", "dependency_ids", "dependency_id")
        clock, queued, inter, sched, wip, *hashes = pipe.execute()
    leases: dict[str, list[float]] = {}
    lease_ids: dict[str, list[str]] = {}
    for member, score in wip:
        job_id, exec_id = member.decode().rsplit(":", 1)
        leases.setdefault(job_id, []).append(float(score))
        lease_ids.setdefault(job_id, []).append(exec_id)
    state = State(clock[0] + clock[1] / 1e6, {q.decode() for q in queued}, {i.decode() for i in inter},
                  {s.decode() for s in sched}, leases, lease_ids=lease_ids)
    for job_id, (status, retries, dep_ids, dep_id) in zip(ids, hashes, strict=True):
        if status is None and retries is None and dep_ids is None:
            continue  # hash gone, or a bare heartbeat hash (rq#1450): not a job RQ can run
        state.jobs[job_id] = JobView(job_id, _text(status), int(retries or 0), _dependencies(dep_ids, dep_id))
    return state


def live_reason(state: State, job: JobView) -> str | None:
    """Why RQ would still run (or revive) ``job``, or None."""
    leases = state.leases.get(job.job_id, [])
    if any(score > state.now or math.isinf(score) for score in leases):
        if job.status in FINAL and job.retries_left <= 0:
            # A lease left behind by RQ itself: handle_job_success re-run after a WatchError
            # writes 'finished' without removing the execution (its worker dropped it in the
            # aborted first run). No horse runs it; at expiry RQ's cleanup only fails it. A
            # second execution would show in the run log (overlaps), not here.
            return None
        return f"lease({job.status})"
    if job.job_id in state.intermediate and (job.status == "queued" or job.retries_left > 0):
        # A worker that dequeued it starts it; if that worker died, RQ's intermediate cleanup
        # fails it through handle_job_failure, which retries it while retries are left.
        return f"intermediate({job.status})"
    if job.job_id in state.queued:
        return f"queue({job.status})"
    if job.job_id in state.scheduled:
        return f"scheduled-registry({job.status})"
    if job.status == "deferred":
        return "deferred"
    if leases and job.retries_left > 0:
        # An expired lease still in the registry: RQ's cleanup will job.retry() it, whatever
        # the status says (a horse killed after Job.retry() wrote 'scheduled' is one).
        return f"dead-with-retries({job.status},{job.retries_left})"
    return None


def duplicate(state: State) -> str | None:
    """Describe two live jobs of the key at this moment, or None."""
    live = {j.job_id: r for j in state.jobs.values() if (r := live_reason(state, j)) is not None}
    counted = [
        f"{job_id} {reason}" for job_id, reason in live.items()
        if reason != "deferred" or not any(d in live for d in state.jobs[job_id].dependencies)
    ]
    return " & ".join(counted) if len(counted) > 1 else None


def live_count(state: State) -> int:
    return sum(1 for j in state.jobs.values() if live_reason(state, j) is not None)


@dataclass(frozen=True)
class Execution:
    job_id: str
    pid: int
    start: float
    end: float  # inf: never logged its end and was not among the processes we froze


def executions(events: list[dict[str, object]], frozen_pids: set[int], frozen_at: float) -> list[Execution]:
    """Pair each logged start with its end; an execution we killed or froze ended when we did."""
    open_runs: dict[tuple[str, int], float] = {}
    runs: list[Execution] = []
    for ev in sorted(events, key=lambda e: float(e["t"])):  # type: ignore[arg-type]
        ident = (str(ev["job"]), int(ev["pid"]))  # type: ignore[call-overload]
        if ev["ev"] == "start":
            open_runs[ident] = float(ev["t"])  # type: ignore[arg-type]
        elif ev["ev"] == "end" and ident in open_runs:
            runs.append(Execution(*ident, open_runs.pop(ident), float(ev["t"])))  # type: ignore[arg-type]
    for (job_id, pid), start in open_runs.items():
        runs.append(Execution(job_id, pid, start, frozen_at if pid in frozen_pids else math.inf))
    return sorted(runs, key=lambda r: r.start)


def overlaps(runs: list[Execution]) -> list[str]:
    """Pairs of executions of the key that ran at the same time."""
    found: list[str] = []
    for i, first in enumerate(runs):
        for second in runs[i + 1:]:
            if second.start < first.end:
                found.append(f"{first.job_id}[pid {first.pid}] overlaps {second.job_id}[pid {second.pid}] "
                             f"by {min(first.end, second.end) - second.start:.2f}s")
    return found


def describe_state(state: State) -> str:
    """One line per sample for a trace: each job's status, where RQ holds it, its leases
    (seconds left), and why it counts as live."""
    parts = []
    for job in state.jobs.values():
        where = [name for name, ids in (("queue", state.queued), ("inter", state.intermediate),
                                        ("sched", state.scheduled)) if job.job_id in ids]
        leases = ",".join(f"{e[:4]}:" + ("inf" if math.isinf(s) else f"{s - state.now:+.1f}")
                          for s, e in zip(state.leases.get(job.job_id, []), state.lease_ids.get(job.job_id, []),
                                          strict=False))
        live = live_reason(state, job)
        parts.append(f"{job.job_id[-6:]}:{job.status}"
                     + (f"[{'/'.join(where)}]" if where else "")
                     + (f" lease({leases})" if leases else "")
                     + (f" r{job.retries_left}" if job.retries_left else "")
                     + (" LIVE" if live else ""))
    return "; ".join(parts) or "(no jobs)"

"""A fleet half old, half new during a deploy, against a real redis-server and a real rq worker.

The old code is the seed's: scan RQ's queue, scheduled and started registries for ids
``email_process_<user>_…``, enqueue with ``queue.enqueue(f, job_id=...)`` if none. The new
code is ``job_utils.enqueue``. Judged from RQ's own data only (statuses of the jobs on the
queue): at most one pending job per user, except in the window the README names, which the
last test shows.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
import redis
from rq import Queue
from rq.job import Job

from dedupkit import job_utils, legacy

from .support import RQWorker, wait_for

QUEUE = "email_processing"
TASK = "tests.tasks.work"
PENDING = {"queued", "scheduled", "started", "deferred", "ready_to_enqueue", "rate_limited"}


@pytest.fixture(autouse=True)
def seed_prefix() -> Iterator[None]:
    job_utils.configure(job_id_prefix="email_process", legacy_scan=True)
    yield
    job_utils.configure(job_id_prefix=job_utils.DEFAULT_JOB_ID_PREFIX, legacy_scan=True)


def old_scan(queue: Queue, user: int, *, intermediate: bool = True) -> bool:
    """The seed's check: any id ``email_process_<user>_`` in the queue, scheduled or started
    registry; with ``intermediate``, also in the list of ids a worker has just dequeued. The
    seed did not look there, so it duplicates by itself while a worker is between its two
    dequeue steps (shown below); the fleet test gives the old side that list so that what it
    judges is the mix, not that blind spot of the old code."""
    start = f"email_process_{user}_"
    ids = [*queue.get_job_ids(), *queue.scheduled_job_registry.get_job_ids(),
           *queue.started_job_registry.get_job_ids()]
    if intermediate:
        ids += [i.decode() for i in queue.connection.lrange(queue.intermediate_queue_key, 0, -1)]
    return any(i.startswith(start) for i in ids)


def old_enqueue(queue: Queue, user: int, *args: object) -> Job:
    """The seed's enqueue, unconditional: it does not read dedupkit's slot."""
    return queue.enqueue(TASK, *args, job_id=job_utils.generate_job_id(user))


def pending_per_user(conn: redis.Redis) -> Counter[str]:
    """From RQ's data: every job hash of the queue whose status RQ reads as pending, by user."""
    counts: Counter[str] = Counter()
    for key in conn.scan_iter(match=Job.key_for("email_process_*")):
        status, origin = conn.hmget(key, "status", "origin")
        if status and origin == QUEUE.encode() and status.decode() in PENDING:
            counts[key.decode().split("_")[-2]] += 1
    return counts


def test_mixed_fleet_interleaved_keeps_one_pending_job_per_user(real_redis: redis.Redis,
                                                                workers: Callable[..., RQWorker]) -> None:
    """Old-style enqueues and new-style admissions, one at a time, in a random order, while a
    real worker runs the jobs: never two pending jobs for a user."""
    queue = Queue(QUEUE, connection=real_redis)
    workers(QUEUE)
    rng = random.Random(12)
    old = new = old_skipped = new_conflicts = 0
    worst: Counter[str] = Counter()
    log: list[str] = []
    for step in range(160):
        user = rng.randrange(4)
        if rng.random() < 0.5:
            if old_scan(queue, user):
                old_skipped += 1
                log.append(f"{step} old {user} skip")
            else:
                old_enqueue(queue, user, f"old-{step}", 0.15)
                old += 1
                log.append(f"{step} old {user} enq {time.time():.3f}")
        elif (adm := job_utils.enqueue(real_redis, user, TASK, f"new-{step}", 0.15, queue_name=QUEUE)).admitted:
            new += 1
            log.append(f"{step} new {user} adm {adm.job_id} {time.time():.3f}")
        else:
            new_conflicts += 1
            log.append(f"{step} new {user} conflict {adm.job_id}")
        counts = pending_per_user(real_redis)
        if max(counts.values(), default=0) > 1:
            jobs = {k.decode(): [v.decode() for v in real_redis.hmget(k, "status", "description", "enqueued_at",
                                                                        "started_at", "ended_at")]
                    for k in real_redis.scan_iter(match=Job.key_for("email_process_*"))}
            raise AssertionError(f"step {step}: two pending jobs for a user: {counts}; log {log[-6:]}; jobs {jobs}")
        worst |= counts
        time.sleep(rng.random() * 0.08)
    # Both sides got jobs in and both were turned away: the mix was exercised, not one side alone.
    assert min(old, new, old_skipped, new_conflicts) >= 3, (old, new, old_skipped, new_conflicts)
    wait_for(lambda: not pending_per_user(real_redis), 60, what="the worker to run every job")
    runs = sum(real_redis.llen(k) for k in real_redis.scan_iter(match="test:runs:*"))
    assert runs == old + new, "every admitted or old-style job ran, once"


def test_the_window_the_new_side_cannot_close(real_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's stated window: an old process's enqueue landing inside another process's
    check-then-enqueue. The old code does not read dedupkit's slot, so the new side alone
    cannot close it; once no old process runs, it is gone."""
    queue = Queue(QUEUE, connection=real_redis)
    # (a) The old process checks (nothing), the new one admits, the old one enqueues anyway.
    assert not old_scan(queue, 1)
    assert job_utils.enqueue(real_redis, 1, TASK, queue_name=QUEUE).admitted
    old_enqueue(queue, 1)
    assert pending_per_user(real_redis)["1"] == 2, "the old code's own race: a duplicate"

    # (b) The new process scans (nothing), the old one checks and enqueues, the new one admits.
    real_scan = legacy.scan

    def scan_then_old_enqueue(*args: object, **kwargs: object) -> list[legacy.LegacyJob]:
        found = real_scan(*args, **kwargs)  # type: ignore[arg-type]
        if not old_scan(queue, 2):
            old_enqueue(queue, 2)
        return found

    monkeypatch.setattr(legacy, "scan", scan_then_old_enqueue)
    assert job_utils.enqueue(real_redis, 2, TASK, queue_name=QUEUE).admitted
    assert pending_per_user(real_redis)["2"] == 2, "an old enqueue between the new scan and the admission"
    monkeypatch.undo()

    # Once no old process runs: the adopt of the migration gives old jobs their slots, and
    # new admissions alone (no scan) keep one pending job per user.
    queue.enqueue(TASK, job_id=job_utils.generate_job_id(3))
    job_utils.configure(legacy_scan=False)
    counts = job_utils.deduplicator(real_redis, QUEUE).adopt("email_process_{key}_*")
    assert counts["adopted"] >= 1
    assert not job_utils.enqueue(real_redis, 3, TASK, queue_name=QUEUE).admitted
    assert pending_per_user(real_redis)["3"] == 1


def test_the_seeds_own_scan_misses_a_job_a_worker_has_just_dequeued(real_redis: redis.Redis) -> None:
    """Dequeue is two steps (LMOVE to the intermediate list, later 'started'): in between, the
    seed's scan finds nothing and the old code enqueues a second job by itself. The drop-in
    functions look in that list too, and judge by RQ's status ('queued')."""
    queue = Queue(QUEUE, connection=real_redis)
    first = old_enqueue(queue, 4)
    real_redis.lmove(queue.key, queue.intermediate_queue_key, "LEFT", "RIGHT")  # a worker's first dequeue step
    assert first.get_status() == "queued"
    assert not old_scan(queue, 4, intermediate=False), "the seed's scan is blind here"
    assert job_utils.has_user_job_pending(real_redis, 4, QUEUE) and job_utils.is_user_job_queued(real_redis, 4, QUEUE)
    assert not job_utils.enqueue(real_redis, 4, TASK, queue_name=QUEUE).admitted

    # The migration's one-off adopt reads that list too.
    other = old_enqueue(queue, 5)
    real_redis.lmove(queue.key, queue.intermediate_queue_key, "LEFT", "RIGHT")
    assert job_utils.deduplicator(real_redis, QUEUE).adopt("email_process_{key}_*")["adopted"] == 1
    assert job_utils.deduplicator(real_redis, QUEUE).status(5).job_id == other.id

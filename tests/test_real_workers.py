"""Admitted jobs run on real `rq worker` processes against a real redis-server; slots free
after success, failure and a SIGKILLed worker (once its heartbeat lease has expired)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

import redis
from rq import Queue, Retry
from rq.job import Job, JobStatus

from dedupkit import Deduplicator, JobState

from .support import RQWorker, wait_for

TASK = "tests.tasks.work"


def _dedup(real_redis: redis.Redis) -> Deduplicator:
    return Deduplicator(Queue("test", connection=real_redis))


def _status(conn: redis.Redis, job_id: str) -> JobStatus:
    return Job.fetch(job_id, connection=conn).get_status()


def test_immediate_job_runs_and_frees_the_slot_after_success_and_failure(
        real_redis: redis.Redis, workers: Callable[..., RQWorker]) -> None:
    dedup = _dedup(real_redis)
    workers()
    ok = dedup.enqueue("ok", TASK, "ok", 1.0)
    bad = dedup.enqueue("bad", "tests.tasks.fail", "bad", 1.0)
    wait_for(lambda: dedup.is_running("ok"), 20, what="the first job to start")
    assert not dedup.enqueue("ok", TASK, "ok").admitted
    assert dedup.is_queued("bad") and not dedup.enqueue("bad", TASK, "bad").admitted
    wait_for(lambda: not dedup.has_pending("ok") and not dedup.has_pending("bad"), 30, what="jobs to end")
    assert _status(real_redis, ok.job_id) == JobStatus.FINISHED
    assert _status(real_redis, bad.job_id) == JobStatus.FAILED
    assert real_redis.llen("test:runs:ok") == 1
    assert dedup.enqueue("ok", TASK, "ok").admitted and dedup.enqueue("bad", TASK, "bad").admitted


def test_scheduled_job_runs_through_the_rq_scheduler(real_redis: redis.Redis,
                                                     workers: Callable[..., RQWorker]) -> None:
    dedup = _dedup(real_redis)
    adm = dedup.enqueue_in(timedelta(seconds=2), "s", TASK, "sched")
    assert dedup.status("s").state is JobState.SCHEDULED
    workers(scheduler=True)
    wait_for(lambda: real_redis.llen("test:runs:sched") == 1, 30, what="the scheduled job to run")
    wait_for(lambda: not dedup.has_pending("s"), 10, what="the slot to free")
    assert _status(real_redis, adm.job_id) == JobStatus.FINISHED
    assert real_redis.llen("test:runs:sched") == 1


def _kill_mid_job(real_redis: redis.Redis, workers: Callable[..., RQWorker], monitoring: int,
                  worker_class: str | None, retries: int = 0) -> tuple[Deduplicator, str, float, RQWorker]:
    dedup = _dedup(real_redis)
    worker = workers(worker_class=worker_class, monitoring_interval=monitoring)
    adm = dedup.enqueue("k", TASK, "k", 300.0, job_timeout=600, **({"retry": Retry(max=retries)} if retries else {}))
    wait_for(lambda: dedup.is_running("k"), 30, what="the job to start")
    # Alive through several heartbeats: the lease keeps being renewed, the key stays blocked.
    time.sleep(2 * monitoring + 1)
    assert dedup.is_running("k") and not dedup.enqueue("k", TASK, "k").admitted
    worker.kill_all()
    killed_at = time.monotonic()
    return dedup, adm.job_id, killed_at, worker


def test_sigkilled_worker_blocks_until_its_lease_expires_then_frees(
        real_redis: redis.Redis, workers: Callable[..., RQWorker]) -> None:
    # Same heartbeat mechanism as RQ's Worker, 2 s of slack instead of 60 (tests/workers.py).
    dedup, job_id, killed_at, _ = _kill_mid_job(real_redis, workers, 1, "tests.workers.ShortLeaseWorker")
    assert dedup.is_running("k"), "right after the kill the lease still lives"
    assert not dedup.enqueue("k", TASK, "k").admitted
    wait_for(lambda: not dedup.has_pending("k"), 15, interval=0.1, what="the lease to expire")
    recovery = time.monotonic() - killed_at
    assert recovery >= 1.0, "freed before the lease could have expired"
    assert _status(real_redis, job_id) == JobStatus.STARTED  # RQ has not noticed yet; we did
    again = dedup.enqueue("k", TASK, "k", 0.1)
    assert again.admitted and again.recovered == "dead"
    # RQ's maintenance (StartedJobRegistry.cleanup) later fails the dead job (no retries):
    # the new job stays the only one.
    queue = Queue("test", connection=real_redis)
    queue.started_job_registry.cleanup()
    assert _status(real_redis, job_id) == JobStatus.FAILED
    assert job_id in queue.failed_job_registry.get_job_ids()
    assert queue.get_job_ids() == [again.job_id]
    print(f"recovered {recovery:.1f}s after SIGKILL (lease slack 2 s, heartbeat 1 s)")


def test_sigkilled_worker_with_retries_left_holds_the_key_until_rq_retries_it(
        real_redis: redis.Redis, workers: Callable[..., RQWorker]) -> None:
    """A dead job with retries left is RQ's to re-queue: the key waits for RQ's cleanup
    (it used to be taken over, and RQ's cleanup then re-queued the old job beside it)."""
    dedup, job_id, _, _ = _kill_mid_job(real_redis, workers, 1, "tests.workers.ShortLeaseWorker", retries=2)
    queue = Queue("test", connection=real_redis)
    wait_for(lambda: real_redis.zrangebyscore(queue.started_job_registry.key, 0, time.time()), 15,
             what="the lease to expire")
    status = dedup.status("k")
    assert status.job_id == job_id and status.pending
    assert not dedup.enqueue("k", TASK, "k").admitted and dedup.sweep() == 0 and not dedup.cancel("k")
    queue.started_job_registry.cleanup()  # RQ's maintenance: the retry
    assert _status(real_redis, job_id) == JobStatus.QUEUED and queue.get_job_ids() == [job_id]
    status = dedup.status("k")
    assert status.job_id == job_id and status.state is JobState.QUEUED


def test_sigkilled_horse_alone_fails_the_job_and_frees_the_slot(
        real_redis: redis.Redis, workers: Callable[..., RQWorker]) -> None:
    import os
    import signal

    dedup = _dedup(real_redis)
    worker = workers(monitoring_interval=1)
    adm = dedup.enqueue("h", TASK, "h", 300.0, job_timeout=600)
    wait_for(lambda: dedup.is_running("h") and worker.horse_pids(), 30, what="the work-horse")
    for pid in worker.horse_pids():
        os.kill(pid, signal.SIGKILL)
    # The surviving worker notices its horse died and fails the job itself.
    wait_for(lambda: _status(real_redis, adm.job_id) == JobStatus.FAILED, 30, what="RQ to fail the job")
    assert not dedup.has_pending("h") and dedup.enqueue("h", TASK, "h").admitted


def test_stock_worker_sigkill_recovery_time(real_redis: redis.Redis, workers: Callable[..., RQWorker]) -> None:
    """RQ's own Worker, heartbeat every 5 s: the lease is 5 + 60 s after the last beat.

    The key must stay blocked for that long (the job could still be running somewhere
    for all anyone knows) and must free soon after, not after RQ's 10-minute maintenance.
    """
    dedup, _, killed_at, _ = _kill_mid_job(real_redis, workers, 5, None)
    time.sleep(50)
    assert dedup.is_running("k") and not dedup.enqueue("k", TASK, "k").admitted
    wait_for(lambda: not dedup.has_pending("k"), 40, interval=0.2, what="the stock lease to expire")
    recovery = time.monotonic() - killed_at
    assert 55 <= recovery <= 75, recovery
    print(f"stock Worker: key recovered {recovery:.1f}s after SIGKILL (job_monitoring_interval=5)")

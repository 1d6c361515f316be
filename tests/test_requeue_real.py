"""Deduplicator.requeue / `dedupkit requeue`: failed jobs back through admission, on a real
redis-server with a real rq worker; never beside a pending job of the same key."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
import redis
from rq import Queue
from rq.job import Job, JobStatus

from dedupkit import Deduplicator, parse_job_id
from dedupkit.cli import main
from dedupkit.requeue import REQUEUED_FROM

from .support import RedisServer, RQWorker, wait_for

FAIL = "tests.tasks.fail"


def failed(queue: Queue, n: int) -> Callable[[], bool]:
    return lambda: queue.failed_job_registry.count >= n


def test_requeue_admits_conflicts_and_skips(real_redis: redis.Redis, workers: Callable[..., RQWorker]) -> None:
    queue = Queue("rq-requeue", connection=real_redis)
    dedup = Deduplicator(queue)
    alice = dedup.enqueue("alice", FAIL, "alice", description="alice's run", meta={"who": "alice"})
    bob = dedup.enqueue("bob", FAIL, "bob")
    legacy = queue.enqueue(FAIL, "legacy", job_id="legacy-1")  # not a dedupkit id
    worker = workers("rq-requeue")
    wait_for(failed(queue, 3), 20, what="three failed jobs")
    # bob has a pending job again: his failed one must not run beside it.
    bob_now = dedup.enqueue_in(timedelta(hours=1), "bob", FAIL, "bob")

    results = {r.job_id: r for r in dedup.requeue()}
    assert results[alice.job_id].outcome == "admitted"  # type: ignore[index]
    assert results[bob.job_id].outcome == "conflict"  # type: ignore[index]
    assert results[bob.job_id].holder_job_id == bob_now.job_id  # type: ignore[index]
    assert (results[legacy.id].outcome, results[legacy.id].reason) == ("skipped", "not_dedupkit")

    registry = set(queue.failed_job_registry.get_job_ids())
    assert registry == {bob.job_id, legacy.id}  # only what was admitted left it
    new_id = results[alice.job_id].new_job_id  # type: ignore[index]
    assert new_id is not None and parse_job_id(new_id) == "alice"
    new = Job.fetch(new_id, connection=real_redis)
    assert (new.func_name, new.args, new.description) == (FAIL, ("alice",), "alice's run")
    assert new.meta["who"] == "alice" and new.meta[REQUEUED_FROM] == alice.job_id
    # The worker runs it (and it fails again, as the task always does).
    wait_for(lambda: new.get_status(refresh=True) == JobStatus.FAILED, 20, what="the requeued job to run")
    assert real_redis.llen("test:runs:alice") == 2 and real_redis.llen("test:runs:bob") == 1
    worker.stop()


def test_requeue_of_named_jobs_and_a_replayed_requeue(real_redis: redis.Redis,
                                                     workers: Callable[..., RQWorker]) -> None:
    queue = Queue("rq-requeue", connection=real_redis)
    dedup = Deduplicator(queue)
    carol = dedup.enqueue("carol", FAIL, "carol")
    workers("rq-requeue")
    wait_for(failed(queue, 1), 20, what="a failed job")
    first = dedup.requeue([carol.job_id, "job_nobody_1", "no-such"])  # type: ignore[list-item]
    assert [(r.outcome, r.reason) for r in first] == [("admitted", None), ("skipped", "gone"),
                                                      ("skipped", "not_dedupkit")]
    # Asking again: the failed job is no longer failed (deleted once re-admitted).
    assert [r.outcome for r in dedup.requeue([carol.job_id])] == ["skipped"]  # type: ignore[list-item]


def test_cli_requeue(real_server: RedisServer, real_redis: redis.Redis, workers: Callable[..., RQWorker],
                     capsys: pytest.CaptureFixture[str]) -> None:
    queue = Queue("rq-requeue", connection=real_redis)
    dedup = Deduplicator(queue, job_id_prefix="email_process")
    dave = dedup.enqueue("dave@example.com", FAIL, "dave")
    workers("rq-requeue")
    wait_for(failed(queue, 1), 20, what="a failed job")
    assert main(["requeue", "rq-requeue", "--url", real_server.url]) == 2  # neither ids nor --all
    capsys.readouterr()
    code = main(["requeue", "rq-requeue", "--all", "--prefix", "email_process", "--url", real_server.url])
    out = capsys.readouterr().out
    assert code == 0 and f"{dave.job_id}: admitted as email_process_dave-40example-2ecom_" in out
    assert "1 admitted, 0 conflict, 0 skipped" in out

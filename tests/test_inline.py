"""Queue(is_async=False), RQ's inline mode: the admitted job runs before enqueue returns,
and the slot ends with it (fakeredis and real Redis)."""

from __future__ import annotations

import redis
from rq import Queue
from rq.job import JobStatus

from dedupkit import Deduplicator, EnqueueRequest

TASK, FAIL = "tests.tasks.work", "tests.tasks.fail"


def test_the_job_runs_inline_and_frees_its_key(conn: redis.Redis) -> None:
    queue = Queue("inline", connection=conn, is_async=False)
    dedup = Deduplicator(queue)
    first = dedup.enqueue("alice", TASK, "inline")
    assert first.admitted and first.job is not None
    assert first.job.get_status() == JobStatus.FINISHED and first.job.return_value() == "done"
    assert not first.status.pending
    assert first.status.last_run is not None and first.status.last_run.status == "finished"
    assert conn.llen(queue.key) == 0  # never left for a worker
    # The job ended at once, so the next request is admitted and runs too.
    second = dedup.enqueue("alice", TASK, "inline")
    assert second.admitted and second.job_id != first.job_id
    assert conn.llen("test:runs:inline") == 2


def test_a_failing_job_fails_inline(conn: redis.Redis) -> None:
    queue = Queue("inline", connection=conn, is_async=False)
    adm = Deduplicator(queue).enqueue("bob", FAIL, "inline-fail")
    assert adm.admitted and adm.job is not None and adm.job.get_status() == JobStatus.FAILED
    assert not adm.status.pending and adm.status.last_run is not None and adm.status.last_run.status == "failed"
    assert adm.job.id in queue.failed_job_registry


def test_a_pending_holder_still_conflicts_and_nothing_runs(conn: redis.Redis) -> None:
    holder = Deduplicator(Queue("inline", connection=conn)).enqueue("carol", TASK, "held")  # async queue
    inline = Deduplicator(Queue("inline", connection=conn, is_async=False))
    adm = inline.enqueue("carol", TASK, "inline-conflict")
    assert not adm.admitted and adm.job_id == holder.job_id
    assert conn.llen("test:runs:inline-conflict") == 0
    assert conn.lrange("rq:queue:inline", 0, -1) == [holder.job_id.encode()]  # type: ignore[union-attr]


def test_enqueue_many_runs_each_admitted_job_and_leaves_scheduled_ones(conn: redis.Redis) -> None:
    from datetime import timedelta

    queue = Queue("inline", connection=conn, is_async=False)
    adms = Deduplicator(queue).enqueue_many([EnqueueRequest("a", TASK, ("many",)), EnqueueRequest("b", TASK, ("many",)),
                                             EnqueueRequest("c", TASK, ("many",), at=timedelta(hours=1))])
    assert [a.admitted for a in adms] == [True, True, True]
    assert conn.llen("test:runs:many") == 2
    assert not adms[0].status.pending and not adms[1].status.pending
    assert adms[2].status.has_scheduled_job  # RQ's own enqueue_at schedules on an inline queue too

"""RQ's scheduler promotes due jobs in two steps (read the due ids, later write them back
as queued, without WATCH). A cancel between the two is undone. Driven step by step with
RQ's own code, on a scheduler host whose clock runs 30 s ahead of the Redis server's."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest
import redis
from rq import Queue
from rq.job import Job

from dedupkit import Deduplicator

from .snapshot import violations

SKEW = 30


def _promote_with_cancel_between(dedup: Deduplicator, queue: Queue, key: str) -> bool:
    """RQScheduler.enqueue_scheduled_jobs (rq 2.12), with dedup.cancel(key) after its read."""
    registry = queue.scheduled_job_registry
    job_ids = registry.get_jobs_to_schedule(int(time.time()) + SKEW)
    cancelled = dedup.cancel(key)
    with queue.connection.pipeline() as pipe:
        for job in Job.fetch_many(job_ids, connection=queue.connection):
            if job is not None:
                queue._enqueue_job(job, pipeline=pipe, at_front=job.should_enqueue_at_front())
        for job_id in job_ids:
            registry.remove(job_id, pipeline=pipe)
        pipe.execute()
    return cancelled


@pytest.mark.parametrize(("due_margin", "duplicate"), [(0.0, True), (60.0, False)])
def test_cancel_during_promotion(conn: redis.Redis, due_margin: float, duplicate: bool) -> None:
    queue = Queue("test", connection=conn)
    dedup = Deduplicator(queue, due_margin=due_margin)
    first = dedup.enqueue_in(timedelta(seconds=20), "u", "tests.tasks.work")  # due on the scheduler's clock
    cancelled = _promote_with_cancel_between(dedup, queue, "u")
    second = dedup.enqueue("u", "tests.tasks.work")
    if duplicate:
        # Without the margin the cancel "succeeds", RQ re-queues the job anyway, the slot
        # was freed, and a second job gets in: the race this margin exists for.
        assert cancelled and second.admitted
        assert violations(conn, queue) == {"u": {first.job_id, second.job_id}}
    else:
        assert not cancelled and not second.admitted and second.job_id == first.job_id
        assert violations(conn, queue) == {}
        assert queue.get_job_ids() == [first.job_id]

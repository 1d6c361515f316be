"""The seed-style check-then-enqueue: scan RQ's registries, then enqueue if nothing was found.

This is the code dedupkit replaces, kept as the baseline for the benchmarks and for the
race tests. It is two steps (scan, then enqueue), so two callers can both see "nothing
pending" and both enqueue; and every check reads every job id of the queue and of the
scheduled and started registries, so it is O(total jobs). Do not use it in production.
"""

from __future__ import annotations

import time
from typing import Any

from rq import Queue
from rq.job import Job

JOB_ID_PREFIX = "email_process"


def job_id_prefix(user_id: object) -> str:
    """``email_process_<user_id>_``: every job id of this user starts with it."""
    return f"{JOB_ID_PREFIX}_{user_id}_"


def naive_job_id(user_id: object) -> str:
    """A new job id for ``user_id``, as the seed made them (with microseconds)."""
    return f"{job_id_prefix(user_id)}{time.time_ns() // 1000}"


def naive_find_pending(queue: Queue, user_id: object) -> str | None:
    """The id of a job of ``user_id`` found in the queue, the scheduled or the started
    registry, or None. Reads every id of all three (three or more round trips)."""
    prefix = job_id_prefix(user_id)
    id_lists = (
        queue.get_job_ids(),
        queue.scheduled_job_registry.get_job_ids(),
        queue.started_job_registry.get_job_ids(),
    )
    for ids in id_lists:
        for job_id in ids:
            if job_id.startswith(prefix):
                return job_id
    return None


def naive_enqueue(queue: Queue, user_id: object, func: Any, *args: Any, **kwargs: Any) -> Job | None:
    """Enqueue ``func(*args, **kwargs)`` for ``user_id`` unless a scan finds one of its jobs.

    Returns the new job, or None when a pending job was found. Racy by design: nothing
    holds between the scan and ``queue.enqueue``. ``kwargs`` go to ``Queue.enqueue``
    (``job_id`` is made here).
    """
    if naive_find_pending(queue, user_id) is not None:
        return None
    return queue.enqueue(func, *args, job_id=naive_job_id(user_id), **kwargs)

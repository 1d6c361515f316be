"""RQ's inline mode (``Queue(is_async=False)``): run an admitted job in the caller's process.

RQ's own ``enqueue`` runs the job at once on such a queue (``Queue.run_sync``) and never
pushes it. The admit script always pushes; so the id is taken back out of the queue list
first, and the job runs only when that LREM removed it: a worker listening on the same
queue may have taken it already, and then it is the worker's to run, not ours (running it
here too would be a second run of one job).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from . import scripts
from .models import Admission, JobState

if TYPE_CHECKING:
    from .deduplicator import Deduplicator

logger = logging.getLogger("dedupkit")


def run(dedup: Deduplicator, admission: Admission) -> Admission:
    """Run ``admission``'s job inline if it was admitted to the queue; the answer then
    carries the finished job and the slot's status after it (free, with its last run).

    Scheduled and follow-up jobs are left to RQ's scheduler and dependency handling, as
    RQ's own ``enqueue_at`` and ``depends_on`` do on an inline queue.
    """
    job = admission.job
    if not admission.admitted or job is None or admission.status.state is not JobState.QUEUED:
        return admission
    with scripts.redis_errors():
        removed = int(dedup.connection.lrem(dedup.keys.queue, 1, job.id))
    if not removed:
        logger.info("Job %s was taken by a worker before it could run inline; the worker runs it", job.id)
        return admission
    with scripts.redis_errors():
        # The status stays 'queued' in Redis while it runs (RQ's run_sync writes 'started'
        # nowhere), so the slot holds the key until the final status lands.
        job = dedup.queue.run_sync(job)
    logger.debug("Ran job %s inline (is_async=False): %s", job.id, job.get_status(refresh=False))
    return replace(admission, job=job, status=dedup.status(admission.status.key))

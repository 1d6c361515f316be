"""Failed jobs back through admission (``Deduplicator.requeue``, ``dedupkit requeue``).

RQ's own requeue (``Job.requeue``, ``FailedJobRegistry.requeue``, ``rq requeue``) pushes
the failed job back onto the queue without looking at its key, so it can run beside a
job admitted since. Here each failed job becomes a new request for its key, decided by
the admit script like any other: admitted, or a conflict that leaves it where it was.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus

try:  # RQ 3 moved Callback to rq.callbacks; RQ 2 has it in rq.job
    from rq.callbacks import Callback
except ImportError:  # pragma: no cover - RQ 2
    from rq.job import Callback  # type: ignore[attr-defined,no-redef,unused-ignore]

from . import scripts
from .keys import parse_job_id
from .models import Admission, EnqueueRequest, RequeueResult

if TYPE_CHECKING:
    from .deduplicator import Deduplicator

logger = logging.getLogger("dedupkit")

REQUEUED_FROM = "dedupkit_requeued_from"
"""The meta field of a requeued job naming the failed job it replaces."""


def requeue_failed(dedup: Deduplicator, job_ids: Iterable[str] | None = None) -> list[RequeueResult]:
    """See ``Deduplicator.requeue``."""
    registry = dedup.queue.failed_job_registry
    with scripts.redis_errors():
        ids = list(job_ids) if job_ids is not None else registry.get_job_ids()
    results: list[RequeueResult] = []
    pending: list[tuple[str, str, EnqueueRequest]] = []
    for job_id in ids:
        ready = _request(dedup, job_id)
        if isinstance(ready, RequeueResult):
            results.append(ready)
        else:
            pending.append((job_id, ready.key if isinstance(ready.key, str) else str(ready.key), ready))
    if pending:
        admissions = dedup.enqueue_many([request for _, _, request in pending], raise_errors=False)
        results += [_settle(dedup, job_id, key, admission)
                    for (job_id, key, _), admission in zip(pending, admissions, strict=True)]
    order = {job_id: i for i, job_id in enumerate(ids)}
    results.sort(key=lambda r: order.get(r.job_id, len(order)))
    for r in results:
        logger.info("requeue %s on queue %s: %s%s", r.job_id, dedup.queue.name, r.outcome,
                    f" ({r.reason})" if r.reason else f" as {r.new_job_id}" if r.new_job_id else "")
    return results


def _request(dedup: Deduplicator, job_id: str) -> EnqueueRequest | RequeueResult:
    """The request that re-admits failed job ``job_id``, or why it is skipped."""
    key = parse_job_id(job_id, prefix=dedup.job_id_prefix)
    if key is None:
        return RequeueResult(job_id, "skipped", reason="not_dedupkit")
    try:
        with scripts.redis_errors():
            job = dedup.queue.fetch_job(job_id)
            in_registry = job is not None and job_id in dedup.queue.failed_job_registry
            status = job.get_status(refresh=False) if job is not None else None
    except NoSuchJobError:
        job = None
    if job is None:
        return RequeueResult(job_id, "skipped", key, reason="gone")
    if status != JobStatus.FAILED or not in_registry:
        return RequeueResult(job_id, "skipped", key, reason="not_failed")
    try:
        # args=/kwargs= as Queue.enqueue takes them, so that a job kwarg named like an RQ
        # option (description, ttl, ...) stays the job's.
        return EnqueueRequest(key, job.func_name, (), {"args": tuple(job.args), "kwargs": dict(job.kwargs),
                                                       **_options(job)})
    except Exception as exc:  # damaged or unreadable job data: report it, go on with the others
        return RequeueResult(job_id, "skipped", key, reason=f"error: {exc}")


def _options(job: Job) -> dict[str, Any]:
    """The RQ options of ``job`` as ``Queue.enqueue`` keywords. Retries are not carried:
    a failed job has used them up (RQ's own requeue keeps ``retries_left`` as it is)."""
    options: dict[str, Any] = {
        "job_timeout": job.timeout, "result_ttl": job.result_ttl, "ttl": job.ttl,
        "failure_ttl": job.failure_ttl, "description": job.description,
        "meta": {**job.meta, REQUEUED_FROM: job.id},
    }
    for option, name, timeout in (("on_success", job._success_callback_name, job._success_callback_timeout),
                                  ("on_failure", job._failure_callback_name, job._failure_callback_timeout),
                                  ("on_stopped", job._stopped_callback_name, job._stopped_callback_timeout)):
        if name:
            options[option] = Callback(name, timeout)
    return options


def _settle(dedup: Deduplicator, job_id: str, key: str, admission: Admission) -> RequeueResult:
    """Take an admitted job's predecessor out of the failed registry; leave the others."""
    if admission.error is not None:
        return RequeueResult(job_id, "skipped", key, reason=f"error: {admission.error}")
    if not admission.admitted:
        return RequeueResult(job_id, "conflict", key, holder_job_id=admission.job_id)
    with scripts.redis_errors():
        # The new job carries the work on; the failed one would linger unseen (failure_ttl)
        # once out of the registry, as RQ's own requeue leaves no failed copy behind.
        dedup.queue.failed_job_registry.remove(job_id, delete_job=True)
    return RequeueResult(job_id, "admitted", key, new_job_id=admission.job_id)


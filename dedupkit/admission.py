"""Admission without I/O: a request turned into what admit.lua writes, and its reply into an Admission."""

from __future__ import annotations

import enum
import logging
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from rq import Queue
from rq.exceptions import TimeoutFormatError
from rq.job import Job, JobStatus
from rq.utils import now as rq_now

from . import callables
from .errors import (
    DedupkitError,
    InvalidRequestError,
    JobIdCollisionError,
    NaiveDatetimeError,
    ScriptError,
)
from .keys import RateLimit, RateLimitRegistry, encode_key, generate_job_id, normalize_key
from .models import Admission, EnqueueRequest, JobState, OnConflict, SlotStatus
from .protocol import AdmitReply

if TYPE_CHECKING:
    from .core import DedupCore

logger = logging.getLogger("dedupkit")

# RQ options dedupkit cannot honour, and why.
REFUSED = {
    "job_id": "dedupkit makes the job ids (see generate_job_id)",
    "depends_on": "jobs with dependencies are not supported",
    "pipeline": "dedupkit writes the job in its own atomic script",
    "unique": "dedupkit already admits at most one pending job per key",
}


class Prepared:
    """A request turned into the exact strings admit.lua writes (its per-request ARGV)."""

    __slots__ = ("cooldown", "field", "job", "key", "mode", "pairs", "policy", "rate_limit", "run_at", "ttl")

    def __init__(self, key: str, field: str, job: Job, mode: str, run_at: str, ttl: int, policy: OnConflict,
                 pairs: list[Any]):
        self.key, self.field, self.job, self.mode = key, field, job, mode
        self.run_at, self.ttl, self.policy, self.pairs = run_at, ttl, policy, pairs
        self.rate_limit: Any = None  # RQ 3's RateLimit of a job admitted to wait for a slot ('rate_limit' mode)
        self.cooldown = 0.0  # seconds the key stays closed after its last run ended

    def argv(self) -> list[Any]:
        """This request's part of admit.lua's ARGV, in ``protocol.ADMIT.request_argv`` order."""
        return [self.field, self.job.id, self.mode, self.run_at, self.ttl, self.policy.value, self.cooldown,
                len(self.pairs) // 2, *self.pairs]


def policy_of(value: object) -> OnConflict:
    """``on_conflict`` as an OnConflict; the plain strings callers pass are accepted."""
    if isinstance(value, str) and value in OnConflict.__members__.values():
        return OnConflict(value)
    choices = ", ".join(p.value for p in OnConflict)
    raise InvalidRequestError(f"on_conflict must be one of {choices}, not {value!r}")


def flatten(job: Job) -> list[Any]:
    """The job hash as HSET field/value pairs; enum values as their plain strings."""
    pairs: list[Any] = []
    for name, value in job.to_dict().items():
        if isinstance(value, enum.Enum):
            value = value.value
        elif isinstance(value, bool):
            value = int(value)
        pairs += (name, value)
    return pairs


def run_at(at: datetime | timedelta) -> datetime:
    if isinstance(at, timedelta):
        if at < timedelta(0):
            raise InvalidRequestError(f"delay must not be negative, got {at}")
        return datetime.now(timezone.utc) + at
    if isinstance(at, datetime):
        # RQ reads a naive run time with the DST offset whatever the date
        # (ScheduledJobRegistry.schedule), Python with the offset of that date: an hour
        # apart half the year. Refuse rather than pick one silently.
        if at.tzinfo is None or at.utcoffset() is None:
            raise NaiveDatetimeError(at)
        return at
    raise InvalidRequestError(f"a run time must be a datetime or a timedelta, not {type(at).__name__}")


def prepare(core: DedupCore, request: EnqueueRequest) -> Prepared:
    """Check ``request`` and build its RQ job as RQ's ``Queue.enqueue`` would; no I/O."""
    queue = core.queue
    key = normalize_key(request.key)
    field = encode_key(key)
    policy = policy_of(request.on_conflict)
    if policy is OnConflict.FOLLOW_UP and request.at is not None:
        raise InvalidRequestError("a follow-up runs when the running job ends; it cannot also be scheduled")
    if not isinstance(request.args, (tuple, list)):
        raise InvalidRequestError(f"args must be a tuple, not {type(request.args).__name__}")
    if not (isinstance(request.func, str) or callable(request.func)):
        raise InvalidRequestError(f"func must be a callable or a dotted path, not {type(request.func).__name__}")
    callables.check_importable(request.func)
    options = dict(request.kwargs)
    for name, why in REFUSED.items():
        if options.get(name) not in (None, False):
            raise InvalidRequestError(f"{name}= is not accepted: {why}")
        options.pop(name, None)
    rate_limit = check_rate_limit(queue, options.get("rate_limit"), policy)
    options.pop("rate_limit", None)
    try:
        parsed = Queue.parse_args(request.func, *request.args, **options)
    except (ValueError, AssertionError) as exc:
        raise InvalidRequestError(str(exc)) from exc
    job_id = generate_job_id(key, prefix=core.job_id_prefix)
    scheduled = request.at is not None
    try:
        job = queue.create_job(
            parsed.func, args=parsed.args, kwargs=parsed.kwargs, timeout=parsed.timeout,
            result_ttl=parsed.result_ttl, ttl=parsed.ttl, failure_ttl=parsed.failure_ttl,
            description=parsed.description, job_id=job_id, meta=parsed.meta,
            status=(JobStatus.SCHEDULED if scheduled else JobStatus("rate_limited") if rate_limit is not None
                    else JobStatus.QUEUED),
            retry=parsed.retry, repeat=parsed.repeat, on_success=parsed.on_success,
            on_failure=parsed.on_failure, on_stopped=parsed.on_stopped, webhooks=parsed.webhooks,
            **({"rate_limit": rate_limit} if rate_limit is not None else {}),
        )
        job.origin = queue.name
        if scheduled:
            assert request.at is not None
            when = run_at(request.at)
            if parsed.at_front:
                job.enqueue_at_front = True
            mode, at_text = "schedule", str(int(when.timestamp()))
        elif rate_limit is not None:
            # RQ 3's Queue._enqueue_rate_limited_job: saved as 'rate_limited', waiting in
            # its limit's zset; RQ's acquire script (run after the admission) queues it.
            job.timeout = job.timeout if job.timeout is not None else queue._default_timeout
            if parsed.at_front:
                job.enqueue_at_front = True
            mode, at_text = "rate_limit", ""
        else:
            job.enqueued_at = rq_now()
            if parsed.at_front and policy is OnConflict.FOLLOW_UP:
                # A follow-up may wait behind its holder and be pushed later, by RQ's
                # dependents code or dedupkit's release, both of which read this flag.
                job.enqueue_at_front = True
            mode, at_text = ("front" if parsed.at_front else "back"), ""
        pairs = flatten(job)
    except DedupkitError:
        raise
    except (ValueError, TypeError, TimeoutFormatError) as exc:
        raise InvalidRequestError(f"cannot build the RQ job for key {key!r}: {exc}") from exc
    prepared = Prepared(key, field, job, mode, at_text, int(job.ttl or 0), policy, pairs)
    prepared.rate_limit = rate_limit if mode == "rate_limit" else None
    prepared.cooldown = core.cooldown_seconds(request.cooldown)
    return prepared


def check_rate_limit(queue: Queue, rate_limit: Any, policy: OnConflict) -> Any:
    """``rate_limit=`` (RQ 3's ``RateLimit``) as RQ's own enqueue would accept it, or refuse."""
    if rate_limit is None:
        return None
    if RateLimitRegistry is None:
        raise InvalidRequestError("rate_limit= needs RQ 3 (rq>=3); this RQ has no rate limits")
    if not isinstance(rate_limit, RateLimit):
        raise InvalidRequestError(f"rate_limit must be an rq.rate_limit.RateLimit, not {type(rate_limit).__name__}")
    if policy is OnConflict.FOLLOW_UP:
        raise InvalidRequestError("rate_limit= is not accepted with on_conflict='follow_up': a follow-up is "
                                  "released straight onto the queue when its holder dies, past the limit")
    if not queue.is_async:
        raise InvalidRequestError("rate_limit is not supported on synchronous queues (is_async=False), as in RQ")
    if (queue.job_class.redis_job_namespace_prefix != Job.redis_job_namespace_prefix
            or queue.redis_queue_namespace_prefix != Queue.redis_queue_namespace_prefix):
        raise InvalidRequestError("rate_limit is not supported with custom job or queue key prefixes, as in RQ")
    return rate_limit


def held(status: SlotStatus) -> Admission:
    """The answer for a key whose slot ``status`` shows a pending job, read before any
    admission was tried (the Scheduler's precheck): what a conflict would have said."""
    return Admission(False, status.job_id, status)


def to_admission(p: Prepared, reply: AdmitReply) -> Admission:
    """The Admission one admit.lua reply means for request ``p`` (and its log line)."""
    job_id = reply.job_id
    if reply.decision == "error":
        logger.error("Key %r: admit.lua failed for this request: %s", p.key, reply.message)
        return Admission(False, job_id, SlotStatus(p.key),
                         error=ScriptError("admit.lua", RuntimeError(reply.message)))
    if reply.decision == "collision":
        logger.error("Job id %s for key %r already exists; nothing written", job_id, p.key)
        return Admission(False, job_id, SlotStatus(p.key, last_run=reply.last), error=JobIdCollisionError(job_id))
    if reply.decision == "conflict":
        status = reply.holder_status(p.key)
        if reply.reason == "cooldown":
            logger.info("Key %r is cooling down after job %s; next run possible at %s", p.key, job_id,
                        reply.retry_after and reply.retry_after.isoformat())
            return Admission(False, job_id, status, reason="cooldown", retry_after=reply.retry_after)
        logger.info("Key %r already has pending job %s (%s)%s", p.key, job_id, status.state and status.state.value,
                    f"; {p.policy.value} not applied: {reply.reason}" if reply.reason else "")
        return Admission(False, job_id, status, reason=reply.reason)
    if reply.replayed:
        # redis-py resent a call whose reply was lost; the first run admitted this job.
        logger.info("Key %r: replayed call, job %s was already admitted", p.key, job_id)
        return Admission(True, job_id, reply.holder_status(p.key), job=p.job)
    # The new job's times are the ones Python wrote: no need to parse them back.
    status = SlotStatus(p.key, job_id, JobState.from_rq(reply.rq_status),
                        scheduled_for=datetime.fromtimestamp(int(p.run_at), tz=timezone.utc) if p.run_at
                        else reply.retry_after,
                        enqueued_at=p.job.enqueued_at if reply.enqueued_at else None, last_run=reply.last)
    recovered = reply.recovered
    if recovered == "dead":
        logger.warning("Key %r: took over the slot of job %s's predecessor, whose worker died (heartbeat expired)",
                       p.key, job_id)
    elif recovered == "lost":
        logger.warning("Key %r: took over the slot of a job a worker dequeued and never started (it died "
                       "between its pop and its start: RQ lost that job)", p.key)
    elif recovered == "gone":  # usually a finished job whose result_ttl ran out: routine
        logger.info("Key %r: took over the slot of a job whose hash is gone", p.key)
    if reply.retry_after is not None:
        # A follow_up that met a cooldown: RQ's scheduler queues it when the key reopens.
        p.job._status = JobStatus.SCHEDULED
        p.job.enqueued_at = None
        logger.info("Key %r is cooling down; follow-up job %s scheduled for %s", p.key, job_id,
                    reply.retry_after.isoformat())
    if reply.replaced:
        logger.info("Key %r: job %s replaced job %s", p.key, job_id, reply.replaced)
    elif reply.follow_up_of:
        logger.info("Key %r: job %s will run after running job %s", p.key, job_id, reply.follow_up_of)
    else:
        logger.debug("Key %r: admitted job %s (%s)", p.key, job_id, p.mode)
    return Admission(True, job_id, status, job=p.job, recovered=recovered, replaced=reply.replaced,
                     follow_up_of=reply.follow_up_of, retry_after=reply.retry_after)

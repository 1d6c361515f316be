"""Admission without I/O: a request turned into what admit.lua writes, and its reply into an Admission."""

from __future__ import annotations

import enum
import logging
import types
import zlib
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from rq import Queue
from rq.exceptions import TimeoutFormatError
from rq.job import UNEVALUATED, Job, JobStatus
from rq.utils import now as rq_now
from rq.utils import utcformat

from . import callables
from .encoding import job_id_of
from .errors import (
    DedupkitError,
    InvalidRequestError,
    JobIdCollisionError,
    NaiveDatetimeError,
    ScriptError,
)
from .keys import RateLimit, RateLimitRegistry, encode_key, normalize_key
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


_POLICIES: dict[object, OnConflict] = {p.value: p for p in OnConflict}


def policy_of(value: object) -> OnConflict:
    """``on_conflict`` as an OnConflict; the plain strings callers pass are accepted."""
    if isinstance(value, str) and value in _POLICIES:
        return _POLICIES[value]
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
    job_id = job_id_of(core.job_id_prefix, field)  # the prefix was checked by the core
    scheduled = request.at is not None
    try:
        shape = shape_of(parsed, scheduled, rate_limit, policy)
        if shape is not None:
            template = core.templates.get(shape)
            if template is None:
                template = core.templates.add(shape, JobTemplate(
                    _create_job(queue, parsed, template_id(core), scheduled, rate_limit, policy),
                    described=bool(parsed.description)))
            job, pairs = template.fill(job_id, parsed.args, parsed.kwargs)
        else:
            job = _create_job(queue, parsed, job_id, scheduled, rate_limit, policy)
            pairs = flatten(job)
        if scheduled:
            assert request.at is not None
            mode, at_text = "schedule", str(int(run_at(request.at).timestamp()))
        elif rate_limit is not None:
            mode, at_text = "rate_limit", ""
        else:
            mode, at_text = ("front" if parsed.at_front else "back"), ""
    except DedupkitError:
        raise
    except (ValueError, TypeError, TimeoutFormatError) as exc:
        raise InvalidRequestError(f"cannot build the RQ job for key {key!r}: {exc}") from exc
    prepared = Prepared(key, field, job, mode, at_text, int(job.ttl or 0), policy, pairs)
    prepared.rate_limit = rate_limit if mode == "rate_limit" else None
    prepared.cooldown = core.cooldown_seconds(request.cooldown)
    return prepared


def _create_job(queue: Queue, parsed: Any, job_id: str, scheduled: bool, rate_limit: Any,
                policy: OnConflict) -> Job:
    """The job RQ's ``Queue.enqueue`` (or ``enqueue_at``, or RQ 3's rate-limited enqueue)
    would build for ``parsed``, with RQ's own ``create_job``; its status set, not saved."""
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
        if parsed.at_front:
            job.enqueue_at_front = True
    elif rate_limit is not None:
        # RQ 3's Queue._enqueue_rate_limited_job: saved as 'rate_limited', waiting in
        # its limit's zset; RQ's acquire script (run after the admission) queues it.
        job.timeout = job.timeout if job.timeout is not None else queue._default_timeout
        if parsed.at_front:
            job.enqueue_at_front = True
    else:
        job.enqueued_at = rq_now()
        if parsed.at_front and policy is OnConflict.FOLLOW_UP:
            # A follow-up may wait behind its holder and be pushed later, by RQ's
            # dependents code or dedupkit's release, both of which read this flag.
            job.enqueue_at_front = True
    return job


# RQ options whose values a template may be keyed on: plain immutable values. A request
# with any other option set (meta, retry, repeat, callbacks, webhooks, rate_limit: objects
# a caller may mutate between calls) builds its job with RQ's create_job every time.
_PLAIN = frozenset({str, int, float, type(None)})


def shape_of(parsed: Any, scheduled: bool, rate_limit: Any, policy: OnConflict) -> tuple[Any, ...] | None:
    """What the job hash of ``parsed`` depends on besides its id, arguments and times, as a
    hashable key; None when the request does not fit a template (see ``JobTemplate``)."""
    func = parsed.func
    if rate_limit is not None or not (type(func) is str or type(func) is types.FunctionType):
        return None
    if type(parsed.args) not in (tuple, list) or type(parsed.kwargs) not in (dict, type(None)):
        return None
    values = (parsed.timeout, parsed.description, parsed.result_ttl, parsed.ttl, parsed.failure_ttl)
    for value in values:
        if type(value) not in _PLAIN:  # bool is not plain here: an int subclass RQ would not expect
            return None
    if (parsed.meta or parsed.retry or parsed.repeat or parsed.on_success or parsed.on_failure or parsed.on_stopped
            or parsed.webhooks):
        return None
    return (func, *values, scheduled, bool(parsed.at_front), policy is OnConflict.FOLLOW_UP)


def template_id(core: DedupCore) -> str:
    """A valid job id for a template job, which is never written."""
    return f"{core.job_id_prefix}_template"


def rq_timestamp(at: datetime) -> str:
    """``rq.utils.utcformat(at)`` for an aware UTC datetime (RQ's ``now()``), by isoformat,
    a few times faster than its strftime; ``tests/test_templates.py`` compares the two."""
    if at.utcoffset() or at.year < 1000:  # strftime's %Y does not pad years below 1000
        return utcformat(at)
    return at.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


# The hash fields that differ between two jobs of one shape.
_VARYING = ("created_at", "enqueued_at", "data", "description")


class JobTemplate:
    """One job built by RQ's own ``create_job`` and flattened once per shape (function, RQ
    options, mode); each request's job copies it and fills in only what differs: id,
    arguments (``data`` and, unless given, ``description``, both by RQ's own Job code) and
    times. ``tests/test_templates.py`` checks the result against RQ's ``Job.to_dict``
    over the option matrix, on RQ 2 and RQ 3."""

    __slots__ = ("containers", "described", "job", "pairs", "slots")

    def __init__(self, job: Job, described: bool) -> None:
        self.job = job
        self.pairs = flatten(job)
        names = self.pairs[0::2]
        self.slots = {name: 2 * names.index(name) + 1 for name in _VARYING if name in names}
        self.described = described
        if described:  # RQ keeps a description given as an option: the same for every job of the shape
            del self.slots["description"]
        # Every copy gets its own arguments: the template keeps none of the first request's.
        job._args, job._kwargs, job._data = (), {}, UNEVALUATED
        # Containers Job.__init__ gives every job (meta, dependency ids): each copy gets its own.
        self.containers = [name for name, value in vars(job).items() if isinstance(value, (list, dict, set))]

    def fill(self, job_id: str, args: Any, kwargs: Any) -> tuple[Job, list[Any]]:
        """A new job of this shape, and its hash as HSET pairs."""
        template = self.job
        job = template.__class__.__new__(template.__class__)
        state = vars(job)
        state.update(vars(template))
        for name in self.containers:
            state[name] = state[name].copy()
        job.id = job_id
        job._args = args
        job._kwargs = {} if kwargs is None else kwargs
        job._data = UNEVALUATED
        at = rq_now()
        job.created_at = at
        pairs = self.pairs.copy()
        slots = self.slots
        stamp = rq_timestamp(at)
        pairs[slots["created_at"]] = stamp
        if "enqueued_at" in slots:
            job.enqueued_at = at
            pairs[slots["enqueued_at"]] = stamp
        pairs[slots["data"]] = zlib.compress(job.data)
        if "description" in slots:
            job.description = job.get_call_string()
            pairs[slots["description"]] = job.description
        return job, pairs


class Templates:
    """A core's job templates by shape, at most ``size`` (then they are built again)."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self._by_shape: dict[tuple[Any, ...], JobTemplate] = {}

    def get(self, shape: tuple[Any, ...]) -> JobTemplate | None:
        return self._by_shape.get(shape)

    def add(self, shape: tuple[Any, ...], template: JobTemplate) -> JobTemplate:
        if len(self._by_shape) >= self.size:
            self._by_shape.clear()
        self._by_shape[shape] = template
        return template


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

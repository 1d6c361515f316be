"""The Deduplicator: at most one pending RQ job per dedup key, decided in one script call."""

from __future__ import annotations

import enum
import logging
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any, cast

from rq import Queue
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError, TimeoutFormatError
from rq.job import Job, JobStatus
from rq.utils import now as rq_now
from rq.utils import utcformat

from . import inline, requeue, scripts, server, sizes
from .errors import (
    DedupkitError,
    EvictionPolicyError,
    InvalidRequestError,
    JobIdCollisionError,
    NaiveDatetimeError,
    RedisRefusedError,
    ScriptError,
)
from .keys import (
    Key,
    KeySpace,
    RateLimit,
    RateLimitRegistry,
    decode_key,
    encode_key,
    generate_job_id,
    normalize_key,
    validate_prefix,
)
from .models import Admission, EnqueueRequest, JobState, LastRun, RequeueResult, SlotStatus

logger = logging.getLogger("dedupkit")

# RQ options dedupkit cannot honour, and why.
_REFUSED = {
    "job_id": "dedupkit makes the job ids (see generate_job_id)",
    "depends_on": "jobs with dependencies are not supported",
    "pipeline": "dedupkit writes the job in its own atomic script",
    "unique": "dedupkit already admits at most one pending job per key",
}


POLICIES = ("reject", "replace", "follow_up")


class _Prepared:
    """A request turned into the exact strings admit.lua writes."""

    __slots__ = ("field", "job", "key", "mode", "pairs", "policy", "rate_limit", "run_at", "ttl")

    def __init__(self, key: str, field: str, job: Job, mode: str, run_at: str, ttl: int, policy: str,
                 pairs: list[Any]):
        self.key, self.field, self.job, self.mode = key, field, job, mode
        self.run_at, self.ttl, self.policy, self.pairs = run_at, ttl, policy, pairs
        self.rate_limit: Any = None  # RQ 3's RateLimit of a job admitted to wait for a slot ('rate_limit' mode)


def _flatten(job: Job) -> list[Any]:
    """The job hash as HSET field/value pairs; enum values as their plain strings."""
    pairs: list[Any] = []
    for name, value in job.to_dict().items():
        if isinstance(value, enum.Enum):
            value = value.value
        elif isinstance(value, bool):
            value = int(value)
        pairs += (name, value)
    return pairs


def _run_at(at: datetime | timedelta) -> datetime:
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


class Deduplicator:
    """Admit RQ jobs so that each dedup key has at most one pending job on a queue.

    Pending means queued, scheduled, deferred or running. Every decision is one Lua
    script call that checks the key's slot and writes the job together, so concurrent
    callers cannot both get in. A conflict is an answer (``Admission.admitted`` False),
    not an exception. Raises RedisUnavailableError when Redis cannot be reached.

    ``due_margin``: seconds before a scheduled job's run time from which ``cancel``
    leaves it alone, because RQ's scheduler may already be promoting it; also how long a
    queued job that a cancel or replace found in no list (a worker popped it) may take to
    start before it counts as lost (its worker died between its pop and its start).
    ``gc_budget``/``gc_min_age``: each admission checks up to ``gc_budget`` slots per
    request (at most 100 a call) that were not looked at for ``gc_min_age`` seconds, and
    deletes those whose job has ended.
    ``allow_eviction``: admit even when the server's ``maxmemory-policy`` may evict keys
    (read once, at the first admission); by default that raises EvictionPolicyError,
    because an evicted slot or job hash lets a second job in beside a pending one.

    A ``Queue(is_async=False)`` runs each admitted job inline, as RQ does; see ``enqueue``.
    """

    def __init__(self, queue: Queue, *, namespace: str = "dedupkit", job_id_prefix: str = "job",
                 due_margin: float = 60.0, gc_budget: int = 2, gc_min_age: float = 60.0,
                 allow_eviction: bool = False) -> None:
        if not isinstance(queue, Queue):
            raise InvalidRequestError(f"queue must be an rq.Queue, not {type(queue).__name__}")
        self.queue = queue
        self.connection = queue.connection
        self.namespace = namespace
        self.job_id_prefix = validate_prefix(job_id_prefix)
        self.due_margin = float(due_margin)
        self.gc_budget = int(gc_budget)
        self.gc_min_age = float(gc_min_age)
        self.keys = KeySpace.for_queue(queue, namespace)
        self.allow_eviction = bool(allow_eviction)
        self._eviction_checked = False
        self._scripts = scripts.Scripts(self.connection)

    def __repr__(self) -> str:
        return f"Deduplicator(queue={self.queue.name!r}, namespace={self.namespace!r})"

    # -- admission -----------------------------------------------------------------

    def enqueue(self, key: Key, func: Any, *args: Any, on_conflict: str = "reject", **kwargs: Any) -> Admission:
        """Enqueue ``func(*args, **kwargs)`` for ``key`` now, unless a job for it is pending.

        ``kwargs`` are read as ``Queue.enqueue`` reads them (job_timeout, result_ttl,
        ttl, failure_ttl, description, meta, at_front, on_success/on_failure/on_stopped,
        retry, repeat, and on RQ 3 ``rate_limit=RateLimit(key, concurrency)``: the job then
        waits, state RATE_LIMITED, until RQ's own limiter queues it); ``job_id``,
        ``depends_on`` and ``pipeline`` are refused, ``rate_limit`` on RQ 2.

        ``on_conflict`` says what to do when a job is pending, in the same script call:
        "reject" (answer the conflict), "replace" (withdraw a queued or scheduled holder,
        status 'canceled', and admit this one; a running holder is kept) or "follow_up"
        (when the holder runs, admit this job to run once after it ends, success or
        failure; one follow-up per key, later requests are coalesced into it).
        With ``Queue(is_async=False)`` the admitted job runs inline before this returns,
        as RQ's ``enqueue`` does; ``Admission.job`` holds its result and ``status`` the
        slot after it (free, ``last_run`` the job's final status).
        Raises InvalidKeyError, InvalidRequestError, JobIdCollisionError, ScriptError,
        EvictionPolicyError, RedisUnavailableError (RedisRefusedError when the server
        refuses: READONLY, OOM, ...).
        """
        return self._one(EnqueueRequest(key, func, args, kwargs, on_conflict=on_conflict))

    def enqueue_at(self, when: datetime, key: Key, func: Any, *args: Any, on_conflict: str = "reject",
                   **kwargs: Any) -> Admission:
        """Schedule ``func`` for ``key`` at ``when`` (run by ``rq worker --with-scheduler``).

        The job holds the slot from now on. ``when`` must carry a time zone: a naive
        datetime raises NaiveDatetimeError (RQ reads naive times with the DST offset on
        every date, Python with that date's offset; they differ by an hour in winter).
        A past ``when`` runs at the scheduler's next pass. ``on_conflict``: "reject" or
        "replace".
        """
        if not isinstance(when, datetime):
            raise InvalidRequestError(f"when must be a datetime, not {type(when).__name__}")
        return self._one(EnqueueRequest(key, func, args, kwargs, at=when, on_conflict=on_conflict))

    def enqueue_in(self, delta: timedelta, key: Key, func: Any, *args: Any, on_conflict: str = "reject",
                   **kwargs: Any) -> Admission:
        """Schedule ``func`` for ``key`` to run ``delta`` from now (delta >= 0)."""
        if not isinstance(delta, timedelta):
            raise InvalidRequestError(f"delta must be a timedelta, not {type(delta).__name__}")
        return self._one(EnqueueRequest(key, func, args, kwargs, at=delta, on_conflict=on_conflict))

    def enqueue_many(self, requests: Iterable[EnqueueRequest], *, batch_size: int = 500,
                     raise_errors: bool = True) -> list[Admission]:
        """Admit many requests, one script call (one round trip) per ``batch_size``.

        Requests are decided in order; two for the same key in one call give one
        admission and one conflict. With ``raise_errors`` (the default) a bad request
        raises before anything is written; without it, its Admission carries the
        ``error`` and the others go ahead. A job id collision, or a request the script
        could not process (damaged data: ScriptError), never raises here: that Admission
        carries the error and the rest of the batch is decided as usual.
        RedisUnavailableError raises; batches sent before the failure stay admitted.
        """
        if batch_size < 1:
            raise InvalidRequestError("batch_size must be at least 1")
        results: list[Admission | None] = []
        prepared: list[tuple[int, _Prepared]] = []
        for request in requests:
            try:
                prepared.append((len(results), self._prepare(request)))
                results.append(None)
            except DedupkitError as exc:
                if raise_errors:
                    raise
                results.append(Admission(False, None, SlotStatus(_safe_key(request.key)), error=exc))
        for start in range(0, len(prepared), batch_size):
            chunk = prepared[start:start + batch_size]
            for (index, _), admission in zip(chunk, self._admit([p for _, p in chunk]), strict=True):
                results[index] = admission
        return [a for a in results if a is not None]

    def _one(self, request: EnqueueRequest) -> Admission:
        admission = self._admit([self._prepare(request)])[0]
        if admission.error is not None:
            raise admission.error
        return admission

    def _prepare(self, request: EnqueueRequest) -> _Prepared:
        key = normalize_key(request.key)
        field = encode_key(key)
        if request.on_conflict not in POLICIES:
            raise InvalidRequestError(f"on_conflict must be one of {', '.join(POLICIES)}, not {request.on_conflict!r}")
        if request.on_conflict == "follow_up" and request.at is not None:
            raise InvalidRequestError("a follow-up runs when the running job ends; it cannot also be scheduled")
        if not isinstance(request.args, (tuple, list)):
            raise InvalidRequestError(f"args must be a tuple, not {type(request.args).__name__}")
        if not (isinstance(request.func, str) or callable(request.func)):
            raise InvalidRequestError(f"func must be a callable or a dotted path, not {type(request.func).__name__}")
        options = dict(request.kwargs)
        for name, why in _REFUSED.items():
            if options.get(name) not in (None, False):
                raise InvalidRequestError(f"{name}= is not accepted: {why}")
            options.pop(name, None)
        rate_limit = self._check_rate_limit(options.get("rate_limit"), request)
        options.pop("rate_limit", None)
        try:
            parsed = Queue.parse_args(request.func, *request.args, **options)
        except (ValueError, AssertionError) as exc:
            raise InvalidRequestError(str(exc)) from exc
        job_id = generate_job_id(key, prefix=self.job_id_prefix)
        scheduled = request.at is not None
        try:
            job = self.queue.create_job(
                parsed.func, args=parsed.args, kwargs=parsed.kwargs, timeout=parsed.timeout,
                result_ttl=parsed.result_ttl, ttl=parsed.ttl, failure_ttl=parsed.failure_ttl,
                description=parsed.description, job_id=job_id, meta=parsed.meta,
                status=(JobStatus.SCHEDULED if scheduled else JobStatus("rate_limited") if rate_limit is not None
                        else JobStatus.QUEUED),
                retry=parsed.retry, repeat=parsed.repeat, on_success=parsed.on_success,
                on_failure=parsed.on_failure, on_stopped=parsed.on_stopped, webhooks=parsed.webhooks,
                **({"rate_limit": rate_limit} if rate_limit is not None else {}),
            )
            job.origin = self.queue.name
            if scheduled:
                assert request.at is not None
                run_at = _run_at(request.at)
                if parsed.at_front:
                    job.enqueue_at_front = True
                mode, at_text = "schedule", str(int(run_at.timestamp()))
            elif rate_limit is not None:
                # RQ 3's Queue._enqueue_rate_limited_job: saved as 'rate_limited', waiting in
                # its limit's zset; RQ's acquire script (run after the admission) queues it.
                job.timeout = job.timeout if job.timeout is not None else self.queue._default_timeout
                if parsed.at_front:
                    job.enqueue_at_front = True
                mode, at_text = "rate_limit", ""
            else:
                job.enqueued_at = rq_now()
                mode, at_text = ("front" if parsed.at_front else "back"), ""
            pairs = _flatten(job)
        except DedupkitError:
            raise
        except (ValueError, TypeError, TimeoutFormatError) as exc:
            raise InvalidRequestError(f"cannot build the RQ job for key {key!r}: {exc}") from exc
        prepared = _Prepared(key, field, job, mode, at_text, int(job.ttl or 0), request.on_conflict, pairs)
        prepared.rate_limit = rate_limit if mode == "rate_limit" else None
        return prepared

    def _check_rate_limit(self, rate_limit: Any, request: EnqueueRequest) -> Any:
        """``rate_limit=`` (RQ 3's ``RateLimit``) as RQ's own enqueue would accept it, or refuse."""
        if rate_limit is None:
            return None
        if RateLimitRegistry is None:
            raise InvalidRequestError("rate_limit= needs RQ 3 (rq>=3); this RQ has no rate limits")
        if not isinstance(rate_limit, RateLimit):
            raise InvalidRequestError(f"rate_limit must be an rq.rate_limit.RateLimit, not {type(rate_limit).__name__}")
        if request.on_conflict == "follow_up":
            raise InvalidRequestError("rate_limit= is not accepted with on_conflict='follow_up': a follow-up is "
                                      "released straight onto the queue when its holder dies, past the limit")
        if not self.queue.is_async:
            raise InvalidRequestError("rate_limit is not supported on synchronous queues (is_async=False), as in RQ")
        if (self.queue.job_class.redis_job_namespace_prefix != Job.redis_job_namespace_prefix
                or self.queue.redis_queue_namespace_prefix != Queue.redis_queue_namespace_prefix):
            raise InvalidRequestError("rate_limit is not supported with custom job or queue key prefixes, as in RQ")
        return rate_limit

    def _admit(self, batch: Sequence[_Prepared]) -> list[Admission]:
        self._check_eviction()
        k = self.keys
        keys = [k.slots, k.gc, k.stats, k.followups, k.queue, k.queues, k.scheduled, k.started, k.deferred,
                k.canceled, k.last, k.intermediate]
        args: list[Any] = [k.job_prefix, k.executions_prefix, len(batch), self.gc_budget, self.gc_min_age,
                           self.due_margin, utcformat(rq_now()), k.dependents_template, k.dependencies_template,
                           k.rate_limited_template]
        for p in batch:
            keys.append(k.job_key(p.job.id))
            args += (p.field, p.job.id, p.mode, p.run_at, p.ttl, p.policy, len(p.pairs) // 2, *p.pairs)
        limited = [p for p in batch if p.rate_limit is not None]
        if limited:
            self._register_rate_limits(limited)
        replies = self._scripts.call(scripts.ADMIT, keys, args)
        admissions = [self._admission(p, reply) for p, reply in zip(batch, replies, strict=True)]
        _raise_refusal(admissions)
        if limited:
            admissions = self._acquire_rate_limits(batch, admissions)
        for reply in replies:
            if reply[0] == b"admitted" and reply[8]:
                self._release_rate_limit(reply[7].decode().partition(":")[2], reply[8].decode())
        if not self.queue.is_async:
            admissions = [inline.run(self, admission) for admission in admissions]
        return admissions

    def _register_rate_limits(self, limited: Sequence[_Prepared]) -> None:
        """Register each rate limit (RQ's ``RateLimitRegistry.register``) before its jobs are
        written, so RQ's maintenance knows the limit of any job left waiting."""
        assert RateLimitRegistry is not None
        with scripts.redis_errors(), self.connection.pipeline() as pipe:
            for p in limited:
                RateLimitRegistry(p.rate_limit.key, connection=self.connection).register(p.rate_limit.concurrency, pipe)
            pipe.execute()

    def _acquire_rate_limits(self, batch: Sequence[_Prepared], admissions: list[Admission]) -> list[Admission]:
        """Run RQ 3's own acquire script for each rate limit that got a new waiting job (as
        ``Queue._enqueue_rate_limited_job`` does after saving it); a promoted job is queued."""
        assert RateLimitRegistry is not None
        promoted: dict[str, Any] = {}
        done: set[str] = set()
        enqueued_at = rq_now()
        for p, a in zip(batch, admissions, strict=True):
            if p.rate_limit is None or not a.admitted or a.status.state is not JobState.RATE_LIMITED:
                continue
            if p.rate_limit.key not in done:
                done.add(p.rate_limit.key)
                registry = RateLimitRegistry(p.rate_limit.key, connection=self.connection)
                with scripts.redis_errors():
                    for job_id in registry.acquire_and_enqueue(p.rate_limit.concurrency, enqueued_at=enqueued_at):
                        promoted[job_id] = enqueued_at
        out = []
        for a in admissions:
            if a.admitted and a.job_id in promoted and a.job is not None:
                a.job._status = JobStatus.QUEUED
                a.job.enqueued_at = promoted[a.job_id]
                a = replace(a, status=replace(a.status, state=JobState.QUEUED, enqueued_at=promoted[a.job_id]))
            out.append(a)
        return out

    def _release_rate_limit(self, job_id: str, rate_limit_key: str) -> None:
        """After a script cancelled ``job_id``, which had RQ 3 rate limit ``rate_limit_key``: do
        what RQ's ``Job.cancel`` does next (``RateLimitRegistry.cancel``: free the limit's slot
        the job held, if it held one, and promote the oldest waiting job)."""
        if RateLimitRegistry is None or not job_id or not rate_limit_key:
            return
        with scripts.redis_errors():
            RateLimitRegistry(rate_limit_key, connection=self.connection).cancel(job_id)

    def _check_eviction(self) -> None:
        """Refuse to admit on a server that may evict keys, unless allowed; asked once."""
        if self._eviction_checked:
            return
        policy = server.eviction_policy(self.connection)
        self._eviction_checked = True
        if policy is None:
            logger.warning("Could not read Redis's maxmemory-policy (no INFO here); admitting anyway. "
                           "An evicting Redis can drop a slot under a pending job: use noeviction")
        elif policy != server.SAFE_POLICY:
            if not self.allow_eviction:
                self._eviction_checked = False  # ask again: the operator may fix the server
                raise EvictionPolicyError(policy)
            logger.warning("Redis maxmemory-policy is %s; admitting because allow_eviction=True", policy)

    def _admission(self, p: _Prepared, reply: list[Any]) -> Admission:
        decision = reply[0].decode()
        job_id = reply[1].decode()
        if decision == "error":
            message = reply[2].decode(errors="replace")
            logger.error("Key %r: admit.lua failed for this request: %s", p.key, message)
            return Admission(False, job_id, SlotStatus(p.key), error=ScriptError("admit.lua", RuntimeError(message)))
        if decision == "collision":
            logger.error("Job id %s for key %r already exists; nothing written", job_id, p.key)
            return Admission(False, job_id, SlotStatus(p.key), error=JobIdCollisionError(job_id))
        note = reply[7].decode()
        if decision == "conflict":
            status = SlotStatus.from_reply(p.key, reply[1], reply[2], reply[3], reply[4], reply[5], reply[8])
            logger.info("Key %r already has pending job %s (%s)%s", p.key, job_id,
                        status.state and status.state.value, f"; {p.policy} not applied: {note}" if note else "")
            return Admission(False, job_id, status, reason=note or None)
        if note == "replayed":
            # redis-py resent a call whose reply was lost; the first run admitted this job.
            logger.info("Key %r: replayed call, job %s was already admitted", p.key, job_id)
            status = (SlotStatus.from_reply(p.key, reply[1], reply[2], reply[3], reply[4], reply[5]) if reply[2]
                      else SlotStatus(p.key))
            return Admission(True, job_id, status, job=p.job)
        # The new job's times are the ones Python wrote: no need to parse them back.
        status = SlotStatus(p.key, job_id, JobState.from_rq(reply[2].decode()),
                            scheduled_for=datetime.fromtimestamp(int(p.run_at), tz=timezone.utc) if p.run_at else None,
                            enqueued_at=p.job.enqueued_at if reply[3] else None)
        recovered = reply[6].decode() or None
        if recovered == "dead":
            logger.warning("Key %r: took over the slot of job %s's predecessor, whose worker died (heartbeat expired)",
                           p.key, job_id)
        elif recovered == "lost":
            logger.warning("Key %r: took over the slot of a job a worker dequeued and never started (it died "
                           "between its pop and its start: RQ lost that job)", p.key)
        elif recovered == "gone":  # usually a finished job whose result_ttl ran out: routine
            logger.info("Key %r: took over the slot of a job whose hash is gone", p.key)
        action, _, other = note.partition(":")
        if action == "replaced":
            logger.info("Key %r: job %s replaced job %s", p.key, job_id, other)
        elif action == "follow_up":
            logger.info("Key %r: job %s will run after running job %s", p.key, job_id, other)
        else:
            logger.debug("Key %r: admitted job %s (%s)", p.key, job_id, p.mode)
        return Admission(True, job_id, status, job=p.job, recovered=recovered,
                         replaced=other if action == "replaced" else None,
                         follow_up_of=other if action == "follow_up" else None)

    # -- reading -------------------------------------------------------------------

    def status(self, key: Key) -> SlotStatus:
        """What holds ``key``'s slot now: one read-only script call, O(1)."""
        return self.status_many([key])[0]

    def status_many(self, keys: Iterable[Key], *, batch_size: int = 500) -> list[SlotStatus]:
        """``status`` of many keys, in order: one read-only script call per ``batch_size``.

        Every key is checked first; a bad one raises InvalidKeyError before anything is read.
        """
        if batch_size < 1:
            raise InvalidRequestError("batch_size must be at least 1")
        norms = [normalize_key(key) for key in keys]
        k = self.keys
        statuses: list[SlotStatus] = []
        for start in range(0, len(norms), batch_size):
            chunk = norms[start:start + batch_size]
            replies = self._scripts.call(scripts.STATUS, [k.slots, k.followups, k.scheduled, k.started, k.last,
                                                          k.intermediate],
                                         [k.job_prefix, k.executions_prefix, *map(encode_key, chunk)])
            for norm, reply in zip(chunk, replies, strict=True):
                last = LastRun.parse(reply[6])
                statuses.append(replace(SlotStatus.from_reply(norm, *reply[:6]), last_run=last) if reply[0]
                                else SlotStatus(norm, last_run=last))
        return statuses

    def is_running(self, key: Key) -> bool:
        return self.status(key).has_running_job

    def is_scheduled(self, key: Key) -> bool:
        return self.status(key).has_scheduled_job

    def is_queued(self, key: Key) -> bool:
        return self.status(key).has_queued_job

    def has_pending(self, key: Key) -> bool:
        return self.status(key).pending

    def stats(self) -> dict[str, int]:
        """The decision counters of this queue (admitted, conflict, recovered, dead,
        collision, cancelled, swept)."""
        with scripts.redis_errors():
            raw: dict[bytes, bytes] = self.connection.hgetall(self.keys.stats)  # type: ignore[assignment]
        return {name.decode(): int(value) for name, value in raw.items()}

    # -- operators -----------------------------------------------------------------

    def slots(self, cursor: int = 0, count: int = 100) -> tuple[int, list[tuple[str, str, SlotStatus]]]:
        """One page of occupied slots: (next cursor, [(key, slot's job id, status)]).

        HSCAN-based (never blocks Redis), then one status_many call for the page; cursor 0
        starts, a returned 0 means done. A slot whose job has ended shows a free status
        until gc or ``sweep`` deletes it.
        """
        with scripts.redis_errors():
            cursor, page = self._hscan(cursor, count)
        items = sorted(page.items())
        keys = [decode_key(field.decode()) for field, _ in items]
        statuses = self.status_many(keys)
        return int(cursor), [(key, job_id.decode(), status)
                             for key, (_, job_id), status in zip(keys, items, statuses, strict=True)]

    def sweep(self, batch_size: int = 100) -> int:
        """Delete every slot whose job has ended, ``batch_size`` slots per script call.

        Admissions already collect such slots a few at a time; this is for operators.
        Returns how many were deleted.
        """
        k = self.keys
        deleted, cursor = 0, 0
        while True:
            with scripts.redis_errors():
                cursor, page = self._hscan(cursor, batch_size)
            if page:
                deleted += int(self._scripts.call(
                    scripts.SWEEP,
                    [k.slots, k.gc, k.stats, k.followups, k.queue, k.scheduled, k.started, k.deferred, k.last,
                     k.intermediate],
                    [k.job_prefix, k.executions_prefix, utcformat(rq_now()), k.dependents_template, *page]))
            if int(cursor) == 0:
                return deleted

    def adopt(self, id_pattern: str, *, batch_size: int = 500) -> dict[str, int]:
        """Give pending jobs enqueued before dedupkit their key's slot (a one-off migration).

        ``id_pattern`` describes the old job ids, ``{key}`` where the key is and ``*`` for
        anything, e.g. ``"email_process_{key}_*"``. Reads RQ's queue and its scheduled,
        started, deferred and (RQ 3) ready registries in pages, and RQ 3's rate limits for
        this queue's waiting jobs (a one-off scan, not a hot path).
        Returns counts: adopted, already, held (another pending job had the slot: a
        duplicate from before dedupkit), not_pending, unmatched.
        """
        if id_pattern.count("{key}") != 1:
            raise InvalidRequestError("id_pattern must contain {key} exactly once")
        before, _, after = id_pattern.partition("{key}")
        regex = re.compile(
            re.escape(before).replace(r"\*", ".*") + "(?P<key>.+?)" + re.escape(after).replace(r"\*", ".*"))
        counts: dict[str, int] = {"adopted": 0, "already": 0, "held": 0, "not_pending": 0, "unmatched": 0}
        pairs: list[str] = []

        def flush() -> None:
            k = self.keys
            for reply in self._scripts.call(scripts.ADOPT, [k.slots, k.gc, k.followups, k.scheduled, k.started,
                                                                           k.intermediate],
                                            [k.job_prefix, k.executions_prefix, *pairs]):
                counts[reply.decode().partition(":")[0]] += 1
            pairs.clear()

        for job_id in self._rq_job_ids(batch_size):
            match = regex.fullmatch(job_id)
            try:
                field = encode_key(match.group("key")) if match else None
            except DedupkitError:
                field = None
            if field is None:
                counts["unmatched"] += 1
                continue
            pairs += (field, job_id)
            if len(pairs) >= 2 * batch_size:
                flush()
        if pairs:
            flush()
        logger.info("adopt %r on queue %s: %s", id_pattern, self.queue.name, counts)
        return counts

    def _hscan(self, cursor: int, count: int) -> tuple[int, dict[bytes, bytes]]:
        next_cursor, page = self.connection.hscan(self.keys.slots, cursor, count=count)
        return int(next_cursor), cast(dict[bytes, bytes], page)

    def _rq_job_ids(self, page: int) -> Iterator[str]:
        conn, k = self.connection, self.keys
        with scripts.redis_errors():
            start = 0
            while ids := cast(list[bytes], conn.lrange(k.queue, start, start + page - 1)):
                yield from (i.decode() for i in ids)
                start += page
            ready = getattr(self.queue, "ready_job_registry", None)  # RQ 3: dependents on their way to the queue
            for zkey in (k.scheduled, k.started, k.deferred, *([ready.key] if ready is not None else [])):
                for member, _ in conn.zscan_iter(zkey, count=page):
                    # started registry members are <job id>:<execution id>
                    yield member.decode().split(":")[0]
        # RQ 3: jobs waiting for a slot of their RateLimit (status rate_limited), held like queued ones
        yield from (job_id for job_id, origin in sizes.rate_limited_jobs(conn, k.job_prefix, page)
                    if origin == self.queue.name)

    # -- cancelling ----------------------------------------------------------------

    def cancel(self, key: Key, *, stop_running: bool = False) -> bool:
        """Take ``key``'s queued, scheduled or deferred job out of RQ and free the slot.

        Returns True when the job was cancelled (status 'canceled', slot free). When the
        holder runs and a follow-up waits, the follow-up is cancelled. A running
        job is left alone (False) unless ``stop_running``: then RQ's own stop command is
        sent, True is returned, and the slot frees when the worker has stopped the job.
        If the job ends on its own before the stop command reaches it (its hash gone, or
        no worker named on it), False: nothing was stopped and nothing is pending.
        False too when nothing is pending, when a worker has just dequeued the job, or
        when a scheduled job is due within ``due_margin`` seconds (RQ's scheduler may be
        promoting it; cancelling then could not stop it from running).
        """
        norm = normalize_key(key)
        k = self.keys
        reply = self._scripts.call(
            scripts.CANCEL,
            [k.slots, k.gc, k.stats, k.followups, k.queue, k.scheduled, k.started, k.deferred, k.canceled, k.last,
             k.intermediate],
            [k.job_prefix, k.executions_prefix, encode_key(norm), self.due_margin, utcformat(rq_now()),
             k.dependents_template, k.rate_limited_template],
        )
        outcome, job_id = reply[0].decode(), reply[1].decode()
        if outcome == "cancelled":
            logger.info("Key %r: cancelled job %s", norm, job_id)
            self._release_rate_limit(job_id, reply[3].decode())
            return True
        if outcome == "running" and stop_running:
            return self._stop(norm, job_id)
        logger.info("Key %r: not cancelled (%s%s)", norm, outcome, f", job {job_id}" if job_id else "")
        return False

    def _stop(self, norm: str, job_id: str) -> bool:
        try:
            with scripts.redis_errors():
                send_stop_job_command(self.connection, job_id, serializer=self.queue.serializer)
        except (NoSuchJobError, InvalidJobOperation) as exc:
            # The job ended between the script's answer and RQ's stop command.
            logger.info("Key %r: job %s ended before the stop command reached it (%s); nothing stopped",
                        norm, job_id, exc)
            return False
        logger.info("Key %r: sent RQ's stop command to running job %s", norm, job_id)
        return True

    # -- requeueing failed jobs ----------------------------------------------------

    def requeue(self, job_ids: Iterable[str] | None = None) -> list[RequeueResult]:
        """Put failed jobs back through admission: never beside a pending job of their key.

        ``job_ids`` None takes every job in RQ's FailedJobRegistry of this queue. Each is
        re-admitted as a new job (same function, arguments and options) via the admit
        script: ``admitted`` (removed from the failed registry), ``conflict`` (its key has a
        pending job; left in the failed registry) or ``skipped`` (not a dedupkit id of this
        prefix, not failed, or gone; ``reason`` says which). Use this instead of RQ's
        ``requeue``, which pushes the old job back without looking at its key.
        """
        return requeue.requeue_failed(self, job_ids)


def _raise_refusal(admissions: Sequence[Admission]) -> None:
    """A server refusal met inside the script (a write on a replica, OOM) comes back as a
    request's error reply; it is about the server, not the request, so it raises."""
    for admission in admissions:
        error = admission.error
        if isinstance(error, ScriptError):
            code = scripts.refusal_code(str(error.error))
            if code is not None:
                admitted = [a.job_id for a in admissions if a.admitted]
                if admitted:
                    logger.warning("Redis refused part of a batch (%s); admitted before the refusal: %s",
                                   code, ", ".join(str(i) for i in admitted))
                raise RedisRefusedError(error.error, code, str(error.error)) from error


def _safe_key(key: object) -> str:
    try:
        return normalize_key(key)
    except DedupkitError:
        return repr(key)

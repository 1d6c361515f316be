"""What ``Deduplicator`` and ``AsyncDeduplicator`` share: their settings, and every operation
written once as a flow of Redis requests (see ``steps``).

A flow builds each script call from ``protocol`` and decodes each reply there; the two
classes only choose the transport (redis-py, or redis.asyncio).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import redis
from rq import Queue
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import JobStatus
from rq.utils import now as rq_now
from rq.utils import utcformat

from . import protocol, server
from .admission import Prepared, Templates, prepare, rq_timestamp, to_admission
from .errors import DedupkitError, EvictionPolicyError, InvalidRequestError, RedisRefusedError, ScriptError
from .keys import Key, KeySpace, RateLimitRegistry, encode_key, normalize_key, validate_prefix
from .models import Admission, EnqueueRequest, JobState, SlotStatus
from .scripts import refusal_code
from .steps import Blocking, Command, Flow, Script

logger = logging.getLogger("dedupkit")

DEFAULT_RETENTION = timedelta(days=7)
# Longer than any sensible cooldown or retention, and far from where seconds as a float lose precision.
MAX_PERIOD = timedelta(days=3650)


def check_period(name: str, value: object, *, positive: bool = False) -> timedelta:
    """``value`` as a cooldown or retention: a timedelta, >= 0 (> 0 if ``positive``), at most 10 years."""
    if not isinstance(value, timedelta):
        raise InvalidRequestError(f"{name} must be a timedelta, not {type(value).__name__}")
    if value < timedelta(0) or (positive and value == timedelta(0)):
        raise InvalidRequestError(f"{name} must be {'>' if positive else '>='} 0, got {value}")
    if value > MAX_PERIOD:
        raise InvalidRequestError(f"{name} must be at most {MAX_PERIOD.days} days, got {value}")
    return value


class DedupCore:
    """Settings and operations of a Deduplicator, without a transport; see ``Deduplicator``."""

    def __init__(self, queue: Queue, *, namespace: str = "dedupkit", job_id_prefix: str = "job",
                 due_margin: float = 60.0, gc_budget: int = 2, gc_min_age: float = 60.0,
                 allow_eviction: bool = False, min_replicas: int = 0, replica_timeout: float = 1.0,
                 cooldown: timedelta | None = None, retention: timedelta = DEFAULT_RETENTION) -> None:
        if not isinstance(queue, Queue):
            raise InvalidRequestError(f"queue must be an rq.Queue, not {type(queue).__name__}")
        if isinstance(min_replicas, bool) or not isinstance(min_replicas, int) or min_replicas < 0:
            raise InvalidRequestError(f"min_replicas must be an int >= 0, got {min_replicas!r}")
        if (isinstance(replica_timeout, bool) or not isinstance(replica_timeout, (int, float))
                or not 0 < replica_timeout < 3600):
            raise InvalidRequestError(f"replica_timeout must be seconds in (0, 3600), got {replica_timeout!r}")
        self.retention = check_period("retention", retention, positive=True)
        self.cooldown = check_period("cooldown", timedelta(0) if cooldown is None else cooldown)
        self.cooldown_seconds(self.cooldown)
        self.min_replicas = min_replicas
        self.replica_timeout = float(replica_timeout)
        self.queue = queue
        self.namespace = namespace
        self.job_id_prefix = validate_prefix(job_id_prefix)
        self.due_margin = float(due_margin)
        self.gc_budget = int(gc_budget)
        self.gc_min_age = float(gc_min_age)
        self.keys = KeySpace.for_queue(queue, namespace)
        self.allow_eviction = bool(allow_eviction)
        self._eviction_checked = False
        # RQ job hashes built once per shape (function, options, mode); see admission.JobTemplate.
        self.templates = Templates()
        # The key space never changes: each script's KEYS and fixed ARGV are read from it once.
        self._admit_call = protocol.ADMIT.bind(self.keys)
        self._status_call = protocol.STATUS.bind(self.keys)
        self._cancel_call = protocol.CANCEL.bind(self.keys)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(queue={self.queue.name!r}, namespace={self.namespace!r})"

    def _prepare(self, request: EnqueueRequest) -> Prepared:
        return prepare(self, request)

    def cooldown_seconds(self, cooldown: object) -> float:
        """A request's cooldown in seconds (None: this Deduplicator's). A cooldown longer than
        the retention is refused: the last-run record it is measured from could expire first."""
        period = self.cooldown if cooldown is None else check_period("cooldown", cooldown)
        if period > self.retention:
            raise InvalidRequestError(f"cooldown {period} is longer than the retention of last runs "
                                      f"({self.retention}); raise retention= to at least the cooldown")
        return period.total_seconds()

    # -- admission -----------------------------------------------------------------

    def _timed_flow(self, name: str, at: datetime | timedelta, kind: type,
                    request: EnqueueRequest) -> Flow[Admission]:
        """``enqueue_at``'s and ``enqueue_in``'s flow: ``at`` (the argument ``name``) checked
        to be a ``kind`` now, before any request is sent, then ``request`` run at it."""
        if not isinstance(at, kind):
            raise InvalidRequestError(f"{name} must be a {kind.__name__}, not {type(at).__name__}")
        return self._enqueue_flow(replace(request, at=at))

    def _enqueue_flow(self, request: EnqueueRequest) -> Flow[Admission]:
        admission = (yield from self._admit_flow([self._prepare(request)]))[0]
        if admission.error is not None:
            raise admission.error
        return admission

    def _enqueue_many_flow(self, requests: Iterable[EnqueueRequest], batch_size: int,
                           raise_errors: bool) -> Flow[list[Admission]]:
        if batch_size < 1:
            raise InvalidRequestError("batch_size must be at least 1")
        results: list[Admission | None] = []
        prepared: list[tuple[int, Prepared]] = []
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
            admissions = yield from self._admit_flow([p for _, p in chunk])
            for (index, _), admission in zip(chunk, admissions, strict=True):
                results[index] = admission
        return [a for a in results if a is not None]

    def admit_request(self, batch: Sequence[Prepared]) -> tuple[list[str], list[Any]]:
        """admit.lua's KEYS and ARGV for ``batch``, exactly as ``_admit_flow`` sends them."""
        k, call = self.keys, self._admit_call
        keys = call.key_list([k.job_key(p.job.id) for p in batch])
        args = call.arg_list({"n": len(batch), "gc_budget": self.gc_budget, "gc_min_age": self.gc_min_age,
                              "due_margin": self.due_margin, "now_text": rq_timestamp(rq_now()),
                              "retention": self.retention.total_seconds()})
        for p in batch:
            args += p.argv()
        return keys, args

    def _admit_flow(self, batch: Sequence[Prepared]) -> Flow[list[Admission]]:
        if not self._eviction_checked:
            yield from self._eviction_flow()
        call = self._admit_call
        keys, args = self.admit_request(batch)
        limited = [p for p in batch if p.rate_limit is not None]
        if limited:
            yield Blocking(lambda conn: _register_rate_limits(conn, limited))
        # With min_replicas, the script and WAIT pipelined: still one round trip.
        wait = (self.min_replicas, max(1, round(self.replica_timeout * 1000))) if self.min_replicas else None
        raw = yield Script(call.contract, keys, args, wait=wait)
        if wait is not None:
            raw, replicas = raw
        replies = protocol.admit_replies(raw)
        admissions = [to_admission(p, reply) for p, reply in zip(batch, replies, strict=True)]
        if wait is not None:
            admissions = self._confirmed(admissions, replicas)
        _raise_refusal(admissions)
        if limited:
            admissions = yield Blocking(lambda conn: _acquire_rate_limits(conn, batch, admissions))
        for reply in replies:
            if reply.replaced and reply.replaced_rate_limit:
                yield from self._release_rate_limit_flow(reply.replaced, reply.replaced_rate_limit)
        if not self.queue.is_async:
            admissions = yield Blocking(lambda _conn: self._run_inline(admissions))
        return admissions

    def _confirmed(self, admissions: list[Admission], replicas: int) -> list[Admission]:
        """Each admission tagged with how many replicas acknowledged its call's writes."""
        confirmed = replicas >= self.min_replicas
        if not confirmed:
            logger.warning("%d of %d replicas acknowledged an admission call in %.3f s: its %d decisions are "
                           "not certain (a failover now may lose them)", replicas, self.min_replicas,
                           self.replica_timeout, len(admissions))
        return [replace(a, replicas=replicas, confirmed=confirmed) for a in admissions]

    def _run_inline(self, admissions: list[Admission]) -> list[Admission]:
        raise InvalidRequestError("this transport cannot run jobs inline (Queue(is_async=False))")

    def _release_rate_limit_flow(self, job_id: str, rate_limit_key: str) -> Flow[None]:
        """After a script cancelled ``job_id``, which had RQ 3 rate limit ``rate_limit_key``: do
        what RQ's ``Job.cancel`` does next (``RateLimitRegistry.cancel``: free the limit's slot
        the job held, if it held one, and promote the oldest waiting job)."""
        if RateLimitRegistry is not None and job_id and rate_limit_key:
            yield Blocking(lambda conn: RateLimitRegistry(rate_limit_key, connection=conn).cancel(job_id))

    def _eviction_flow(self) -> Flow[None]:
        """Refuse to admit on a server that may evict keys, unless allowed; asked once."""
        if self._eviction_checked:
            return
        try:
            policy = server.policy_of((yield Command("info", ("memory",))))
        except redis.exceptions.ResponseError as exc:  # no INFO here (fakeredis), or not allowed
            logger.debug("INFO memory failed: %s", exc)
            policy = None
        self._eviction_checked = True
        if policy is None:
            logger.warning("Could not read Redis's maxmemory-policy (no INFO here); admitting anyway. "
                           "An evicting Redis can drop a slot under a pending job: use noeviction")
        elif policy != server.SAFE_POLICY:
            if not self.allow_eviction:
                self._eviction_checked = False  # ask again: the operator may fix the server
                raise EvictionPolicyError(policy)
            logger.warning("Redis maxmemory-policy is %s; admitting because allow_eviction=True", policy)

    # -- reading -------------------------------------------------------------------

    def _status_many_flow(self, keys: Iterable[Key], batch_size: int) -> Flow[list[SlotStatus]]:
        if batch_size < 1:
            raise InvalidRequestError("batch_size must be at least 1")
        norms = [normalize_key(key) for key in keys]
        call = self._status_call
        statuses: list[SlotStatus] = []
        for start in range(0, len(norms), batch_size):
            chunk = norms[start:start + batch_size]
            replies = yield Script(call.contract, call.keys, call.arg_list({}, map(encode_key, chunk)))
            statuses += (protocol.StatusReply.decode(reply).slot(norm)
                         for norm, reply in zip(chunk, replies, strict=True))
        return statuses

    def _stats_flow(self) -> Flow[dict[str, int]]:
        raw: dict[bytes, bytes] = yield Command("hgetall", (self.keys.stats,))
        return {name.decode(): int(value) for name, value in raw.items()}

    def _count_flow(self, decision: str, n: int) -> Flow[None]:
        """Add ``n`` to one decision counter of ``stats()``: the Scheduler's precheck skips,
        conflicts answered from a status read before any script call (one HINCRBY)."""
        if n > 0:
            yield Command("hincrby", (self.keys.stats, decision, n))

    # -- cancelling ----------------------------------------------------------------

    def _cancel_flow(self, key: Key, stop_running: bool) -> Flow[bool]:
        norm = normalize_key(key)
        call = self._cancel_call
        reply = protocol.CancelReply.decode((yield Script(
            call.contract, call.keys,
            call.arg_list({"field": encode_key(norm), "due_margin": self.due_margin,
                           "now_text": utcformat(rq_now())}))))
        if reply.outcome == "cancelled":
            logger.info("Key %r: cancelled job %s", norm, reply.job_id)
            yield from self._release_rate_limit_flow(reply.job_id, reply.rate_limit_key)
            return True
        if reply.outcome == "running" and stop_running:
            return (yield from self._stop_flow(norm, reply.job_id))
        logger.info("Key %r: not cancelled (%s%s)", norm, reply.outcome,
                    f", job {reply.job_id}" if reply.job_id else "")
        return False

    def _stop_flow(self, norm: str, job_id: str) -> Flow[bool]:
        serializer = self.queue.serializer
        try:
            yield Blocking(lambda conn: send_stop_job_command(conn, job_id, serializer=serializer))
        except (NoSuchJobError, InvalidJobOperation) as exc:
            # The job ended between the script's answer and RQ's stop command.
            logger.info("Key %r: job %s ended before the stop command reached it (%s); nothing stopped",
                        norm, job_id, exc)
            return False
        logger.info("Key %r: sent RQ's stop command to running job %s", norm, job_id)
        return True


def _register_rate_limits(conn: Any, limited: Sequence[Prepared]) -> None:
    """Register each rate limit (RQ's ``RateLimitRegistry.register``) before its jobs are
    written, so RQ's maintenance knows the limit of any job left waiting."""
    with conn.pipeline() as pipe:
        for p in limited:
            RateLimitRegistry(p.rate_limit.key, connection=conn).register(p.rate_limit.concurrency, pipe)
        pipe.execute()


def _acquire_rate_limits(conn: Any, batch: Sequence[Prepared], admissions: list[Admission]) -> list[Admission]:
    """Run RQ 3's own acquire script for each rate limit that got a new waiting job (as
    ``Queue._enqueue_rate_limited_job`` does after saving it); a promoted job is queued."""
    promoted: dict[str, Any] = {}
    done: set[str] = set()
    enqueued_at = rq_now()
    for p, a in zip(batch, admissions, strict=True):
        if p.rate_limit is None or not a.admitted or a.status.state is not JobState.RATE_LIMITED:
            continue
        if p.rate_limit.key not in done:
            done.add(p.rate_limit.key)
            registry = RateLimitRegistry(p.rate_limit.key, connection=conn)
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


def _raise_refusal(admissions: Sequence[Admission]) -> None:
    """A server refusal met inside the script (a write on a replica, OOM) comes back as a
    request's error reply; it is about the server, not the request, so it raises."""
    for admission in admissions:
        error = admission.error
        if isinstance(error, ScriptError):
            code = refusal_code(str(error.error))
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

"""The Deduplicator: at most one pending RQ job per dedup key, decided in one script call.

The operations are ``core``'s flows, run here on redis-py; ``dedupkit.asyncio`` runs the
same flows on redis.asyncio. Operators' tools are in ``operators``, requeueing in ``requeue``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from rq import Queue

from . import inline, operators, requeue, scripts, steps
from .admission import Prepared as _Prepared
from .core import DEFAULT_RETENTION, DedupCore
from .keys import Key
from .models import Admission, EnqueueRequest, OnConflict, RequeueResult, SlotStatus

POLICIES = tuple(p.value for p in OnConflict)
T = TypeVar("T")


class Deduplicator(DedupCore):
    """Admit RQ jobs so that each dedup key has at most one pending job on a queue.

    Pending means queued, scheduled, deferred or running. Every decision is one Lua
    script call that checks the key's slot and writes the job together, so concurrent
    callers cannot both get in. A conflict is an answer (``Admission.admitted`` False),
    not an exception. Raises RedisUnavailableError when Redis cannot be reached.

    ``due_margin``: seconds before a scheduled job's run time from which ``cancel``
    leaves it alone, because RQ's scheduler may already be promoting it; also how long a
    queued job that a cancel or replace found in no list (a worker popped it) may take to
    start before it counts as lost (its worker died between its pop and its start).
    ``gc_budget``/``gc_min_age``: each admission call checks up to ``gc_budget`` slots per
    request (at most 100 a call, or ``gc_budget`` if larger), walking the slots hash with
    an HSCAN cursor kept in Redis, and deletes those whose job has ended; a new walk
    through the hash starts no sooner than ``gc_min_age`` seconds after the last one did.
    ``allow_eviction``: admit even when the server's ``maxmemory-policy`` may evict keys
    (read once, at the first admission); by default that raises EvictionPolicyError,
    because an evicted slot or job hash lets a second job in beside a pending one.
    ``min_replicas``/``replica_timeout`` (opt-in, default 0: Redis's asynchronous
    replication): each admission call is followed, in the same round trip, by ``WAIT
    min_replicas replica_timeout``; every Admission then says ``confirmed`` (True, or False
    when fewer replicas acknowledged in time) and ``replicas``. A confirmed admission
    survives a failover to an acknowledging replica; an unconfirmed one may not. The
    connection's ``socket_timeout`` must exceed ``replica_timeout``.

    A ``Queue(is_async=False)`` runs each admitted job inline, as RQ does; see ``enqueue``.

    ``cooldown``: a timedelta (default None: none) each admission waits after the key's
    last run ended; see ``enqueue``. ``retention`` (default 7 days): how long a key's
    last-run record (``SlotStatus.last_run``) is kept after the run ended; admissions drop
    expired ones a few at a time. It must be at least the cooldown (else
    InvalidRequestError: the cooldown is read from that record). Both at most 3650 days.
    """

    def __init__(self, queue: Queue, *, namespace: str = "dedupkit", job_id_prefix: str = "job",
                 due_margin: float = 60.0, gc_budget: int = 2, gc_min_age: float = 60.0,
                 allow_eviction: bool = False,
                 min_replicas: int = 0, replica_timeout: float = 1.0, cooldown: timedelta | None = None,
                 retention: timedelta = DEFAULT_RETENTION) -> None:
        super().__init__(queue, namespace=namespace, job_id_prefix=job_id_prefix, due_margin=due_margin,
                         gc_budget=gc_budget, gc_min_age=gc_min_age, allow_eviction=allow_eviction,
                         min_replicas=min_replicas, replica_timeout=replica_timeout, cooldown=cooldown,
                         retention=retention)
        self.connection = queue.connection
        self._scripts = scripts.Scripts(self.connection)

    def _run(self, flow: steps.Flow[T]) -> T:
        return steps.run(flow, self._scripts, self.connection)

    # -- admission -----------------------------------------------------------------

    def enqueue(self, key: Key, func: Any, *args: Any, on_conflict: OnConflict | str = OnConflict.REJECT,
                cooldown: timedelta | None = None, **kwargs: Any) -> Admission:
        """Enqueue ``func(*args, **kwargs)`` for ``key`` now, unless a job for it is pending.

        ``kwargs`` are read as ``Queue.enqueue`` reads them (job_timeout, result_ttl,
        ttl, failure_ttl, description, meta, at_front, on_success/on_failure/on_stopped,
        retry, repeat, and on RQ 3 ``rate_limit=RateLimit(key, concurrency)``: the job then
        waits, state RATE_LIMITED, until RQ's own limiter queues it); ``job_id``,
        ``depends_on``, ``pipeline`` and ``unique`` are refused, ``rate_limit`` on RQ 2.

        ``on_conflict`` (an ``OnConflict`` or its string) says what to do when a job is
        pending, in the same script call: "reject" (answer the conflict), "replace"
        (withdraw a queued or scheduled holder, status 'canceled', and admit this one; a
        running holder is kept) or "follow_up"
        (when the holder runs, admit this job to run once after it ends, success or
        failure; one follow-up per key, later requests are coalesced into it).

        ``cooldown`` (None: the Deduplicator's; ``timedelta(0)``: none): when nothing is
        pending but the key's last run ended (any final status: finished, failed, stopped,
        canceled, its worker dead, its hash gone) less than ``cooldown`` ago, the answer
        is a conflict with ``reason`` 'cooldown' and ``retry_after`` (aware UTC) when the
        key reopens, decided in the same script call. With "follow_up" the job is admitted
        instead, scheduled by RQ's scheduler for ``retry_after`` (run it with
        ``rq worker --with-scheduler``). The end is RQ's ``ended_at`` capped at Redis's
        clock, or when a script first saw the end if RQ wrote none. A cooldown longer than
        ``retention`` raises InvalidRequestError.
        With ``Queue(is_async=False)`` the admitted job runs inline before this returns,
        as RQ's ``enqueue`` does; ``Admission.job`` holds its result and ``status`` the
        slot after it (free, ``last_run`` the job's final status).
        Raises InvalidKeyError, InvalidRequestError, JobIdCollisionError, ScriptError,
        EvictionPolicyError, RedisUnavailableError (RedisRefusedError when the server
        refuses: READONLY, OOM, ...).
        """
        return self._run(self._enqueue_flow(EnqueueRequest(key, func, args, kwargs, on_conflict=on_conflict,
                                                           cooldown=cooldown)))

    def enqueue_at(self, when: datetime, key: Key, func: Any, *args: Any,
                   on_conflict: OnConflict | str = OnConflict.REJECT,
                   cooldown: timedelta | None = None, **kwargs: Any) -> Admission:
        """Schedule ``func`` for ``key`` at ``when`` (run by ``rq worker --with-scheduler``).

        The job holds the slot from now on. ``when`` must carry a time zone: a naive
        datetime raises NaiveDatetimeError (RQ reads naive times with the DST offset on
        every date, Python with that date's offset; they differ by an hour in winter).
        A past ``when`` runs at the scheduler's next pass. ``on_conflict``: "reject" or
        "replace".
        """
        return self._run(self._timed_flow("when", when, datetime, EnqueueRequest(
            key, func, args, kwargs, on_conflict=on_conflict, cooldown=cooldown)))

    def enqueue_in(self, delta: timedelta, key: Key, func: Any, *args: Any,
                   on_conflict: OnConflict | str = OnConflict.REJECT,
                   cooldown: timedelta | None = None, **kwargs: Any) -> Admission:
        """Schedule ``func`` for ``key`` to run ``delta`` from now (delta >= 0)."""
        return self._run(self._timed_flow("delta", delta, timedelta, EnqueueRequest(
            key, func, args, kwargs, on_conflict=on_conflict, cooldown=cooldown)))

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
        return self._run(self._enqueue_many_flow(requests, batch_size, raise_errors))

    def _admit(self, batch: list[_Prepared]) -> list[Admission]:
        return self._run(self._admit_flow(batch))

    def _run_inline(self, admissions: list[Admission]) -> list[Admission]:
        return [inline.run(self, admission) for admission in admissions]

    # -- reading -------------------------------------------------------------------

    def status(self, key: Key) -> SlotStatus:
        """What holds ``key``'s slot now: one read-only script call, O(1)."""
        return self.status_many([key])[0]

    def status_many(self, keys: Iterable[Key], *, batch_size: int = 500) -> list[SlotStatus]:
        """``status`` of many keys, in order: one read-only script call per ``batch_size``.

        Every key is checked first; a bad one raises InvalidKeyError before anything is read.
        """
        return self._run(self._status_many_flow(keys, batch_size))

    def is_running(self, key: Key) -> bool:
        return self.status(key).has_running_job

    def is_scheduled(self, key: Key) -> bool:
        return self.status(key).has_scheduled_job

    def is_queued(self, key: Key) -> bool:
        return self.status(key).has_queued_job

    def has_pending(self, key: Key) -> bool:
        return self.status(key).pending

    def stats(self) -> dict[str, int]:
        """The decision counters of this queue, as the scripts count them: admitted,
        conflict, replaced, follow_up, recovered, dead, collision, error, replayed,
        cooldown (refused within a cooldown), expired (last-run records dropped after the
        retention) (admit.lua; conflict also counts the Scheduler's precheck skips),
        cancelled (cancel, and a follow-up withdrawn by a replace), swept (gc and sweep). A
        counter never incremented is absent. One HGETALL."""
        return self._run(self._stats_flow())

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
        return self._run(self._cancel_flow(key, stop_running))

    # -- operators (see operators.py) ------------------------------------------------

    def slots(self, cursor: int = 0, count: int = 100) -> tuple[int, list[tuple[str, str, SlotStatus]]]:
        """One page of occupied slots: (next cursor, [(key, slot's job id, status)]).

        HSCAN-based (never blocks Redis), then one status_many call for the page; cursor 0
        starts, a returned 0 means done. A slot whose job has ended shows a free status
        until gc or ``sweep`` deletes it.
        """
        return operators.slots(self, cursor, count)

    def sweep(self, batch_size: int = 100) -> int:
        """Delete every slot whose job has ended, ``batch_size`` slots per script call.

        Admissions already collect such slots a few at a time; this is for operators.
        Returns how many were deleted. Also deletes the gc zset ``<ns>:gc:<q>`` an
        earlier dedupkit kept, if there is one (nothing reads it now).
        """
        return operators.sweep(self, batch_size)

    def adopt(self, id_pattern: str, *, batch_size: int = 500) -> dict[str, int]:
        """Give pending jobs enqueued before dedupkit their key's slot (a one-off migration).

        ``id_pattern`` describes the old job ids, ``{key}`` where the key is and ``*`` for
        anything, e.g. ``"email_process_{key}_*"``. Reads RQ's queue, its list of ids a
        worker has just dequeued, its scheduled, started, deferred and (RQ 3) ready
        registries in pages, and RQ 3's rate limits for this queue's waiting jobs (a one-off scan,
        not a hot path).
        Returns counts: adopted, already, held (another pending job had the slot: a
        duplicate from before dedupkit), not_pending, unmatched.
        """
        return operators.adopt(self, id_pattern, batch_size=batch_size)

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

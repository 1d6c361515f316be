"""Value objects returned by the Deduplicator: JobState, SlotStatus, Admission, EnqueueRequest."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from rq.job import Job

    from .keys import Key


Reason = Literal["running", "dequeued", "due", "ready", "not_running", "repeating", "coalesced", "cooldown"]
"""Why a conflict policy could not apply (``Admission.reason``)."""
Recovered = Literal["gone", "ended", "dead", "lost"]
"""Why a previous holder was stale when its slot was taken over (``Admission.recovered``)."""


class OnConflict(enum.StrEnum):
    """What an admission does when its key has a pending job (``on_conflict=``); the plain
    strings ("reject", "replace", "follow_up") are accepted wherever a member is."""

    REJECT = "reject"
    REPLACE = "replace"
    FOLLOW_UP = "follow_up"


class JobState(enum.StrEnum):
    """What the job holding a slot is doing. A free slot has no state (None)."""

    QUEUED = "queued"
    SCHEDULED = "scheduled"
    DEFERRED = "deferred"
    RUNNING = "running"
    RATE_LIMITED = "rate_limited"  # RQ 3: waiting for a slot of its RateLimit

    @classmethod
    def from_rq(cls, rq_status: str) -> JobState:
        """Map an RQ status string of a pending job.

        'started' is RUNNING; RQ 3's 'ready_to_enqueue' (a follow-up RQ is moving onto the
        queue) is QUEUED; 'rate_limited' is RATE_LIMITED.
        """
        if rq_status == "started":
            return cls.RUNNING
        if rq_status == "ready_to_enqueue":
            return cls.QUEUED
        return cls(rq_status)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


@dataclass(frozen=True)
class LastRun:
    """How a key's previous job ended: status is RQ's final status ('finished', 'failed',
    'stopped', 'canceled'), 'dead' (its worker died mid-job), 'lost' (a worker dequeued it
    and died before starting it) or 'gone' (its hash vanished before dedupkit saw how it
    ended)."""

    job_id: str
    status: str
    ended_at: datetime | None

    @classmethod
    def parse(cls, raw: bytes | str) -> LastRun | None:
        """From the scripts' ``"<job id>|<status>|<ended at>"`` (see ``protocol.last_run``)."""
        from .protocol import last_run

        return last_run(raw)

    def to_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "status": self.status, "ended_at": _iso(self.ended_at)}


@dataclass(frozen=True)
class SlotStatus:
    """The state of one dedup key's slot, as one status script call saw it."""

    key: str
    job_id: str | None = None
    state: JobState | None = None
    scheduled_for: datetime | None = None
    enqueued_at: datetime | None = None
    started_at: datetime | None = None
    follow_up_job_id: str | None = None
    last_run: LastRun | None = None

    @property
    def pending(self) -> bool:
        return self.state is not None

    @property
    def has_running_job(self) -> bool:
        return self.state is JobState.RUNNING

    @property
    def has_scheduled_job(self) -> bool:
        return self.state is JobState.SCHEDULED

    @property
    def has_queued_job(self) -> bool:
        return self.state is JobState.QUEUED

    @property
    def has_deferred_job(self) -> bool:
        return self.state is JobState.DEFERRED

    @property
    def has_rate_limited_job(self) -> bool:
        """RQ 3: the job waits for a slot of its ``rate_limit=`` (RQ promotes it to queued)."""
        return self.state is JobState.RATE_LIMITED

    @classmethod
    def from_reply(cls, key: str, job_id: bytes | str, rq_status: bytes | str, enqueued_at: bytes | str,
                   started_at: bytes | str, scheduled_for: bytes | str, follow_up: bytes | str = b"") -> SlotStatus:
        """Build from the fields the scripts return (see ``protocol.slot_status``)."""
        from .protocol import slot_status

        return slot_status(key, job_id, rq_status, enqueued_at, started_at, scheduled_for, follow_up)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict: the booleans, job_id, state and ISO-8601 timestamps."""
        return {
            "key": self.key,
            "job_id": self.job_id,
            "state": self.state.value if self.state else None,
            "pending": self.pending,
            "has_running_job": self.has_running_job,
            "has_scheduled_job": self.has_scheduled_job,
            "has_queued_job": self.has_queued_job,
            "has_deferred_job": self.has_deferred_job,
            "has_rate_limited_job": self.has_rate_limited_job,
            "scheduled_for": _iso(self.scheduled_for),
            "enqueued_at": _iso(self.enqueued_at),
            "started_at": _iso(self.started_at),
            "follow_up_job_id": self.follow_up_job_id,
            "last_run": self.last_run.to_dict() if self.last_run else None,
        }


@dataclass(frozen=True)
class Admission:
    """The answer to one enqueue request.

    ``admitted`` is True when a new job was written; then ``job_id``/``job`` are the new
    job. On a conflict ``admitted`` is False, ``job_id`` names the pending holder,
    ``job`` is None and ``status`` says what the holder is doing. ``recovered`` names why
    a previous holder was stale when its slot was taken over ('gone', 'ended', 'dead',
    'lost'),
    else None. ``error`` is set only by ``enqueue_many(..., raise_errors=False)``.

    With ``on_conflict="replace"``, ``replaced`` is the id of the job withdrawn for this
    one; with ``"follow_up"``, ``follow_up_of`` is the running job this one waits for.
    When such a policy could not apply, ``reason`` says why: 'running', 'dequeued' (a
    worker is starting it), 'due' (RQ's scheduler may be promoting it), 'not_running'
    (no follow-up for a job that has not started), 'ready' (RQ 3 is moving the holder, a
    follow-up whose own holder ended, onto the queue), 'repeating' (the holder has RQ repeats
    left, and RQ would start a follow-up beside its next repeat), 'coalesced' (a
    follow-up already waits; ``job_id`` is that follow-up's) or 'cooldown' (nothing is pending,
    but the key's last run ended less than the cooldown ago: ``job_id`` is that run's job,
    ``retry_after`` when the key reopens). A call that redis-py replayed
    after a lost reply answers ``admitted`` for the job its first run admitted.
    A ``"follow_up"`` that meets a cooldown is admitted scheduled at the key's reopening;
    its ``retry_after`` is that time too (``status.scheduled_for``).

    ``confirmed`` is None unless the Deduplicator was built with ``min_replicas``: then
    True when at least that many replicas acknowledged the decision's writes within
    ``replica_timeout`` (``replicas`` says how many did), and False when fewer did. An
    unconfirmed admission is written on the primary and may run, but a failover now can
    lose it, slot and job: it is not certain. Retrying it is safe (a conflict answers
    while it holds the key); ``Deduplicator.status(key)`` later tells whether it survived.
    """

    admitted: bool
    job_id: str | None
    status: SlotStatus
    job: Job | None = None
    recovered: Recovered | None = None
    error: Exception | None = None
    replaced: str | None = None
    follow_up_of: str | None = None
    reason: Reason | None = None
    replicas: int | None = None
    confirmed: bool | None = None
    retry_after: datetime | None = None

    @property
    def conflict(self) -> bool:
        return not self.admitted and self.error is None


@dataclass(frozen=True)
class EnqueueRequest:
    """One request for ``Deduplicator.enqueue_many``.

    ``kwargs`` are read as ``rq.Queue.enqueue`` reads them: RQ's options (job_timeout,
    result_ttl, meta, at_front, ...) are taken out, the rest go to ``func``. ``at`` is
    None for an immediate job, a datetime to schedule at, or a timedelta from now.
    ``on_conflict`` is an ``OnConflict`` or its string: "reject" (default), "replace" or
    "follow_up" (see Deduplicator.enqueue). ``cooldown`` is None for the Deduplicator's,
    or a timedelta for this request (``timedelta(0)``: none).
    """

    key: Key
    func: Any
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    at: datetime | timedelta | None = None
    on_conflict: OnConflict | str = OnConflict.REJECT
    cooldown: timedelta | None = None


@dataclass(frozen=True)
class RequeueResult:
    """What ``Deduplicator.requeue`` did with one failed job.

    ``outcome``: 'admitted' (a new job ``new_job_id`` holds the key; the failed job left
    the failed registry), 'conflict' (the key has a pending job ``holder_job_id``; the
    failed job stays in the failed registry) or 'skipped' (``reason``: 'not_dedupkit',
    'not_failed', 'gone' or 'error: ...'; nothing changed).
    """

    job_id: str
    outcome: str
    key: str | None = None
    new_job_id: str | None = None
    holder_job_id: str | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "outcome": self.outcome, "key": self.key, "new_job_id": self.new_job_id,
                "holder_job_id": self.holder_job_id, "reason": self.reason}

"""The contract between Python and the Lua scripts, written once.

For every script: its KEYS by name (each name is a ``KeySpace`` attribute, so a script's
key list is built from the key space here and nowhere else), its ARGV by name, and its
reply decoded into a typed record. Nothing outside this module reads a reply by
position. ``tests/test_script_contract.py`` checks every name, in order, against the
``.lua`` file's header and against the names the script binds ``KEYS[i]``/``ARGV[i]`` to:
two keys swapped on either side fail it.

The transports (``Deduplicator`` on redis-py, ``AsyncDeduplicator`` on redis.asyncio)
send what this module builds and hand back what it decodes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Literal, cast

from rq.utils import utcparse

from .models import JobState, LastRun, Reason, Recovered, SlotStatus

Decision = Literal["admitted", "conflict", "collision", "error"]
CancelOutcome = Literal["cancelled", "free", "running", "dequeued", "due", "ready"]
AdoptOutcome = Literal["adopted", "already", "held", "not_pending"]


@dataclass(frozen=True)
class Contract:
    """How Python calls one script: KEYS and ARGV by name, in the order the script reads them.

    ``keys`` are ``KeySpace`` attribute names. ``more_keys``/``more_argv`` name the
    variadic tail (KEYS[n+1..], ARGV[n+1..]) when there is one; ``request_argv`` names the
    fields of each request in admit.lua's ARGV tail.
    """

    name: str
    keys: tuple[str, ...]
    argv: tuple[str, ...]
    more_keys: str | None = None
    more_argv: str | None = None
    request_argv: tuple[str, ...] = ()

    def key_list(self, space: object, more: Iterable[str] = ()) -> list[str]:
        """The KEYS of one call: every named key read from ``space``, then ``more``."""
        keys = [getattr(space, name) for name in self.keys]
        keys.extend(more)
        return keys

    def arg_list(self, space: object, values: Mapping[str, Any], more: Iterable[Any] = ()) -> list[Any]:
        """The ARGV of one call: each name from ``values``, else from ``space``; then ``more``."""
        args = [values[name] if name in values else getattr(space, name) for name in self.argv]
        args.extend(more)
        return args

    def bind(self, space: object) -> Bound:
        """This contract with everything ``space`` names looked up once (a queue's key
        space does not change): each call then supplies only the remaining ARGV names."""
        return Bound(self, tuple(self.key_list(space)),
                     tuple(getattr(space, name, None) for name in self.argv),
                     tuple((i, name) for i, name in enumerate(self.argv) if not hasattr(space, name)))


@dataclass(frozen=True)
class Bound:
    """A contract bound to one key space: its fixed KEYS and ARGV, and which ARGV each call gives."""

    contract: Contract
    keys: tuple[str, ...]
    argv: tuple[Any, ...]
    per_call: tuple[tuple[int, str], ...]

    def key_list(self, more: Iterable[str] = ()) -> list[str]:
        keys = list(self.keys)
        keys.extend(more)
        return keys

    def arg_list(self, values: Mapping[str, Any], more: Iterable[Any] = ()) -> list[Any]:
        args = list(self.argv)
        for i, name in self.per_call:
            args[i] = values[name]
        args.extend(more)
        return args


_RQ_READ = ("job_prefix", "executions_prefix")

ADMIT = Contract(
    "admit.lua",
    keys=("slots", "gc", "stats", "followups", "queue", "queues", "scheduled", "started", "deferred", "canceled",
          "last", "intermediate", "history"),
    argv=(*_RQ_READ, "n", "gc_budget", "gc_min_age", "due_margin", "now_text", "dependents_template",
          "dependencies_template", "rate_limited_template", "retention"),
    more_keys="job", more_argv="requests",
    request_argv=("field", "job_id", "mode", "run_at", "job_ttl", "policy", "cooldown", "nfields"),
)
STATUS = Contract("status.lua", keys=("slots", "followups", "scheduled", "started", "last", "intermediate"),
                  argv=_RQ_READ, more_argv="fields")
CANCEL = Contract(
    "cancel.lua",
    keys=("slots", "stats", "followups", "queue", "scheduled", "started", "deferred", "canceled", "last",
          "intermediate", "history"),
    argv=(*_RQ_READ, "field", "due_margin", "now_text", "dependents_template", "rate_limited_template"),
)
SWEEP = Contract(
    "sweep.lua",
    keys=("slots", "stats", "followups", "queue", "scheduled", "started", "deferred", "last", "intermediate",
          "history"),
    argv=(*_RQ_READ, "now_text", "dependents_template"), more_argv="fields",
)
ADOPT = Contract("adopt.lua", keys=("slots", "followups", "scheduled", "started", "intermediate"),
                 argv=_RQ_READ, more_argv="pairs")
# The scheduler's leader lease: registered by the Scheduler's Lease, without _common.lua.
LEASE_RENEW = Contract("lease_renew.lua", keys=("lease",), argv=("token", "lease_ms"))
LEASE_RELEASE = Contract("lease_release.lua", keys=("lease",), argv=("token",))

SLOT_SCRIPTS = (ADMIT, STATUS, CANCEL, SWEEP, ADOPT)
LEASE_SCRIPTS = (LEASE_RENEW, LEASE_RELEASE)
ALL = SLOT_SCRIPTS + LEASE_SCRIPTS


# -- decoding ------------------------------------------------------------------------


def text(value: bytes | str | None) -> str:
    """A reply field as text ('' for a nil)."""
    if value is None:
        return ""
    return value.decode(errors="replace") if isinstance(value, bytes) else value


# What RQ's utcparse attaches (its versions differ); read once, so the fast path agrees.
_RQ_TZ = utcparse("2000-01-01T00:00:00.000000Z").tzinfo
_RQ_FORMAT = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z").fullmatch


def _rq_time(value: str) -> datetime | None:
    """RQ's timestamp as ``rq.utils.utcparse`` reads it. Its own format
    (``YYYY-MM-DDTHH:MM:SS.ffffffZ``) goes through ``fromisoformat``, 5x quicker than
    ``strptime`` (a status read decodes one per key); anything else through utcparse."""
    if not value:
        return None
    if _RQ_FORMAT(value):
        try:
            return datetime.fromisoformat(value[:26]).replace(tzinfo=_RQ_TZ)
        except ValueError:  # e.g. February 30th: utcparse raises its own error
            pass
    return utcparse(value)


def _epoch(value: str) -> datetime | None:
    return datetime.fromtimestamp(float(value), tz=timezone.utc) if value else None


def last_run(raw: bytes | str | None) -> LastRun | None:
    """A key's last run as the scripts store it, ``"<job id>|<status>|<ended at>"``."""
    value = text(raw)
    if not value:
        return None
    job_id, status, ended = value.split("|", 2)
    try:
        ended_at = _rq_time(ended)
    except ValueError:
        ended_at = None
    return LastRun(job_id, status, ended_at)


def slot_status(key: str, job_id: bytes | str, rq_status: bytes | str, enqueued_at: bytes | str,
                started_at: bytes | str, scheduled_for: bytes | str, follow_up: bytes | str | None = None,
                last: LastRun | None = None) -> SlotStatus:
    """The slot of ``key`` held by ``job_id``, from the holder fields every script reports
    (``{rq_status, enqueued_at, started_at, scheduled_for}``: dk_pending's answer)."""
    return _slot(key, text(job_id), text(rq_status), text(enqueued_at), text(started_at), text(scheduled_for),
                 text(follow_up), last)


def _slot(key: str, job_id: str, rq_status: str, enqueued_at: str, started_at: str, scheduled_for: str,
          follow_up: str, last: LastRun | None) -> SlotStatus:
    return SlotStatus(key=key, job_id=job_id, state=JobState.from_rq(rq_status), scheduled_for=_epoch(scheduled_for),
                      enqueued_at=_rq_time(enqueued_at), started_at=_rq_time(started_at),
                      follow_up_job_id=follow_up or None, last_run=last)


def _texts(raw: Sequence[bytes | str]) -> list[str]:
    return [v.decode(errors="replace") if isinstance(v, bytes) else v for v in raw]


@dataclass(slots=True)
class AdmitReply:
    """One request's answer from admit.lua (see its header).

    ``holder`` fields (rq_status .. scheduled_for) describe the admitted job, or on a
    conflict the holder; all '' for a collision, an error, or a replay of an ended job.
    """

    decision: Decision
    job_id: str
    rq_status: str
    enqueued_at: str
    started_at: str
    scheduled_for: str
    recovered: Recovered | None
    replaced: str | None  # admitted: the job withdrawn for this one
    follow_up_of: str | None  # admitted: the running job this one waits for
    replayed: bool  # admitted: redis-py resent the call; the first run admitted this job
    reason: Reason | None  # conflict: why the policy could not apply
    waiting_follow_up: str | None  # conflict: the follow-up waiting behind the running holder
    replaced_rate_limit: str | None  # admitted: the replaced job's RQ 3 rate limit key
    retry_after: datetime | None  # conflict 'cooldown': when the key reopens; admitted 'cooldown': its run time
    message: str | None  # error: what failed
    last: LastRun | None  # the key's last run after the decision (the 10th field)

    @classmethod
    def decode(cls, raw: Sequence[bytes | str]) -> AdmitReply:
        decision, job_id, rq_status, enqueued_at, started_at, scheduled_for, recovered, note, extra, last = _texts(raw)
        action, _, other = note.partition(":")
        admitted = decision == "admitted"
        conflict = decision == "conflict"
        cooling = note == "cooldown"
        return cls(
            decision=cast(Decision, decision), job_id=job_id,
            rq_status="" if decision == "error" else rq_status,
            enqueued_at=enqueued_at, started_at=started_at, scheduled_for=scheduled_for,
            recovered=cast(Recovered, recovered) if recovered else None,
            replaced=other if admitted and action == "replaced" else None,
            follow_up_of=other if admitted and action == "follow_up" else None,
            replayed=admitted and note == "replayed",
            reason=cast(Reason, note) if conflict and note else None,
            waiting_follow_up=extra if conflict and extra and not cooling else None,
            replaced_rate_limit=extra if admitted and extra else None,
            message=rq_status if decision == "error" else None,
            retry_after=(_epoch(extra) if conflict else _epoch(scheduled_for)) if cooling else None,
            last=last_run(last),
        )

    def holder_status(self, key: str) -> SlotStatus:
        """The slot as this reply describes it (conflict, or a replay of a pending job)."""
        if not self.rq_status:
            return SlotStatus(key, last_run=self.last)
        return _slot(key, self.job_id, self.rq_status, self.enqueued_at, self.started_at, self.scheduled_for,
                     self.waiting_follow_up or "", self.last)


def admit_replies(raw: Sequence[Sequence[bytes | str]]) -> list[AdmitReply]:
    return [AdmitReply.decode(reply) for reply in raw]


@dataclass(slots=True)
class StatusReply:
    """One key's answer from status.lua: its holder ('' when free) and its last run."""

    holder: str
    rq_status: str
    enqueued_at: str
    started_at: str
    scheduled_for: str
    follow_up: str
    last: str

    @classmethod
    def decode(cls, raw: Sequence[bytes | str]) -> StatusReply:
        return cls(*_texts(raw))

    def slot(self, key: str) -> SlotStatus:
        last = last_run(self.last)
        if not self.holder:
            return SlotStatus(key, last_run=last)
        return _slot(key, self.holder, self.rq_status, self.enqueued_at, self.started_at, self.scheduled_for,
                     self.follow_up, last)


@dataclass(slots=True)
class CancelReply:
    """cancel.lua's answer: the outcome, the job it concerns ('' when free and empty),
    that job's RQ status, and the RQ 3 rate limit key of a cancelled rate-limited job."""

    outcome: CancelOutcome
    job_id: str
    rq_status: str
    rate_limit_key: str

    @classmethod
    def decode(cls, raw: Sequence[bytes | str]) -> CancelReply:
        outcome, job_id, rq_status, rate_limit_key = _texts(raw)
        return cls(cast(CancelOutcome, outcome), job_id, rq_status, rate_limit_key)


@dataclass(slots=True)
class AdoptReply:
    """adopt.lua's answer for one (field, job id) pair; ``holder`` for 'held'."""

    outcome: AdoptOutcome
    holder: str | None

    @classmethod
    def decode(cls, raw: bytes | str) -> AdoptReply:
        outcome, _, holder = text(raw).partition(":")
        return cls(cast(AdoptOutcome, outcome), holder or None)


def swept(raw: int | bytes) -> int:
    """sweep.lua's answer: how many slots it deleted."""
    return int(raw)


def lease_answer(raw: int | bytes) -> bool:
    """lease_renew.lua / lease_release.lua: 1 when this replica held the lease."""
    return int(raw) == 1

"""The drop-in functional API: the names of the seed's job_utils, backed by dedupkit slots.

The replaced functions each took ``(redis_conn, user_id, queue_name="default")`` and
found the user's jobs by scanning RQ's queue and registries for ids that start with
``<prefix>_<user_id>_`` (the seed's prefix was ``email_process``). These answer from the
user's dedupkit slot (one O(1) script call) **and**, while ``legacy_scan`` is on (the
default), from that same scan, classifying each job it finds by RQ's own status. So a job
the old code enqueued (``queue.enqueue(f, job_id=generate_job_id(uid))``) is seen, as the
replaced functions saw it. A pending old-style job found on a free slot is given that
slot (the ``adopt`` script), by ``enqueue`` (the functional admission) and by every query,
so no second job is admitted beside it, whether by ``enqueue`` or a bare ``Deduplicator``.

The job id prefix is set once by the application: ``configure(job_id_prefix=...)``. Its
default is ``"job"``, the ``Deduplicator``'s own default, so the two APIs see the same
jobs unless told otherwise; an application migrating from the seed sets the prefix its old
code used (the example app sets ``email_process``). The library hard-wires no app's name.

A function looks at ONE queue, ``queue_name`` (default ``"default"``): a job on any other
queue is not seen, and the answer is False. Each call logs (DEBUG) the queue it looked at;
the first call on a queue (per process) warns when RQ does not know that queue at all.

Unlike ``Deduplicator``, which raises RedisUnavailableError, these keep the contract of
the code they replace: when Redis cannot be reached they log the error and return False
(``get_user_job_status`` returns a dict with an ``error`` field). Invalid user ids still
raise InvalidKeyError: that is a bug in the caller, not an outage. ``enqueue`` raises.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from redis import Redis
from rq import Queue

from . import keys, legacy, scripts
from .core import DEFAULT_RETENTION, check_period
from .deduplicator import Deduplicator
from .errors import InvalidRequestError, RedisUnavailableError, ScriptError
from .models import Admission, SlotStatus

logger = logging.getLogger("dedupkit.job_utils")

DEFAULT_JOB_ID_PREFIX = "job"
"""The default prefix: the same as ``Deduplicator(job_id_prefix="job")``."""


@dataclass
class _Config:
    job_id_prefix: str = DEFAULT_JOB_ID_PREFIX
    legacy_scan: bool = True
    namespace: str = "dedupkit"
    cooldown: timedelta | None = None
    retention: timedelta = DEFAULT_RETENTION


_config = _Config()
_checked_queues: set[str] = set()  # queue names asked about "unknown to RQ?" (once per process)


def configure(*, job_id_prefix: str | None = None, legacy_scan: bool | None = None,
              namespace: str | None = None, cooldown: timedelta | None = None,
              retention: timedelta | None = None) -> None:
    """Set, once at start-up, what every function here uses.

    ``job_id_prefix``: the ids are ``<prefix>_<user>_<µs>``; set the prefix your old code
    used (the seed's was ``email_process``), so new jobs and old ones are one family.
    ``legacy_scan``: also find old-style jobs by id (see the README's migration section);
    turn it off once no process runs the old code and ``dedupkit adopt`` has run.
    ``namespace``: the Deduplicator's namespace (default ``dedupkit``).
    ``cooldown``/``retention``: the Deduplicator's (see ``Deduplicator``); ``timedelta(0)``
    turns a configured cooldown off.
    """
    if job_id_prefix is not None:
        _config.job_id_prefix = keys.validate_prefix(job_id_prefix)
    if legacy_scan is not None:
        if not isinstance(legacy_scan, bool):
            raise InvalidRequestError(f"legacy_scan must be a bool, not {type(legacy_scan).__name__}")
        _config.legacy_scan = legacy_scan
    if namespace is not None:
        _config.namespace = namespace
    if cooldown is not None or retention is not None:
        new_cooldown = _config.cooldown if cooldown is None else check_period("cooldown", cooldown)
        new_retention = _config.retention if retention is None else check_period("retention", retention,
                                                                                  positive=True)
        if new_cooldown is not None and new_cooldown > new_retention:
            raise InvalidRequestError(f"cooldown {new_cooldown} is longer than the retention {new_retention}")
        _config.cooldown, _config.retention = new_cooldown, new_retention


def job_id_prefix() -> str:
    """The configured job id prefix (``configure``)."""
    return _config.job_id_prefix


def deduplicator(redis_conn: Redis, queue_name: str = "default") -> Deduplicator:
    """The Deduplicator these functions use for ``queue_name`` (the configured prefix and namespace)."""
    return Deduplicator(Queue(queue_name, connection=redis_conn), namespace=_config.namespace,
                        job_id_prefix=_config.job_id_prefix, cooldown=_config.cooldown,
                        retention=_config.retention)


def generate_job_id(user_id: keys.Key, timestamp: float | datetime | None = None) -> str:
    """A job id for ``user_id``: ``<prefix>_<encoded user id>_<µs>``, deterministic from
    (user id, timestamp), valid for RQ, never shared by two users. ``timestamp`` defaults to now."""
    return keys.generate_job_id(user_id, timestamp, prefix=_config.job_id_prefix)


@dataclass(frozen=True)
class _View:
    """The user's slot and the old-style pending jobs beside it."""

    slot: SlotStatus
    legacy: tuple[legacy.LegacyJob, ...]

    def states(self) -> list[SlotStatus]:
        extra = [job.as_status(self.slot.key) for job in self.legacy if job.job_id != self.slot.job_id]
        return ([self.slot] if self.slot.pending else []) + extra


def _view(redis_conn: Redis, user_id: keys.Key, queue_name: str, what: str) -> _View | None:
    dedup = deduplicator(redis_conn, queue_name)
    keys.normalize_key(user_id)  # a bad id raises InvalidKeyError, outage or not
    try:
        slot = dedup.status(user_id)
        found = tuple(legacy.scan(dedup, user_id, _config.job_id_prefix)) if _config.legacy_scan else ()
        _warn_unknown_queue(dedup)
    except (RedisUnavailableError, ScriptError) as exc:
        logger.error("Could not read the job status of user %s on queue %r: %s", user_id, queue_name, exc)
        return None
    view = _View(slot, found)
    if found and not slot.pending:
        _adopt(dedup, user_id, found)
    logger.debug("%s(user %s) looked at queue %r: slot %s, old-style pending %s", what, user_id, queue_name,
                 slot.job_id if slot.pending else "free", [j.job_id for j in found] or "none")
    return view


def _adopt(dedup: Deduplicator, user_id: keys.Key, found: Sequence[legacy.LegacyJob]) -> None:
    """Give a pending old-style job the user's free slot (adopt.lua: only a free slot, only a
    pending job), so that any later admission, by ``enqueue`` or a bare ``Deduplicator``,
    answers a conflict with it. A failure here (a read-only replica, say) is logged: it
    never changes the answer of a query."""
    try:
        _adopt_or_raise(dedup, user_id, found)
    except (RedisUnavailableError, ScriptError) as exc:
        logger.warning("Could not give user %s's old-style job %s the slot on queue %r: %s", user_id,
                       found[0].job_id, dedup.queue.name, exc)


def _adopt_or_raise(dedup: Deduplicator, user_id: keys.Key, found: Sequence[legacy.LegacyJob]) -> None:
    answers = legacy.adopt(dedup, user_id, found)
    if "adopted" in answers:
        logger.info("User %s: old-style job %s on queue %r now holds the user's slot", user_id,
                    found[answers.index("adopted")].job_id, dedup.queue.name)


def _warn_unknown_queue(dedup: Deduplicator) -> None:
    name = dedup.queue.name
    if name in _checked_queues:
        return
    with scripts.redis_errors():
        known = dedup.connection.sismember(dedup.keys.queues, dedup.keys.queue)
    _checked_queues.add(name)
    if not known:
        logger.warning("Queue %r is unknown to RQ (no job was ever enqueued on it): job_utils functions look "
                       "only at the queue_name they are given (default 'default'); pass the queue your jobs use",
                       name)


def is_user_job_running(redis_conn: Redis, user_id: keys.Key, queue_name: str = "default") -> bool:
    """True when the user has a running job on ``queue_name`` (only that queue). Logs and
    returns False when Redis is unreachable."""
    view = _view(redis_conn, user_id, queue_name, "is_user_job_running")
    return bool(view and any(s.has_running_job for s in view.states()))


def is_user_job_scheduled(redis_conn: Redis, user_id: keys.Key, queue_name: str = "default") -> bool:
    """True when the user's job waits in the scheduled registry of ``queue_name`` (only that
    queue). Logs and returns False when Redis is unreachable."""
    view = _view(redis_conn, user_id, queue_name, "is_user_job_scheduled")
    return bool(view and any(s.has_scheduled_job for s in view.states()))


def is_user_job_queued(redis_conn: Redis, user_id: keys.Key, queue_name: str = "default") -> bool:
    """True when the user's job waits in ``queue_name`` (only that queue). Logs and returns
    False when Redis is unreachable."""
    view = _view(redis_conn, user_id, queue_name, "is_user_job_queued")
    return bool(view and any(s.has_queued_job for s in view.states()))


def has_user_job_pending(redis_conn: Redis, user_id: keys.Key, queue_name: str = "default") -> bool:
    """True when the user has a queued, scheduled, deferred or running job on ``queue_name``
    (only that queue: False for jobs on any other). Logs and returns False when Redis is
    unreachable (callers that must not enqueue on an outage should use ``enqueue`` or
    ``Deduplicator``, which raise)."""
    view = _view(redis_conn, user_id, queue_name, "has_user_job_pending")
    return bool(view and view.states())


def get_user_job_status(redis_conn: Redis, user_id: keys.Key, queue_name: str = "default") -> dict[str, Any]:
    """The user's job status on ``queue_name`` as a dict: ``user_id``, ``queue``,
    ``has_running_job``, ``has_scheduled_job``, ``has_queued_job``, ``job_id``, ``state``,
    the rest of ``SlotStatus.to_dict()``, and ``jobs``: every pending job found (the slot's,
    then old-style ones), each ``{"job_id", "state"}``. ``job_id``/``state`` describe the
    first of them. When Redis is unreachable the booleans are False and an ``error`` field
    says why."""
    view = _view(redis_conn, user_id, queue_name, "get_user_job_status")
    if view is None:
        return {"user_id": user_id, "queue": queue_name, "has_running_job": False, "has_scheduled_job": False,
                "has_queued_job": False, "job_id": None, "state": None, "jobs": [], "error": "Redis is unavailable"}
    states = view.states()
    first = replace(states[0], last_run=view.slot.last_run) if states else view.slot
    data = first.to_dict()
    for flag in ("has_running_job", "has_scheduled_job", "has_queued_job", "has_deferred_job",
                 "has_rate_limited_job"):
        data[flag] = any(getattr(s, flag) for s in states)
    data["jobs"] = [{"job_id": s.job_id, "state": s.state.value if s.state else None} for s in states]
    data["user_id"] = user_id
    data["queue"] = queue_name
    return data


def enqueue(redis_conn: Redis, user_id: keys.Key, func: Any, *args: Any, queue_name: str = "default",
            on_conflict: str = "reject", cooldown: timedelta | None = None, **kwargs: Any) -> Admission:
    """Admit ``func(*args, **kwargs)`` for the user on ``queue_name`` unless a job of theirs
    is pending, old-style ones included: ``Deduplicator.enqueue`` after the legacy scan.

    A pending old-style job found by the scan is first given the user's free slot (the
    ``adopt`` script, which takes a slot only for a pending job), so the admission answers
    a conflict with it, and every later admission does too, scan or not. ``cooldown``:
    None for the configured one (``configure``), else this call's. Raises as
    ``Deduplicator.enqueue`` does (RedisUnavailableError on an outage).
    """
    dedup = deduplicator(redis_conn, queue_name)
    if _config.legacy_scan:
        _adopt_or_raise(dedup, user_id, legacy.scan(dedup, user_id, _config.job_id_prefix))
    return dedup.enqueue(user_id, func, *args, on_conflict=on_conflict, cooldown=cooldown, **kwargs)

"""The drop-in functional API: the names of the seed's job_utils, backed by dedupkit slots.

Each function takes ``(redis_conn, user_id, queue_name="default")`` and answers from the
user's slot in one O(1) script call, instead of scanning RQ's registries for job ids
that start with ``email_process_<user_id>_``.

Unlike ``Deduplicator``, which raises RedisUnavailableError, these keep the contract of
the code they replace: when Redis cannot be reached they log the error and return False
(``get_user_job_status`` returns a dict with an ``error`` field). Invalid user ids still
raise InvalidKeyError: that is a bug in the caller, not an outage.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from redis import Redis
from rq import Queue

from . import keys
from .deduplicator import Deduplicator
from .errors import RedisUnavailableError, ScriptError
from .models import SlotStatus

logger = logging.getLogger("dedupkit.job_utils")

JOB_ID_PREFIX = "email_process"
"""Job ids made here read ``email_process_<encoded user id>_<microseconds>``, as the seed's did."""


def generate_job_id(user_id: keys.Key, timestamp: float | datetime | None = None) -> str:
    """A job id for ``user_id``: deterministic from (user id, timestamp), valid for RQ,
    never shared by two users. ``timestamp`` defaults to now."""
    return keys.generate_job_id(user_id, timestamp, prefix=JOB_ID_PREFIX)


def _status(redis_conn: Redis, user_id: keys.Key, queue_name: str) -> SlotStatus | None:
    dedup = Deduplicator(Queue(queue_name, connection=redis_conn), job_id_prefix=JOB_ID_PREFIX)
    try:
        return dedup.status(user_id)
    except (RedisUnavailableError, ScriptError) as exc:
        logger.error("Could not read the job status of user %s: %s", user_id, exc)
        return None


def is_user_job_running(redis_conn: Redis, user_id: keys.Key, queue_name: str = "default") -> bool:
    """True when the user's job is running. Logs and returns False when Redis is unreachable."""
    status = _status(redis_conn, user_id, queue_name)
    return bool(status and status.has_running_job)


def is_user_job_scheduled(redis_conn: Redis, user_id: keys.Key, queue_name: str = "default") -> bool:
    """True when the user's job waits in the scheduled registry. Logs and returns False when
    Redis is unreachable."""
    status = _status(redis_conn, user_id, queue_name)
    return bool(status and status.has_scheduled_job)


def is_user_job_queued(redis_conn: Redis, user_id: keys.Key, queue_name: str = "default") -> bool:
    """True when the user's job waits in the queue. Logs and returns False when Redis is
    unreachable."""
    status = _status(redis_conn, user_id, queue_name)
    return bool(status and status.has_queued_job)


def has_user_job_pending(redis_conn: Redis, user_id: keys.Key, queue_name: str = "default") -> bool:
    """True when the user has a queued, scheduled, deferred or running job. Logs and returns
    False when Redis is unreachable (callers that must not enqueue on an outage should use
    ``Deduplicator``, which raises)."""
    status = _status(redis_conn, user_id, queue_name)
    return bool(status and status.pending)


def get_user_job_status(redis_conn: Redis, user_id: keys.Key, queue_name: str = "default") -> dict[str, Any]:
    """The user's job status as a dict: ``user_id``, ``has_running_job``,
    ``has_scheduled_job``, ``has_queued_job``, ``job_id``, ``state`` and the rest of
    ``SlotStatus.to_dict()``. When Redis is unreachable the booleans are False and an
    ``error`` field says why."""
    status = _status(redis_conn, user_id, queue_name)
    if status is None:
        return {"user_id": user_id, "has_running_job": False, "has_scheduled_job": False,
                "has_queued_job": False, "job_id": None, "state": None, "error": "Redis is unavailable"}
    data = status.to_dict()
    data["user_id"] = user_id
    return data

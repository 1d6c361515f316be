"""Every name dedupkit uses in Redis: the key space of a queue, taken from RQ's own objects.

This is the one place keys are named: the Lua scripts receive every key (or, for
keys derived from a holder's job id, RQ's own prefix) from here, in the order
``protocol`` gives each script. The encoding of dedup keys into job ids lives in
``encoding`` (re-exported here for the callers that import it from ``keys``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rq import Queue
from rq.executions import ExecutionRegistry

from .encoding import (
    MAX_KEY_BYTES,
    Key,
    decode_key,
    encode_key,
    generate_job_id,
    normalize_key,
    parse_job_id,
    validate_prefix,
)
from .errors import InvalidRequestError
from .lease import scheduler_lease_key

try:  # RQ 3: rate limits (RateLimit(key, concurrency)); RQ 2 has none
    _rate_limit: Any = importlib.import_module("rq.rate_limit")
except ImportError:  # pragma: no cover - RQ 2
    _rate_limit = None
RateLimit: Any = getattr(_rate_limit, "RateLimit", None)
RateLimitRegistry: Any = getattr(_rate_limit, "RateLimitRegistry", None)

__all__ = [
    "MAX_KEY_BYTES", "Key", "KeySpace", "RateLimit", "RateLimitRegistry", "cron_counts_key", "decode_key",
    "encode_key",
    "generate_job_id", "hash_tag", "normalize_key", "parse_job_id", "scheduler_lease_key", "validate_prefix",
]


@dataclass(frozen=True)
class KeySpace:
    """The Redis keys of one queue, taken from RQ's own objects at run time."""

    slots: str  # hash: encoded dedup key -> holder job id
    gc: str  # string: where gc's walk through the slots hash stands (admit.lua)
    stats: str  # hash: decision -> count
    followups: str  # hash: encoded dedup key -> id of the follow-up waiting for the running holder
    last: str  # hash: encoded dedup key -> "<job id>|<final status>|<ended at>" of its last run
    history: str  # zset: encoded dedup key -> when its last run ended (epoch s, Redis clock); trims `last`
    queue: str  # RQ queue list
    intermediate: str  # RQ's list of ids a worker of one queue has dequeued, not yet started
    queues: str  # RQ set of queue keys
    scheduled: str  # RQ ScheduledJobRegistry
    started: str  # RQ StartedJobRegistry (rq:wip:<q>)
    deferred: str  # RQ DeferredJobRegistry
    canceled: str  # RQ CanceledJobRegistry
    job_prefix: str  # RQ job hash prefix, "rq:job:"
    executions_prefix: str  # RQ per-job executions zset prefix, "rq:executions:"
    dependents_template: str  # string.format template of a job's dependents set, "rq:job:%s:dependents"
    dependencies_template: str  # ... of a job's dependencies set, "rq:job::%s:dependencies" (sic, RQ 2.12)
    rate_limited_template: str  # RQ 3: ... of a rate limit's waiting zset, "rq:rl:%s:rate_limited"; '' on RQ 2

    @classmethod
    def for_queue(cls, queue: Queue, namespace: str) -> KeySpace:
        base = namespace_base(queue, namespace)
        return cls(
            slots=f"{base}:slots:{queue.name}",
            gc=f"{base}:gcpos:{queue.name}",
            stats=f"{base}:stats:{queue.name}",
            followups=f"{base}:followups:{queue.name}",
            last=f"{base}:last:{queue.name}",
            history=f"{base}:history:{queue.name}",
            queue=queue.key,
            intermediate=queue.intermediate_queue_key,
            queues=queue.redis_queues_keys,
            scheduled=queue.scheduled_job_registry.key,
            started=queue.started_job_registry.key,
            deferred=queue.deferred_job_registry.key,
            canceled=queue.canceled_job_registry.key,
            job_prefix=queue.job_class.redis_job_namespace_prefix,
            executions_prefix=ExecutionRegistry.key_template.format(""),
            dependents_template=_lua_template(queue.job_class.dependents_key_for),
            dependencies_template=_lua_template(
                lambda job_id: queue.job_class(job_id, connection=queue.connection).dependencies_key),
            rate_limited_template=_rate_limited_template(queue),
        )

    def job_key(self, job_id: str) -> str:
        return self.job_prefix + job_id


def cron_counts_key(queue: Queue, namespace: str) -> str:
    """Hash of ``dedupkit.cron``'s tick counters on ``queue``: "<outcome>:<cron job name>" -> count."""
    return f"{namespace_base(queue, namespace)}:cron:{queue.name}"


def namespace_base(queue: Queue, namespace: str) -> str:
    """The prefix of dedupkit's keys for ``queue``: ``namespace``, behind RQ's hash tag if it has one."""
    if not isinstance(namespace, str) or not namespace or any(c in namespace for c in " {}\n"):
        raise InvalidRequestError(f"namespace {namespace!r} must be a non-empty string without spaces or braces")
    # RQ 3's RQ_KEY_PREFIX may carry a Redis Cluster hash tag ("{rq}"): every RQ key is
    # then in one slot, and dedupkit's keys join it, since each script touches both.
    tag = hash_tag(queue.redis_queue_namespace_prefix)
    return f"{tag}:{namespace}" if tag else namespace


def hash_tag(key: str) -> str:
    """The Redis Cluster hash tag of ``key`` ("{rq}" of "{rq}:queue:"), or '' if it has none."""
    start = key.find("{")
    end = key.find("}", start + 1) if start >= 0 else -1
    return key[start:end + 1] if end > start + 1 else ""


def _lua_template(key_for: Callable[[str], str]) -> str:
    """Turn RQ's own key-for-a-job-id function into a Lua string.format template."""
    marker = "DEDUPKITJOBID"
    key = key_for(marker)
    if key.count(marker) != 1:
        raise AssertionError(f"cannot derive a key template from {key!r}")
    return key.replace("%", "%%").replace(marker, "%s")


def _rate_limited_template(queue: Queue) -> str:
    """RQ 3's key of a rate limit's waiting zset, as a template of the limit's key; '' on RQ 2."""
    if RateLimitRegistry is None:
        return ""
    return _lua_template(lambda key: str(RateLimitRegistry(key, connection=queue.connection).rate_limited_key))

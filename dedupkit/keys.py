"""Every name dedupkit uses in Redis, and the encoding of dedup keys into job ids.

This is the one place keys are named: the Lua scripts receive every key (or, for
keys derived from a holder's job id, RQ's own prefix) from here.
"""

from __future__ import annotations

import importlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeAlias

from rq import Queue
from rq.executions import ExecutionRegistry

from .errors import InvalidKeyError, InvalidRequestError

try:  # RQ 3: rate limits (RateLimit(key, concurrency)); RQ 2 has none
    _rate_limit: Any = importlib.import_module("rq.rate_limit")
except ImportError:  # pragma: no cover - RQ 2
    _rate_limit = None
RateLimit: Any = getattr(_rate_limit, "RateLimit", None)
RateLimitRegistry: Any = getattr(_rate_limit, "RateLimitRegistry", None)


Key: TypeAlias = str | int
"""A dedup key: a non-empty str (at most 512 UTF-8 bytes) or an int; 123 == "123"."""

MAX_KEY_BYTES = 512
_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_PREFIX_RE = re.compile(r"[A-Za-z0-9_-]+")
_ENCODED_RE = re.compile(r"(?:[A-Za-z0-9]|-[0-9a-f]{2})+")


def normalize_key(key: object) -> str:
    """Return the canonical text of a dedup key, or raise InvalidKeyError.

    ints (not bools) become their decimal text, so 123 and "123" are one key.
    """
    if key is None:
        raise InvalidKeyError(key, "key is None")
    if isinstance(key, bool):
        raise InvalidKeyError(key, "bool is not a key (use an int or a str)")
    if isinstance(key, int):
        return str(key)
    if not isinstance(key, str):
        raise InvalidKeyError(key, f"type {type(key).__name__} is not a key (use an int or a str)")
    if key == "":
        raise InvalidKeyError(key, "key is empty")
    if key.strip() == "":
        raise InvalidKeyError(key, "key is only whitespace")
    try:
        size = len(key.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidKeyError(key, "key is not valid Unicode (lone surrogate)") from None
    if size > MAX_KEY_BYTES:
        raise InvalidKeyError(key, f"key is {size} bytes in UTF-8, over the {MAX_KEY_BYTES}-byte limit")
    return key


def encode_key(key: object) -> str:
    """Encode a dedup key into ``[A-Za-z0-9-]+``, injectively.

    ASCII letters and digits stay as they are; every other UTF-8 byte becomes
    ``-xx`` (lower-case hex). No ``_`` can appear, so the encoded key is a
    self-delimiting part of a job id, and distinct keys never share an encoding
    ("a_b" -> "a-5fb", "a/b" -> "a-2fb", "a:b" -> "a-3ab").
    """
    raw = normalize_key(key).encode("utf-8")
    return "".join(chr(b) if b in _SAFE else f"-{b:02x}" for b in raw)


def decode_key(encoded: str) -> str:
    """Invert encode_key (for operators reading slots)."""
    if not _ENCODED_RE.fullmatch(encoded):
        raise ValueError(f"{encoded!r} is not an encoded dedup key")
    out = bytearray()
    i = 0
    while i < len(encoded):
        if encoded[i] == "-":
            out.append(int(encoded[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(ord(encoded[i]))
            i += 1
    return out.decode("utf-8")


def validate_prefix(prefix: str) -> str:
    """Check a job id prefix is usable in an RQ job id."""
    if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
        raise InvalidRequestError(f"job id prefix {prefix!r} must match [A-Za-z0-9_-]+")
    return prefix


def generate_job_id(key: Key, timestamp: float | datetime | None = None, *, prefix: str = "job") -> str:
    """Return ``<prefix>_<encoded key>_<microseconds since the epoch>``.

    Deterministic from (prefix, key, timestamp); ``timestamp`` defaults to now.
    Always a valid RQ job id, and never the same for two different keys.
    """
    validate_prefix(prefix)
    if timestamp is None:
        micros = time.time_ns() // 1000
    elif isinstance(timestamp, datetime):
        micros = round(timestamp.timestamp() * 1_000_000)
    elif isinstance(timestamp, (int, float)) and not isinstance(timestamp, bool):
        micros = round(timestamp * 1_000_000)
    else:
        raise InvalidRequestError(f"timestamp must be a number, a datetime or None, not {type(timestamp).__name__}")
    if micros < 0:
        raise InvalidRequestError("timestamp must not be before 1970")
    return f"{prefix}_{encode_key(key)}_{micros}"


def parse_job_id(job_id: str, *, prefix: str = "job") -> str | None:
    """The dedup key of a job id made by generate_job_id with ``prefix``, else None.

    ``<prefix>_<encoded key>_<microseconds>``: the encoded key never holds ``_`` and the
    time is digits, so the two last ``_`` split the id unambiguously even when the prefix
    has ``_`` of its own.
    """
    head, sep, micros = job_id.rpartition("_")
    if not sep or not micros.isdigit():
        return None
    job_prefix, sep, encoded = head.rpartition("_")
    if not sep or job_prefix != prefix:
        return None
    try:
        return decode_key(encoded)
    except (ValueError, UnicodeDecodeError):
        return None


@dataclass(frozen=True)
class KeySpace:
    """The Redis keys of one queue, taken from RQ's own objects at run time."""

    slots: str  # hash: encoded dedup key -> holder job id
    gc: str  # zset: encoded dedup key -> when its slot was last checked (Redis time)
    stats: str  # hash: decision -> count
    followups: str  # hash: encoded dedup key -> id of the follow-up waiting for the running holder
    last: str  # hash: encoded dedup key -> "<job id>|<final status>|<ended at>" of its last run
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
        if not isinstance(namespace, str) or not namespace or any(c in namespace for c in " {}\n"):
            raise InvalidRequestError(f"namespace {namespace!r} must be a non-empty string without spaces or braces")
        # RQ 3's RQ_KEY_PREFIX may carry a Redis Cluster hash tag ("{rq}"): every RQ key is
        # then in one slot, and dedupkit's keys join it, since each script touches both.
        tag = hash_tag(queue.redis_queue_namespace_prefix)
        base = f"{tag}:{namespace}" if tag else namespace
        return cls(
            slots=f"{base}:slots:{queue.name}",
            gc=f"{base}:gc:{queue.name}",
            stats=f"{base}:stats:{queue.name}",
            followups=f"{base}:followups:{queue.name}",
            last=f"{base}:last:{queue.name}",
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


def hash_tag(key: str) -> str:
    """The Redis Cluster hash tag of ``key`` ("{rq}" of "{rq}:queue:"), or '' if it has none."""
    start = key.find("{")
    end = key.find("}", start + 1) if start >= 0 else -1
    return key[start:end + 1] if end > start + 1 else ""


def scheduler_lease_key(namespace: str, queue_name: str, name: str) -> str:
    """The Redis key of a scheduler's leader lease (see lua/lease_renew.lua)."""
    return f"{namespace}:scheduler:{queue_name}:{name}:leader"


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

"""The exception hierarchy: one root, typed subclasses that carry attributes."""

from __future__ import annotations


class DedupkitError(Exception):
    """Root of every error dedupkit raises."""


class InvalidKeyError(DedupkitError, ValueError):
    """A dedup key was None, empty, blank, of a wrong type or too long."""

    def __init__(self, key: object, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"invalid dedup key {key!r:.80}: {reason}")


class InvalidRequestError(DedupkitError, ValueError):
    """An enqueue request dedupkit cannot honour (a caller job_id, a negative delay, ...)."""


class RedisUnavailableError(DedupkitError):
    """Redis could not be reached, or refused to serve (connection refused, timeout, READONLY, OOM, ...).

    The redis-py exception is kept as ``__cause__`` and as ``error``. ``code`` is the
    server's refusal code (``READONLY``, ``OOM``, ...) and ``server_message`` the server's
    own words, both None when no server answered (see RedisRefusedError).
    """

    code: str | None = None
    server_message: str | None = None

    def __init__(self, error: Exception) -> None:
        self.error = error
        super().__init__(f"Redis is unavailable: {error}")


class RedisRefusedError(RedisUnavailableError):
    """The server answered but refused the command for a reason of its own state, not of
    the request: a replica after failover (READONLY), out of memory (OOM), a failed
    snapshot (MISCONF), a busy script (BUSY), loading its data (LOADING), no primary or
    replicas (MASTERDOWN, NOREPLICAS), a cluster change (CLUSTERDOWN, TRYAGAIN).

    Nothing a dedupkit script would have written was written (Redis refuses before a
    script's first write, or a refused request writes nothing). Retry later, or elsewhere.
    """

    def __init__(self, error: Exception, code: str, server_message: str) -> None:
        self.code = code
        self.server_message = server_message
        self.error = error
        DedupkitError.__init__(self, f"Redis refused the command ({code}): {server_message}")


class EvictionPolicyError(DedupkitError):
    """Redis may evict keys (``maxmemory-policy`` is not ``noeviction``), so a slot or RQ's
    own job keys could vanish under a pending job and a second job be admitted beside it.

    Set ``maxmemory-policy noeviction`` on the server, or pass
    ``Deduplicator(..., allow_eviction=True)`` to accept the risk.
    """

    def __init__(self, policy: str) -> None:
        self.policy = policy
        super().__init__(
            f"Redis maxmemory-policy is {policy!r}: an evicting Redis can drop a dedup slot or RQ's "
            "job keys under a pending job, and then admit a duplicate. Set maxmemory-policy noeviction, "
            "or pass Deduplicator(..., allow_eviction=True) to accept that risk")


class ScriptError(DedupkitError):
    """A dedupkit Lua script failed on the server; ``script`` names the .lua file."""

    def __init__(self, script: str, error: Exception) -> None:
        self.script = script
        self.error = error
        super().__init__(f"{script} failed: {error}")


class NaiveDatetimeError(InvalidRequestError):
    """A run time without a time zone. RQ and dedupkit would read it differently (RQ applies
    the DST offset to every naive date), so dedupkit refuses to guess."""

    def __init__(self, value: object, what: str = "a run time") -> None:
        self.value = value
        super().__init__(
            f"{what} must carry a time zone, got the naive datetime {value!r}: use "
            "datetime.now(timezone.utc) + ..., or value.replace(tzinfo=ZoneInfo('Europe/Paris')) "
            "for a local wall-clock time (or pass a timedelta)")


class JobIdCollisionError(DedupkitError):
    """The generated job id already names a job hash; dedupkit never writes over one."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"job id {job_id!r} already exists in Redis; nothing was written")

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
    """Redis could not be reached (connection refused, timeout, loading, ...).

    The redis-py exception is kept as ``__cause__`` and as ``error``.
    """

    def __init__(self, error: Exception) -> None:
        self.error = error
        super().__init__(f"Redis is unavailable: {error}")


class ScriptError(DedupkitError):
    """A dedupkit Lua script failed on the server; ``script`` names the .lua file."""

    def __init__(self, script: str, error: Exception) -> None:
        self.script = script
        self.error = error
        super().__init__(f"{script} failed: {error}")


class JobIdCollisionError(DedupkitError):
    """The generated job id already names a job hash; dedupkit never writes over one."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"job id {job_id!r} already exists in Redis; nothing was written")

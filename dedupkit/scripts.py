"""Loading the Lua scripts and calling them with typed errors.

Each script is ``lua/_common.lua`` followed by ``lua/<name>.lua``, registered with
redis-py's ``register_script``: calls go out as EVALSHA, and a NOSCRIPT answer (after
``SCRIPT FLUSH`` or a Redis restart) makes redis-py load the script and retry.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import redis
from redis.commands.core import Script

from .errors import RedisRefusedError, RedisUnavailableError, ScriptError


@dataclass(frozen=True)
class ScriptSpec:
    """How Python calls a script: the fixed KEYS/ARGV counts, and whether more follow."""

    name: str
    keys: int
    argv: int
    more_keys: bool = False
    more_argv: bool = False


ADMIT = ScriptSpec("admit.lua", keys=12, argv=10, more_keys=True, more_argv=True)
STATUS = ScriptSpec("status.lua", keys=6, argv=2, more_argv=True)
CANCEL = ScriptSpec("cancel.lua", keys=11, argv=7)
SWEEP = ScriptSpec("sweep.lua", keys=10, argv=4, more_argv=True)
ADOPT = ScriptSpec("adopt.lua", keys=6, argv=2, more_argv=True)
SPECS = (ADMIT, STATUS, CANCEL, SWEEP, ADOPT)
# The scheduler's leader lease; registered by the Scheduler, without _common.lua.
LEASE_RENEW = ScriptSpec("lease_renew.lua", keys=1, argv=2)
LEASE_RELEASE = ScriptSpec("lease_release.lua", keys=1, argv=1)
LEASE_SPECS = (LEASE_RENEW, LEASE_RELEASE)


@cache
def source(name: str) -> str:
    """The text of one .lua file shipped in the package."""
    return (resources.files("dedupkit") / "lua" / name).read_text(encoding="utf-8")


def full_source(spec: ScriptSpec) -> str:
    """The script as sent to Redis: the shared helpers, then the operation."""
    return source("_common.lua") + "\n" + source(spec.name)


class Scripts:
    """The registered scripts of one Redis connection."""

    def __init__(self, connection: redis.Redis) -> None:
        self.connection = connection
        self._scripts: dict[str, Script] = {
            spec.name: connection.register_script(full_source(spec)) for spec in SPECS
        }

    def call(self, spec: ScriptSpec, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run one script (one EVALSHA; EVAL once more after NOSCRIPT)."""
        for what, have, fixed, more in (("KEYS", len(keys), spec.keys, spec.more_keys),
                                        ("ARGV", len(args), spec.argv, spec.more_argv)):
            if have < fixed or (not more and have != fixed):
                raise AssertionError(f"{spec.name} takes {fixed} {what}, called with {have}")
        with redis_errors():
            try:
                return self._scripts[spec.name](keys=list(keys), args=list(args))
            except redis.exceptions.ResponseError as exc:
                if refusal(exc) is not None or needs_resp2(exc):
                    raise  # redis_errors turns it into RedisRefusedError / RedisUnavailableError
                raise ScriptError(spec.name, exc) from exc


# Error codes with which a server refuses a command because of its own state (role,
# memory, persistence, a busy script, loading, replication, cluster), whatever the
# request: retrying later or elsewhere may succeed, the request itself is not at fault.
REFUSAL_CODES = frozenset({"READONLY", "OOM", "MISCONF", "BUSY", "LOADING", "MASTERDOWN", "NOREPLICAS",
                           "CLUSTERDOWN", "TRYAGAIN"})


def refusal_code(message: str) -> str | None:
    """The refusal code a server error message starts with, or None.

    Errors raised inside a script keep the code of the command that failed
    ("READONLY You can't write ... script: ..."), so this reads script errors too.
    """
    code = message.split(" ", 1)[0]
    return code if code in REFUSAL_CODES else None


def refusal(exc: redis.exceptions.RedisError) -> tuple[str, str] | None:
    """(code, the server's words) when ``exc`` is a server refusal, else None."""
    # redis-py strips a code it knows (READONLY, OOM, LOADING, ...) from the message and
    # keeps it as status_code; codes it does not know (MISCONF, BUSY, ...) stay in the text.
    text = str(exc)
    known = getattr(exc, "status_code", None)
    if isinstance(known, str) and known in REFUSAL_CODES:
        return known, f"{known} {text}"
    code = refusal_code(text)
    return (code, text) if code else None


def needs_resp2(exc: redis.exceptions.RedisError) -> bool:
    """True when the connection failed on ``HELLO``: redis-py 8 opens with ``HELLO 3``
    (RESP3), which Redis before 6.0 does not know (RQ allows Redis 5)."""
    return isinstance(exc, redis.exceptions.ResponseError) and "unknown command `hello`" in str(exc).lower()


@contextmanager
def redis_errors() -> Iterator[None]:
    """Turn redis-py's connection errors and timeouts into RedisUnavailableError, and a
    server's refusals (READONLY, OOM, ...) into RedisRefusedError, its subclass; a server too
    old for redis-py's RESP3 handshake into RedisUnavailableError saying to use protocol=2."""
    try:
        yield
    except redis.exceptions.RedisError as exc:
        refused = refusal(exc)
        if refused is not None:
            raise RedisRefusedError(exc, *refused) from exc
        if needs_resp2(exc):
            raise RedisUnavailableError(redis.exceptions.ConnectionError(
                f"{exc}: this server predates RESP3 (Redis < 6.0); connect with protocol=2, "
                "e.g. redis://host:6379/0?protocol=2 or Redis(..., protocol=2)")) from exc
        if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
            raise RedisUnavailableError(exc) from exc
        raise

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
from typing import Any, NoReturn

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
        _check_counts(spec, keys, args)
        with redis_errors():
            try:
                return self._scripts[spec.name](keys=list(keys), args=list(args))
            except redis.exceptions.ResponseError as exc:
                _raise_script_error(spec, exc)

    def call_and_wait(self, spec: ScriptSpec, keys: Sequence[str], args: Sequence[Any], replicas: int,
                      timeout_ms: int) -> tuple[Any, int]:
        """Run one script and ``WAIT replicas timeout_ms`` pipelined: one round trip.

        Returns the script's reply and how many replicas acknowledged every write this
        connection had sent up to and including the script's (Redis replicates in order, so
        that covers whatever the script read, too). After NOSCRIPT the script is loaded and
        the pair sent once more.
        """
        _check_counts(spec, keys, args)
        script = self._scripts[spec.name]
        with redis_errors():
            for attempt in (1, 2):
                pipe = self.connection.pipeline(transaction=False)
                pipe.evalsha(script.sha, len(keys), *keys, *args)
                pipe.wait(replicas, timeout_ms)
                reply, acked = pipe.execute(raise_on_error=False)
                if isinstance(reply, redis.exceptions.NoScriptError) and attempt == 1:
                    script.sha = self.connection.script_load(script.script)
                    continue
                if isinstance(reply, redis.exceptions.ResponseError):
                    _raise_script_error(spec, reply)
                for answer in (reply, acked):
                    if isinstance(answer, Exception):
                        raise answer
                return reply, int(acked)
        raise AssertionError("unreachable")


def _check_counts(spec: ScriptSpec, keys: Sequence[str], args: Sequence[Any]) -> None:
    for what, have, fixed, more in (("KEYS", len(keys), spec.keys, spec.more_keys),
                                    ("ARGV", len(args), spec.argv, spec.more_argv)):
        if have < fixed or (not more and have != fixed):
            raise AssertionError(f"{spec.name} takes {fixed} {what}, called with {have}")


def _raise_script_error(spec: ScriptSpec, exc: redis.exceptions.ResponseError) -> NoReturn:
    if refusal(exc) is not None:
        raise exc  # redis_errors turns it into RedisRefusedError
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


@contextmanager
def redis_errors() -> Iterator[None]:
    """Turn redis-py's connection errors, timeouts and cluster errors (redirections
    exhausted) into RedisUnavailableError, and a server's refusals (READONLY, OOM,
    TRYAGAIN, ...) into RedisRefusedError, its subclass."""
    try:
        yield
    except redis.exceptions.RedisError as exc:
        refused = refusal(exc)
        if refused is not None:
            raise RedisRefusedError(exc, *refused) from exc
        # ClusterError: redis-py's RedisCluster gave up following MOVED/ASK/TRYAGAIN (a slot
        # in migration, a node down): the cluster is not serving the key now.
        if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                            redis.exceptions.ClusterError)):
            raise RedisUnavailableError(exc) from exc
        raise

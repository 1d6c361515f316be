"""Loading the Lua scripts and calling them with typed errors.

Each script is ``lua/_common.lua`` followed by ``lua/<name>.lua``, registered with
redis-py's ``register_script`` (or redis.asyncio's): calls go out as EVALSHA, and a
NOSCRIPT answer (after ``SCRIPT FLUSH`` or a Redis restart) makes redis-py load the script
and retry the EVALSHA. What each script takes and answers is ``protocol``'s.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from importlib import resources
from typing import Any

import redis
from redis.commands.core import AsyncScript, Script

from .errors import RedisRefusedError, RedisUnavailableError, ScriptError
from .protocol import LEASE_SCRIPTS, SLOT_SCRIPTS, Contract


@cache
def source(name: str) -> str:
    """The text of one .lua file shipped in the package."""
    return (resources.files("dedupkit") / "lua" / name).read_text(encoding="utf-8")


def full_source(contract: Contract) -> str:
    """The script as sent to Redis: the shared helpers, then the operation (the lease
    scripts stand alone)."""
    if contract in LEASE_SCRIPTS:
        return source(contract.name)
    return source("_common.lua") + "\n" + source(contract.name)


def _check(contract: Contract, keys: Sequence[str], args: Sequence[Any]) -> None:
    for what, have, fixed, more in (("KEYS", len(keys), len(contract.keys), contract.more_keys),
                                    ("ARGV", len(args), len(contract.argv), contract.more_argv)):
        if have < fixed or (more is None and have != fixed):
            raise AssertionError(f"{contract.name} takes {fixed} {what}, called with {have}")


def _script_error(contract: Contract, exc: redis.exceptions.ResponseError) -> Exception:
    if refusal(exc) is not None or needs_resp2(exc):
        return exc  # redis_errors turns it into RedisRefusedError / RedisUnavailableError
    return ScriptError(contract.name, exc)


class Scripts:
    """The registered scripts of one redis-py connection."""

    def __init__(self, connection: redis.Redis, contracts: Sequence[Contract] = SLOT_SCRIPTS) -> None:
        self.connection = connection
        self._scripts: dict[str, Script] = {
            contract.name: connection.register_script(full_source(contract)) for contract in contracts
        }

    def call(self, contract: Contract, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run one script: one EVALSHA (after NOSCRIPT, redis-py loads it and retries EVALSHA)."""
        _check(contract, keys, args)
        with redis_errors():
            try:
                return self._scripts[contract.name](keys=list(keys), args=list(args))
            except redis.exceptions.ResponseError as exc:
                error = _script_error(contract, exc)
                if error is exc:
                    raise  # redis_errors turns it into RedisRefusedError / RedisUnavailableError
                raise error from exc

    def call_and_wait(self, contract: Contract, keys: Sequence[str], args: Sequence[Any], replicas: int,
                      timeout_ms: int) -> tuple[Any, int]:
        """Run one script and ``WAIT replicas timeout_ms`` pipelined: one round trip.

        Returns the script's reply and how many replicas acknowledged every write this
        connection had sent up to and including the script's (Redis replicates in order, so
        that covers whatever the script read, too). After NOSCRIPT the script is loaded and
        the pair sent once more.
        """
        _check(contract, keys, args)
        script = self._scripts[contract.name]
        with redis_errors():
            for attempt in (1, 2):
                pipe = self.connection.pipeline(transaction=False)
                pipe.evalsha(script.sha, len(keys), *keys, *args)
                pipe.wait(replicas, timeout_ms)
                reply, acked = pipe.execute(raise_on_error=False)
                if isinstance(reply, redis.exceptions.NoScriptError) and attempt == 1:
                    script.sha = self.connection.script_load(script.script)
                    continue
                return _waited(contract, reply, acked)
        raise AssertionError("unreachable")


class AsyncScripts:
    """The registered scripts of one redis.asyncio connection; the same calls, awaited."""

    def __init__(self, connection: Any, contracts: Sequence[Contract] = SLOT_SCRIPTS) -> None:
        self.connection = connection
        self._scripts: dict[str, AsyncScript] = {
            contract.name: connection.register_script(full_source(contract)) for contract in contracts
        }

    async def call(self, contract: Contract, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run one script: one EVALSHA (after NOSCRIPT, redis-py loads it and retries EVALSHA)."""
        _check(contract, keys, args)
        with redis_errors():
            try:
                return await self._scripts[contract.name](keys=list(keys), args=list(args))
            except redis.exceptions.ResponseError as exc:
                error = _script_error(contract, exc)
                if error is exc:
                    raise  # redis_errors turns it into RedisRefusedError / RedisUnavailableError
                raise error from exc

    async def call_and_wait(self, contract: Contract, keys: Sequence[str], args: Sequence[Any], replicas: int,
                            timeout_ms: int) -> tuple[Any, int]:
        """``Scripts.call_and_wait``, awaited: the script and ``WAIT`` in one round trip."""
        _check(contract, keys, args)
        script = self._scripts[contract.name]
        with redis_errors():
            for attempt in (1, 2):
                pipe = self.connection.pipeline(transaction=False)
                pipe.evalsha(script.sha, len(keys), *keys, *args)
                pipe.wait(replicas, timeout_ms)
                reply, acked = await pipe.execute(raise_on_error=False)
                if isinstance(reply, redis.exceptions.NoScriptError) and attempt == 1:
                    script.sha = await self.connection.script_load(script.script)
                    continue
                return _waited(contract, reply, acked)
        raise AssertionError("unreachable")


def _waited(contract: Contract, reply: Any, acked: Any) -> tuple[Any, int]:
    """A pipelined script + WAIT answer: the script's reply and the replica count, or its error."""
    if isinstance(reply, redis.exceptions.ResponseError):
        error = _script_error(contract, reply)
        if error is reply:
            raise reply  # a refusal: redis_errors turns it into RedisRefusedError
        raise error from reply
    for answer in (reply, acked):
        if isinstance(answer, Exception):
            raise answer
    return reply, int(acked)


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
    """Turn redis-py's connection errors, timeouts and cluster errors (redirections
    exhausted) into RedisUnavailableError, and a server's refusals (READONLY, OOM,
    TRYAGAIN, ...) into RedisRefusedError, its subclass; a server too old for redis-py's
    RESP3 handshake into RedisUnavailableError saying to use protocol=2."""
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
        # ClusterError: redis-py's RedisCluster gave up following MOVED/ASK/TRYAGAIN (a slot
        # in migration, a node down): the cluster is not serving the key now.
        if isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
                            redis.exceptions.ClusterError)):
            raise RedisUnavailableError(exc) from exc
        raise

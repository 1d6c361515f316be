"""The I/O steps an operation yields, and the two transports that run them.

Each operation of ``Deduplicator`` is written once, as a generator (a *flow*) that yields
the Redis requests it needs and receives their replies; it holds every decision, and
does no I/O itself. ``run`` drives a flow on redis-py, ``run_async`` on redis.asyncio.
An exception a step raises is thrown into the flow at the ``yield``, so a flow handles
errors as plain code would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .protocol import Contract
from .scripts import AsyncScripts, Scripts, redis_errors

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Script:
    """Run one script (one EVALSHA); the reply is the script's raw answer.

    With ``wait`` = (replicas, timeout_ms) a ``WAIT`` follows in the same round trip, and
    the reply is (the script's answer, how many replicas acknowledged its writes).
    """

    contract: Contract
    keys: Sequence[str]
    args: Sequence[Any]
    wait: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class Command:
    """One plain Redis command by its redis-py method name (``hgetall``, ``info``, ...)."""

    name: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Blocking:
    """Call RQ's own synchronous API (its stop command, RQ 3's rate limit registry) with a
    redis-py connection; the async transport runs it in a thread."""

    fn: Callable[[Any], Any]


Step = Script | Command | Blocking
Flow = Generator[Step, Any, T]


def run(flow: Flow[T], scripts: Scripts, connection: Any) -> T:
    """Drive ``flow`` on redis-py: each step is one request on ``connection``."""
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = flow.throw(error) if error is not None else flow.send(reply)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        reply, error = None, None
        try:
            if isinstance(step, Script):
                if step.wait is None:
                    reply = scripts.call(step.contract, step.keys, step.args)
                else:
                    reply = scripts.call_and_wait(step.contract, step.keys, step.args, *step.wait)
            elif isinstance(step, Command):
                with redis_errors():
                    reply = getattr(connection, step.name)(*step.args, **step.kwargs)
            else:
                with redis_errors():
                    reply = step.fn(connection)
        except Exception as exc:
            error = exc


async def run_async(flow: Flow[T], scripts: AsyncScripts, connection: Any,
                    blocking_connection: Callable[[], Any]) -> T:
    """Drive ``flow`` on redis.asyncio; ``Blocking`` steps run in a thread on the
    redis-py connection ``blocking_connection()`` returns."""
    reply: Any = None
    error: BaseException | None = None
    while True:
        try:
            step = flow.throw(error) if error is not None else flow.send(reply)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        reply, error = None, None
        try:
            if isinstance(step, Script):
                if step.wait is None:
                    reply = await scripts.call(step.contract, step.keys, step.args)
                else:
                    reply = await scripts.call_and_wait(step.contract, step.keys, step.args, *step.wait)
            elif isinstance(step, Command):
                with redis_errors():
                    reply = await getattr(connection, step.name)(*step.args, **step.kwargs)
            else:
                with redis_errors():
                    reply = await asyncio.to_thread(step.fn, blocking_connection())
        except Exception as exc:
            error = exc

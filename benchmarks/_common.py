"""What every benchmark script shares: arguments, a throwaway redis-server, request
counting, statistics, the table and the JSON/markdown output."""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis._parsers import _RESP2Parser
from redis.connection import PythonRespSerializer

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"

# dedupkit logs one WARNING per key whose previous job vanished (e.g. finished and
# expired); a million-key tick would spend its time writing to stderr.
logging.getLogger("dedupkit").setLevel(logging.ERROR)


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="smoke mode: tiny sizes, finishes in seconds")
    p.add_argument("--url", help="use this Redis instead of starting a redis-server (its db is flushed: "
                                 "refused unless empty or --flush)")
    p.add_argument("--flush", action="store_true", help="allow flushing a non-empty db given with --url")
    p.add_argument("--out", type=Path, default=RESULTS, help="directory for the JSON and markdown results")
    p.add_argument("--repeat", type=int, default=None, help="repetitions (default: 2 quick, 5 full)")
    return p


def repeats(args: argparse.Namespace, full: int = 5, quick: int = 2) -> int:
    return int(args.repeat or (quick if args.quick else full))


@contextmanager
def redis_url(args: argparse.Namespace) -> Iterator[str]:
    """The URL of the Redis to measure: ``--url``, or a redis-server started on loopback."""
    if args.url:
        conn = redis.Redis.from_url(args.url)
        try:
            if conn.dbsize() and not args.flush:
                raise SystemExit(f"{args.url} is not empty; pass --flush to let the benchmark flush it")
        finally:
            conn.close()
        yield args.url
        return
    sys.path.insert(0, str(ROOT))
    from tests.support import RedisServer  # the test suite's throwaway server

    server = RedisServer()
    try:
        yield server.url
    finally:
        server.close()


def connect(url: str, **kwargs: Any) -> redis.Redis:
    return redis.Redis.from_url(url, **kwargs)


def fresh(url: str) -> tuple[redis.Redis, dict[str, Any]]:
    """A connection to an emptied db, and the machine/versions line for the results."""
    conn = connect(url)
    conn.flushdb()
    return conn, machine(conn)


# -- statistics -------------------------------------------------------------------

def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of unsorted values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def spread(values: Sequence[float]) -> dict[str, float]:
    """min / median / max of one metric over the repetitions."""
    return {"min": min(values), "median": statistics.median(values), "max": max(values), "n": len(values)}


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


# -- counting what reaches Redis -------------------------------------------------

class CountingConnection(redis.Connection):
    """A redis-py connection that counts the writes it sends: one per round trip
    (a pipeline or MULTI/EXEC block is sent as one write)."""

    sends = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sends += 1
        super().send_packed_command(command, check_health)


class PurePythonConnection(CountingConnection):
    """redis-py without hiredis, even where hiredis is installed: commands encoded and
    replies parsed in Python (what an install without hiredis gets)."""

    def _construct_command_packer(self, packer: Any) -> Any:
        return PythonRespSerializer(self._buffer_cutoff, self.encoder.encode)


def counting_client(url: str, pure_python: bool = False) -> redis.Redis:
    conn = redis.Redis.from_url(url)
    kwargs = dict(conn.connection_pool.connection_kwargs)
    conn.close()
    if pure_python:
        kwargs["parser_class"] = _RESP2Parser
    return redis.Redis(connection_pool=redis.ConnectionPool(
        connection_class=PurePythonConnection if pure_python else CountingConnection, **kwargs))


@dataclass
class RequestCount:
    commands: int  # commands the client sent (MONITOR, without the ones tagged "lua")
    lua_commands: int  # commands run inside scripts (MONITOR lines tagged "lua")
    round_trips: int  # writes on the client's socket
    names: dict[str, int]  # command name -> count (client-sent only)


def count_requests(url: str, client: redis.Redis, op: Callable[[], object], n: int) -> RequestCount:
    """Run ``op`` n times on ``client`` (a counting_client) and count, with MONITOR, what
    it sent. Lines tagged as run from Lua are counted apart. Other clients' commands are
    ignored (filtered by the client's own address)."""
    info = client.client_info()
    addr = str(info["addr"])
    stop = f"dedupkit-bench-stop-{uuid.uuid4().hex}"
    mon_client = connect(url)
    seen: list[dict[str, Any]] = []
    ready = threading.Event()
    with mon_client.monitor() as monitor:
        def reader() -> None:
            ready.set()
            for entry in monitor.listen():
                if stop in entry["command"]:
                    return
                seen.append(entry)

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        ready.wait(5)
        time.sleep(0.05)
        before = CountingConnection.sends
        for _ in range(n):
            op()
        sends = CountingConnection.sends - before
        client.echo(stop)
        thread.join(30)
    mon_client.close()
    names: dict[str, int] = {}
    commands = lua = 0
    for entry in seen:
        if entry["client_type"] == "lua":
            lua += 1
            continue
        if f"{entry['client_address']}:{entry['client_port']}" != addr:
            continue
        commands += 1
        name = entry["command"].split(" ", 1)[0].upper()
        names[name] = names.get(name, 0) + 1
    return RequestCount(commands, lua, sends, names)


def commandstats(conn: redis.Redis) -> dict[str, dict[str, float]]:
    """INFO commandstats as {command: {calls, usec, ...}}."""
    raw = conn.info("commandstats")
    return {name.removeprefix("cmdstat_"): value for name, value in raw.items()}


# -- output ---------------------------------------------------------------------

def machine(conn: redis.Redis | None = None) -> dict[str, Any]:
    import rq

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = None
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    info: dict[str, Any] = {
        "cpu": cpu, "cores": os.cpu_count(), "mem_gib": mem_gib, "os": platform.platform(),
        "python": platform.python_version(), "rq": rq.__version__, "redis_py": redis.__version__,
        "hiredis": _hiredis_version(),
    }
    if conn is not None:
        info["redis_server"] = conn.info("server").get("redis_version")
    info["dedupkit_commit"], info["dedupkit_dirty"] = _CODE_VERSION
    try:
        info["load_avg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def _hiredis_version() -> str | None:
    try:
        import hiredis
    except ImportError:
        return None
    return str(hiredis.__version__)


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.stdout.strip() if out.returncode == 0 else ""


# Taken when the benchmarks are imported, as dedupkit is: the code that is measured.
_CODE_VERSION = (_git("rev-parse", "--short", "HEAD"), bool(_git("status", "--porcelain", "--", "dedupkit")))


def fmt(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        if value != value:  # nan
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table (also readable in a terminal)."""
    cells = [[fmt(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    return "\n".join([line, rule, *body])


def write(args: argparse.Namespace, name: str, data: dict[str, Any], text: str) -> Path:
    """Print the tables and write ``<name>.json`` and ``<name>.md`` (``-quick`` in quick
    mode) into ``--out``."""
    stem = f"{name}-quick" if args.quick else name
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    data.update(benchmark=name, quick=bool(args.quick), when=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    (out / f"{stem}.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    header = f"_{name}{' (quick)' if args.quick else ''}, {data['when']}, {describe(data.get('machine', {}))}_"
    (out / f"{stem}.md").write_text(header + "\n\n" + text.strip() + "\n")
    print(text)
    print(f"\nwrote {out / (stem + '.json')}")
    return out / f"{stem}.json"


def describe(m: dict[str, Any]) -> str:
    if not m:
        return ""
    return (f"{m.get('cpu')}, {m.get('cores')} cores, {m.get('mem_gib')} GiB, Python {m.get('python')}, "
            f"redis-server {m.get('redis_server')}, rq {m.get('rq')}, redis-py {m.get('redis_py')}, "
            f"hiredis {m.get('hiredis')}, load {m.get('load_avg_at_start')}, dedupkit {m.get('dedupkit_commit')}"
            f"{' (modified)' if m.get('dedupkit_dirty') else ''}")

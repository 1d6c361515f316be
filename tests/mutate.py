"""Mutation testing of the Lua scripts (issue 10): do the tests catch what they claim?

    python -m tests.mutate [--only ID ...] [--file NAME ...] [--jobs N] [--fail-under PCT]
    python -m tests.mutate --check                      # validate the list only
    python -m tests.mutate --seeds 10 --tag model       # the model's kill rate per seed

The mutants live in ``dedupkit/lua/mutants.toml`` (not shipped: the package data is
``*.lua``). Each one replaces one exact snippet of one script; a snippet that does not occur
exactly once in its file stops the run before anything runs (a stale list must be seen,
not skipped). Adding a ``[[mutant]]`` table to that file is all it takes to add a mutant.

Where it runs: on a copy of the working tree in a temporary directory (one per job), never
in the tree itself, so an interrupted run (Ctrl-C, a SIGKILL, a crash) cannot leave a mutant
behind, and a developer may keep editing while it runs. The copy imports its own
``dedupkit`` (pytest runs with the copy as its working directory, ahead of the editable
install's finder), and real ``rq worker`` processes get it through PYTHONPATH
(tests/support.py). Each mutant is applied to the copy, its tests run, and the copy's file
is restored in ``finally`` and checked.

Which tests: ``[tests]`` in the list maps each script to its test files, fastest and most
likely to kill first; they run in phases, each with ``-x`` (stop at the first failing test):
fakeredis (``-k "not real"``), then real redis-server (``-k real``), then the script's real
``rq worker`` tests (``[workers]``), each phase only while the mutant survives. A mutant
argued equivalent (``equivalent = "..."``) is not run unless --run-equivalent; it is not
counted in N.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LUA_DIR = Path("dedupkit") / "lua"
LIST = ROOT / LUA_DIR / "mutants.toml"
PHASES = (("fake", ["-k", "not real"]), ("real", ["-k", "real"]))
PHASE_TIMEOUT = 600  # s; a mutant that makes a phase hang this long counts as killed ("timeout")
FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.M)
_running: set[subprocess.Popen[bytes]] = set()  # pytest runs in flight, stopped if we are


class MutantListError(Exception):
    """The mutant list is malformed or stale (a snippet not found exactly once)."""


@dataclass(frozen=True)
class Mutant:
    id: str
    file: str
    original: str
    replacement: str
    description: str
    equivalent: str = ""
    tags: tuple[str, ...] = ()


@dataclass
class MutantList:
    mutants: list[Mutant]
    tests: dict[str, list[str]]
    workers: dict[str, list[str]] = field(default_factory=dict)


def load(path: Path = LIST, lua_dir: Path = ROOT / LUA_DIR) -> MutantList:
    """Read and validate the list; raise MutantListError naming every problem at once."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    problems: list[str] = []
    tests = {str(k): [str(f) for f in v] for k, v in data.get("tests", {}).items()}
    workers = {str(k): [str(f) for f in v] for k, v in data.get("workers", {}).items()}
    mutants: list[Mutant] = []
    seen: set[str] = set()
    required = ("id", "file", "original", "replacement", "description")
    for n, raw in enumerate(data.get("mutant", []), 1):
        missing = [k for k in required if not isinstance(raw.get(k), str)]
        unknown = set(raw) - {*required, "equivalent", "tags"}
        if missing or unknown:
            problems.append(f"mutant #{n} ({raw.get('id', '?')}): missing {missing}, unknown {sorted(unknown)}")
            continue
        m = Mutant(raw["id"], raw["file"], raw["original"], raw["replacement"], raw["description"],
                   str(raw.get("equivalent", "")), tuple(raw.get("tags", ())))
        if m.id in seen:
            problems.append(f"{m.id}: duplicate id")
        seen.add(m.id)
        script = lua_dir / m.file
        if not script.is_file():
            problems.append(f"{m.id}: no such script {m.file}")
            continue
        found = script.read_text(encoding="utf-8").count(m.original)
        if found != 1:
            problems.append(f"{m.id}: the original snippet occurs {found} times in {m.file} (must be once): "
                            f"{m.original!r}")
        if m.original == m.replacement:
            problems.append(f"{m.id}: the replacement equals the original")
        if m.file not in tests:
            problems.append(f"{m.id}: no [tests] entry for {m.file}")
        mutants.append(m)
    if not mutants:
        problems.append("no [[mutant]] tables")
    for script, files in (*tests.items(), *workers.items()):
        for f in files:
            if not (ROOT / f.split("::")[0]).is_file():
                problems.append(f"[tests]/[workers] {script}: no such test file {f}")
    if problems:
        raise MutantListError(f"{path}: {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    return MutantList(mutants, tests, workers)


@dataclass
class Result:
    mutant: Mutant
    outcome: str  # 'killed', 'survived', 'equivalent'
    by: str = ""  # the first failing test, with its phase
    seconds: float = 0.0


def copy_tree(dest: Path) -> None:
    """The working tree's files (tracked and untracked, not ignored) into dest."""
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                         capture_output=True).stdout.decode()
    for rel in filter(None, out.split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def run_phase(copy: Path, args: Sequence[str], files: Sequence[str], extra: Sequence[str] = ()) -> tuple[bool, str]:
    """(killed, by) for one pytest run in the copy."""
    env = {k: v for k, v in os.environ.items() if k not in ("DEDUPKIT_REQUIRE_REAL", "PYTHONPATH")}
    # Hypothesis replays the failing examples it saved: a run must not inherit another's.
    shutil.rmtree(copy / ".hypothesis", ignore_errors=True)
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-x", "-q", "-rfE", "--hypothesis-profile=mutate",
           *args, *extra, *files]
    proc = subprocess.Popen(cmd, cwd=copy, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    _running.add(proc)
    try:
        out, _ = proc.communicate(timeout=PHASE_TIMEOUT)
    except subprocess.TimeoutExpired:
        _stop(proc)
        _reap(copy)
        return True, f"timeout after {PHASE_TIMEOUT}s"
    finally:
        _running.discard(proc)
    text = out.decode(errors="replace")
    if proc.returncode in (0, 5):  # passed, or nothing selected
        return False, ""
    if proc.returncode == 1:
        hit = FAILED.search(text)
        return True, hit.group(1) if hit else "a failing test"
    raise RuntimeError(f"pytest exited {proc.returncode} in {copy}:\n{text[-3000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL one pytest run we started and its process group (its redis-server, workers)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate()


def _reap(copy: Path) -> None:
    """SIGKILL what our pytest runs left behind in ``copy``: real ``rq worker`` processes
    and their horses run in sessions of their own (tests/support.py), out of reach of
    _stop. Found by the copy's own temporary path in their command line, nothing else."""
    mark = str(copy).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if mark in (entry / "cmdline").read_bytes():
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


def apply(copy: Path, m: Mutant) -> str:
    """Write the mutant into the copy; return the original text for the restore."""
    path = copy / LUA_DIR / m.file
    text = path.read_text(encoding="utf-8")
    if text.count(m.original) != 1:
        raise MutantListError(f"{m.id}: snippet not found exactly once in {path}")
    path.write_text(text.replace(m.original, m.replacement), encoding="utf-8")
    return text


def restore(copy: Path, m: Mutant, text: str) -> None:
    path = copy / LUA_DIR / m.file
    path.write_text(text, encoding="utf-8")
    if path.read_text(encoding="utf-8") != (ROOT / LUA_DIR / m.file).read_text(encoding="utf-8"):
        raise RuntimeError(f"{path} differs from the tree after restoring {m.id}")


ALL_PHASES = ("fake", "real", "workers")


def try_mutant(copy: Path, lst: MutantList, m: Mutant, only: Sequence[str] = ALL_PHASES,
               hint: str = "") -> Result:
    """Run the mutant's phases; ``hint``, the test that killed it last time, runs first alone."""
    started = time.monotonic()
    phases = [(name, args, lst.tests[m.file]) for name, args in PHASES]
    if lst.workers.get(m.file):
        phases.append(("workers", [], lst.workers[m.file]))
    phases = [p for p in phases if p[0] in only]
    if hint and (copy / hint.split("::")[0]).is_file():
        phases.insert(0, ("last killer", [], [hint]))
    text = apply(copy, m)
    try:
        for name, args, files in phases:
            killed, by = run_phase(copy, args, files)
            if killed:
                return Result(m, "killed", f"{by} ({name})", time.monotonic() - started)
        return Result(m, "survived", "", time.monotonic() - started)
    finally:
        restore(copy, m, text)


def run_all(lst: MutantList, mutants: list[Mutant], jobs: int, run_equivalent: bool,
            phases: Sequence[str] = ALL_PHASES) -> list[Result]:
    results: dict[str, Result] = {}
    todo = [m for m in mutants if run_equivalent or not m.equivalent]
    for m in mutants:
        if m.equivalent and not run_equivalent:
            results[m.id] = Result(m, "equivalent")
    copies = [Path(tempfile.mkdtemp(prefix=f"dedupkit-mutate-{i}-")) for i in range(max(1, jobs))]
    free = list(copies)
    lock = threading.Lock()
    for c in copies:
        copy_tree(c)
    hints = _load_hints()

    def one(m: Mutant) -> Result:
        with lock:
            copy = free.pop()
        try:
            r = try_mutant(copy, lst, m, phases, hints.get(m.id, ""))
        finally:
            with lock:
                free.append(copy)
        if r.outcome == "killed":
            with lock:
                hints[m.id] = r.by.rsplit(" (", 1)[0]
                _save_hints(hints)
        if r.outcome == "survived" and m.equivalent:
            r.outcome = "equivalent"
        print(f"  {m.id}: {r.outcome} {r.by} [{r.seconds:.0f}s]", file=sys.stderr, flush=True)
        return r

    pool = ThreadPoolExecutor(max_workers=len(copies))
    try:
        for r in pool.map(one, todo):
            results[r.mutant.id] = r
    finally:
        _shut_down(pool, copies)
    return [results[m.id] for m in mutants]


# The test that killed each mutant last time (a local cache, git-ignored): it runs first, alone,
# so a mutant is usually killed in one short pytest run. Only an order: a hint that no
# longer kills is followed by every phase as usual.
HINTS = ROOT / ".mutate-killers.json"


def _shut_down(pool: ThreadPoolExecutor, copies: Sequence[Path]) -> None:
    """Stop the pool, our pytest runs and their rq workers, and remove the copies."""
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in list(_running):
        _stop(proc)
    for c in copies:
        _reap(c)
        shutil.rmtree(c, ignore_errors=True)


def _load_hints() -> dict[str, str]:
    try:
        data = json.loads(HINTS.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def _save_hints(hints: dict[str, str]) -> None:
    HINTS.write_text(json.dumps(hints, indent=1, sort_keys=True) + "\n", encoding="utf-8")


def table(results: list[Result]) -> str:
    rows = [("id", "file", "description", "result")]
    for r in results:
        what = {"killed": f"killed by {r.by}", "survived": "SURVIVED",
                "equivalent": f"equivalent: {r.mutant.equivalent}"}[r.outcome]
        rows.append((r.mutant.id, r.mutant.file, r.mutant.description, what))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row[:3], widths, strict=True)) + "  " + row[3]
                     for row in rows)


def score(results: list[Result]) -> tuple[int, int]:
    counted = [r for r in results if r.outcome != "equivalent"]
    return sum(r.outcome == "killed" for r in counted), len(counted)


def seeds_report(mutants: list[Mutant], seeds: int, model: str, jobs: int) -> None:
    """Kill rate of the model alone, per mutant, over hypothesis seeds 0..seeds-1."""
    started = time.monotonic()
    copies = [Path(tempfile.mkdtemp(prefix=f"dedupkit-mutate-seeds-{i}-")) for i in range(max(1, jobs))]
    free = list(copies)
    lock = threading.Lock()
    for c in copies:
        copy_tree(c)

    def one(m: Mutant) -> tuple[Mutant, int, float]:
        with lock:
            copy = free.pop()
        started = time.monotonic()
        text = apply(copy, m)
        try:
            kills = sum(run_phase(copy, [f"--hypothesis-seed={seed}"], [model])[0] for seed in range(seeds))
        finally:
            restore(copy, m, text)
            with lock:
                free.append(copy)
        return m, kills, time.monotonic() - started

    pool = ThreadPoolExecutor(max_workers=len(copies))
    rows: list[tuple[Mutant, int, float]] = []
    try:
        for m, kills, seconds in pool.map(one, mutants):
            rows.append((m, kills, seconds))
            print(f"  {m.id}: killed under {kills}/{seeds} seeds [{seconds:.0f}s]", file=sys.stderr, flush=True)
    finally:
        _shut_down(pool, copies)
    print(seeds_table(rows, seeds))
    print(f"({time.monotonic() - started:.0f} s, {jobs} job(s))")
    print(seeds_summary(rows, seeds, model))


def seeds_table(rows: list[tuple[Mutant, int, float]], seeds: int) -> str:
    """One line per mutant: id, file, kills/seeds, the time its seed runs took."""
    lines = [("id", "file", f"kills/{seeds}", "seconds")]
    lines += [(m.id, m.file, f"{kills}/{seeds}", f"{seconds:.0f}") for m, kills, seconds in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines)


def seeds_summary(rows: list[tuple[Mutant, int, float]], seeds: int, model: str) -> str:
    total = sum(kills for _, kills, _ in rows)
    every = sum(kills == seeds for _, kills, _ in rows)
    return (f"model kill rate: {total}/{seeds * len(rows)} mutant x seed runs; {every}/{len(rows)} mutants "
            f"killed under every seed ({model})")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list", type=Path, default=LIST, help="the mutant list (default: %(default)s)")
    p.add_argument("--only", nargs="+", default=[], metavar="ID", help="only these mutant ids")
    p.add_argument("--file", nargs="+", default=[], metavar="NAME", help="only mutants of these scripts")
    p.add_argument("--tag", default="", help="only mutants with this tag (e.g. model)")
    p.add_argument("--jobs", type=int, default=1, help="mutants run at once, each in its own copy")
    p.add_argument("--run-equivalent", action="store_true", help="run the mutants argued equivalent too")
    p.add_argument("--fail-under", type=float, default=0.0, metavar="PCT", help="exit 1 below this score")
    p.add_argument("--phases", nargs="+", choices=ALL_PHASES, default=list(ALL_PHASES),
                   help="run only these phases (a quick look: --phases fake)")
    p.add_argument("--cold", action="store_true", help=f"ignore the last run's killers ({HINTS.name})")
    p.add_argument("--check", action="store_true", help="validate the list and exit")
    p.add_argument("--seeds", type=int, default=0, help="instead: the model's kill rate over N seeds")
    p.add_argument("--model", default="tests/test_model.py::TestModelFakeredis", help="the model test for --seeds")
    a = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up the copies on a plain kill too
    try:
        lst = load(a.list)
    except MutantListError as exc:
        print(f"mutate: {exc}", file=sys.stderr)
        return 2
    chosen = [m for m in lst.mutants if (not a.only or m.id in a.only) and (not a.file or m.file in a.file)
              and (not a.tag or a.tag in m.tags)]
    unknown = set(a.only) - {m.id for m in lst.mutants}
    if unknown:
        print(f"mutate: unknown ids {sorted(unknown)}", file=sys.stderr)
        return 2
    if a.check:
        print(f"{len(lst.mutants)} mutants, every snippet found exactly once")
        return 0
    if a.seeds:
        seeds_report([m for m in chosen if not m.equivalent], a.seeds, a.model, a.jobs)
        return 0
    started = time.monotonic()
    if a.cold:
        HINTS.unlink(missing_ok=True)
    results = run_all(lst, chosen, a.jobs, a.run_equivalent, a.phases)
    print(table(results))
    k, n = score(results)
    print(f"({time.monotonic() - started:.0f} s, {a.jobs} job(s))")
    print(f"mutation score: {k}/{n} killed")
    return 1 if n and 100 * k / n < a.fail_under else 0


if __name__ == "__main__":
    sys.exit(main())

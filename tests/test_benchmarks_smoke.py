"""Every benchmark script runs in --quick mode against a real redis-server, so they cannot rot.

Only invariants are checked (requests per admission, zero duplicates, files written),
never speed: timings on a shared CI machine mean nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import admission, batch, contention, memory, script_cost, status

from .support import ROOT, RedisServer

pytestmark = pytest.mark.real


def quick(module: object, server: RedisServer, out: Path) -> dict:
    main = module.main  # type: ignore[attr-defined]
    data = main(["--quick", "--url", server.url, "--flush", "--out", str(out)])
    name = data["benchmark"]
    assert json.loads((out / f"{name}-quick.json").read_text())["quick"] is True
    assert (out / f"{name}-quick.md").read_text().strip()
    return data  # type: ignore[no-any-return]


def test_admission_quick(real_server: RedisServer, tmp_path: Path) -> None:
    data = quick(admission, real_server, tmp_path)
    assert data["requests"]["dedupkit"]["commands"] == 1
    assert data["requests"]["dedupkit"]["round_trips"] == 1
    assert data["requests"]["rq"]["commands"] == 8
    assert data["requests"]["rq"]["round_trips"] == 2
    assert (tmp_path / "admission_profile-quick.txt").read_text()


def test_batch_quick(real_server: RedisServer, tmp_path: Path) -> None:
    data = quick(batch, real_server, tmp_path)
    first, second, first_plain, second_plain = data["ticks"]
    assert [t["precheck"] for t in data["ticks"]] == [True, True, False, False]
    for t in (first, first_plain):
        assert t["admitted"] == t["keys"] and t["conflicts"] == 0
    for t in (second, second_plain):
        assert t["conflicts"] == t["keys"] and t["admitted"] == 0


def test_status_quick(real_server: RedisServer, tmp_path: Path) -> None:
    data = quick(status, real_server, tmp_path)
    assert set(data["results"]) == {"0", "1000"}


def test_contention_quick(real_server: RedisServer, tmp_path: Path) -> None:
    data = quick(contention, real_server, tmp_path)
    for key, s in data["summary"].items():
        if key.startswith("dedupkit:"):
            assert s["duplicates_total"] == 0, key
            assert s["pending_matches_admitted"], key


def test_memory_quick(real_server: RedisServer, tmp_path: Path) -> None:
    data = quick(memory, real_server, tmp_path)
    assert data["finished"]["after_second_tick"]["slot_fields"] == data["finished"]["keys"]
    assert data["pending"]["dedupkit_bytes_per_key"] > 0
    assert data["targets"]["history_bounded_after_retention"]
    assert data["history"]["recorded"]["records"] >= data["finished"]["keys"]


def test_script_cost_quick(real_server: RedisServer, tmp_path: Path) -> None:
    data = quick(script_cost, real_server, tmp_path)
    assert data["summary"]["admit_new"]["inner_commands_total_per_op"]["median"] > 0


def test_command_line_starts_its_own_server(tmp_path: Path) -> None:
    """The documented command, as a user runs it: no --url, a redis-server of its own."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.status", "--quick", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "| other jobs" in proc.stdout
    assert (tmp_path / "status-quick.json").exists()


def test_report_splices_tables(tmp_path: Path) -> None:
    from benchmarks import report

    readme = tmp_path / "README.md"
    readme.write_text((ROOT / "benchmarks" / "README.md").read_text())
    (tmp_path / "status.md").write_text("| a |\n|---|\n| 1 |\n")
    assert report.main(["--results", str(tmp_path), "--readme", str(readme)]) == ["status"]
    text = readme.read_text()
    assert "<!-- results:status -->\n| a |\n|---|\n| 1 |\n<!-- /results:status -->" in text

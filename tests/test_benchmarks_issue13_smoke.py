"""The issue-13 benchmark scripts run in --quick mode (invariants only, never speed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks import replicas, saturation

from .support import RedisServer

pytestmark = pytest.mark.real


def test_saturation_quick(real_server: RedisServer, tmp_path: Path) -> None:
    data = saturation.main(["--quick", "--procs", "2", "--seconds", "0.3", "--url", real_server.url, "--flush",
                            "--out", str(tmp_path)])
    assert {r["variant"] for r in data["rows"]} == set(saturation.VARIANTS)
    assert all(r["admitted"] > 0 and r["server_usec_per_admission"] > 0 for r in data["rows"])
    assert (tmp_path / "saturation-quick.md").read_text().strip()


def test_replicas_quick(tmp_path: Path) -> None:
    data = replicas.main(["--quick", "--n", "50", "--out", str(tmp_path)])
    assert set(data["summary"]) == {"0", "1"}
    # A healthy replica on loopback acknowledges every admission within the second.
    assert data["summary"]["1"]["unconfirmed"] == 0
    assert (tmp_path / "replicas-quick.md").read_text().strip()

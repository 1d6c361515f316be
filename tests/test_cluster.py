"""Redis Cluster (issue 13): three primaries on loopback, RQ 3 with RQ_KEY_PREFIX='{rq}', every
Deduplicator call through redis-py's RedisCluster, a slot migration under load, and what RQ
itself does there. Runs tests/cluster_run.py in a subprocess (RQ reads the prefix at import)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import rq

from .support import ROOT

RQ_MAJOR = int(rq.__version__.split(".")[0])

pytestmark = [pytest.mark.real, pytest.mark.topology, pytest.mark.slow, pytest.mark.rq_version,
              pytest.mark.skipif(RQ_MAJOR < 3, reason=f"RQ_KEY_PREFIX is RQ 3's; this is RQ {rq.__version__}")]


def _run(*args: str) -> dict:  # type: ignore[type-arg]
    env = dict(os.environ, RQ_KEY_PREFIX="{rq}", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "tests.cluster_run", *args], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _check(result: dict) -> None:  # type: ignore[type-arg]
    api = result["api"]
    # dedupkit's keys follow RQ's hash tag: one slot for everything a script touches.
    assert api["slots_key"] == "{rq}:dedupkit:slots:api" and api["slot"] == api["queue_slot"]
    assert api["admitted"] and api["conflict"] and api["replaced"] and api["scheduled"] == "scheduled"
    assert api["many_admitted"] == 50 and api["status_many_pending"] == 50
    assert api["cancel"] and not api["status_after_cancel"]
    assert result["race"] == {"admitted": 10, "queued": 10}, result["race"]
    load = result["load"]
    assert len(set(load["owners"])) > 1 and all(n > 0 for n in load["keys_moved_per_migration"]), load
    assert load["admitted"] > 0
    # The guarantee across the migrations, read from RQ's data: one pending job per key, each
    # admitted job still there, each key's slot naming its pending job.
    assert load["duplicate_keys"] == [] and load["admitted_missing"] == 0 and load["wrong_holder"] == [], load
    # Nothing untyped reached the callers (a refusal during the move is RedisUnavailableError).
    assert not [e for e in load["errors"] if e.startswith("untyped")], load["errors"]


def test_cluster_api_migration_and_rq_worker() -> None:
    result = _run("--clients", "3", "--seconds", "4", "--migrations", "1")
    _check(result)
    # RQ itself: its enqueue works through RedisCluster, its worker does not (RQ 3.0 reads
    # connection.connection_pool, which RedisCluster lacks). The README says so.
    assert result["rq"]["enqueue"] == "queued"
    assert "connection_pool" in result["rq"]["worker"], result["rq"]


@pytest.mark.topology_full
def test_cluster_long_migrations() -> None:
    _check(_run("--clients", "4", "--seconds", "12", "--migrations", "4"))

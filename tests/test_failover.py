"""A Sentinel failover under load (issue 13): the primary is SIGKILLed while clients admit,
replace and cancel, real rq workers run jobs, the Scheduler ticks (through ``dedupkit
scheduler -c SETTINGS``), the example app takes clicks and the CLI reads status; all of
them connect through RQ's ``SENTINEL`` settings. See tests/failover_run.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Queue

from dedupkit import Deduplicator, InvalidRequestError
from dedupkit.cli import main as cli_main
from dedupkit.connection import redis_from_settings

from . import failover_run
from .topology import MASTER_NAME

pytestmark = [pytest.mark.real, pytest.mark.topology]


def _check_survived(report: dict[str, Any]) -> None:
    assert report["sentinel_promoted_s"] < 30
    # Admissions succeed again on the new primary.
    assert report["first_admitted_after_s"] is not None and report["first_admitted_after_s"] < 30, report
    # The Scheduler survives: a tick failed (or not) during the failover, later ticks succeed.
    assert report["ticks_ok_after_kill"] >= 3, report
    assert report["first_ok_tick_after_s"] is not None and report["first_ok_tick_after_s"] < 30, report
    # The example app and the CLI are back.
    assert report["app_last_code"] in (200, 202, 409), report
    assert report["cli_last_code"] == 0, report
    # A duplicate can only come from a lost admission (asynchronous replication), never
    # from dedupkit's decisions on the new primary.
    if report["lost"] == 0:
        assert report["duplicate_keys_rq"] == [] and report["overlapping_run_keys"] == [], report


@pytest.mark.slow
def test_failover_under_load(tmp_path: Path) -> None:
    report = failover_run.run(replicas=1, before=3.0, after=6.0, workdir=tmp_path)
    print(report)
    _check_survived(report)


@pytest.mark.slow
@pytest.mark.topology_full
@pytest.mark.parametrize("replicas,min_replicas", [(1, 0), (2, 0), (2, 1)])
def test_failover_full(tmp_path: Path, replicas: int, min_replicas: int) -> None:
    report = failover_run.run(replicas=replicas, min_replicas=min_replicas, before=4.0, after=12.0,
                              workdir=tmp_path)
    print(report)
    _check_survived(report)
    if min_replicas:
        # What a replica confirmed survives the failover to it.
        assert report["lost_confirmed"] == 0, report


@pytest.mark.slow
@pytest.mark.topology_full
def test_lag_loses_admissions_and_min_replicas_flags_every_lost_one(tmp_path: Path) -> None:
    # One second of replication held back and lost with the primary: the judge must see
    # the lost admissions (else it could not see any), ...
    plain = failover_run.run(replicas=1, lag=1.0, before=4.0, after=8.0, workdir=tmp_path / "plain")
    print(plain)
    _check_survived(plain)
    assert plain["lost"] > 0, plain
    # ... and with min_replicas every lost admission had been answered confirmed=False.
    acked = failover_run.run(replicas=1, min_replicas=1, lag=1.0, before=4.0, after=8.0, workdir=tmp_path / "acked")
    print(acked)
    _check_survived(acked)
    assert acked["lost_confirmed"] == 0 and acked["unconfirmed_admissions"] > 0, acked


def test_sentinel_settings_are_checked_before_connecting() -> None:
    for bad in ({"SENTINEL": []}, {"SENTINEL": {"INSTANCES": "127.0.0.1:26379"}},
                {"SENTINEL": {"INSTANCES": [("127.0.0.1", "26379")]}}, {"SENTINEL": {"MASTER_NAME": ""}},
                {"SENTINEL": {"INSTANCE": [("127.0.0.1", 26379)]}}, {"REDIS_URL": 5}, {"REDIS_URL": "nope://x"}):
        with pytest.raises(InvalidRequestError):
            redis_from_settings(bad)
    conn = redis_from_settings({"SENTINEL": {"INSTANCES": [("127.0.0.1", 1)], "MASTER_NAME": MASTER_NAME}})
    assert conn.connection_pool.service_name == MASTER_NAME  # type: ignore[attr-defined]


def test_cli_reports_a_bad_settings_module(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["status", "q", "-c", "no_such_settings_module_13"]) == 2
    assert "cannot import the settings module" in capsys.readouterr().err


def test_cli_reads_rq_settings_and_url_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            real_server: Any, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "dk_url_settings_13.py").write_text(f"REDIS_URL = {real_server.url!r}\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("REDIS_URL", raising=False)
    conn = redis.Redis.from_url(real_server.url)
    conn.flushall()
    assert cli_main(["status", "q", "-c", "dk_url_settings_13"]) == 2  # read there: a queue RQ does not know
    assert "unknown to RQ" in capsys.readouterr().err
    Deduplicator(Queue("q", connection=conn)).enqueue("u", "tests.tasks.work")
    conn.close()
    assert cli_main(["status", "q", "-c", "dk_url_settings_13", "--json"]) == 0
    assert '"queued": 1' in capsys.readouterr().out
    # An explicit --url wins over the settings, as in RQ: here one nothing listens on.
    assert cli_main(["status", "q", "-c", "dk_url_settings_13", "--url", "redis://127.0.0.1:1/0"]) == 2
    assert "unavailable" in capsys.readouterr().err.lower()

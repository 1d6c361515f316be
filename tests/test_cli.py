"""The ``dedupkit`` command: argument errors in-process, the scheduler as real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from dedupkit.cli import main
from examples.flask_app import db
from examples.flask_app.app import make_deduplicator

from .support import ROOT, RedisServer, wait_for

DEDUPKIT_BIN = str(Path(sys.executable).with_name("dedupkit"))
APP = "examples.flask_app.scheduling:make_scheduler"
LEASE = "dedupkit:scheduler:email_processing:default:leader"


def not_a_scheduler() -> object:
    return object()


@pytest.mark.parametrize(("argv", "message"), [
    (["scheduler", "--app", "nocolon"], "--app must look like module:factory"),
    (["scheduler", "--app", "no_such_module_xyz:f"], "cannot import 'no_such_module_xyz'"),
    (["scheduler", "--app", "tests.test_cli:missing"], "has no attribute 'missing'"),
    (["scheduler", "--app", "tests.test_cli:not_a_scheduler"], "returned object, not a dedupkit.scheduler.Scheduler"),
    (["scheduler", "--app", "tests.test_cli:not_a_scheduler", "--url", "redis://x"], "takes no redis_url"),
    (["scheduler", "--app", APP, "--interval", "0", "--url", "redis://127.0.0.1:1"], "--interval must be positive"),
])
def test_usage_errors_exit_2_with_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("dedupkit scheduler: error: ") and message in err


def test_subcommand_is_required(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main([])
    assert exc.value.code == 2


def seeded_db(tmp_path: Path) -> str:
    path = str(tmp_path / "app.sqlite3")
    db.init_db(path)
    db.seed_demo_users(path, "pw", hash_method="pbkdf2:sha256:1000")
    return path


def start(url: str, path: str, *extra: str) -> subprocess.Popen[str]:
    env = dict(os.environ, EMAIL_APP_DATABASE=path, PYTHONPATH=str(ROOT), EMAIL_JOB_SECONDS="0")
    return subprocess.Popen([DEDUPKIT_BIN, "scheduler", "--app", APP, "--url", url, "--interval", "1", *extra],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> str:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate(timeout=10)
    return out


def test_scheduler_command_ticks_and_stops_cleanly_on_sigterm(tmp_path: Path, real_server: RedisServer,
                                                              real_redis: redis.Redis) -> None:
    path = seeded_db(tmp_path)
    conn = db.connect(path)
    bob = db.user_by_name(conn, "bob")
    conn.close()
    assert bob
    proc = start(real_server.url, path)
    try:
        dedup = make_deduplicator(real_redis)
        wait_for(lambda: dedup.has_pending(bob.id), 15, what="the CLI scheduler to admit bob's job")
        wait_for(lambda: real_redis.get(LEASE) is not None, 5, what="the lease")
        time.sleep(2.5)  # two more ticks at --interval 1; they skip bob (a status read, no admission)
    finally:
        out = stop(proc)
    assert proc.returncode == 0, out
    assert f"Scheduled job email_process_{bob.id}_" in out and "for user" in out
    assert out.count("Scheduler tick:") >= 2, out
    assert "Skipping job scheduling for user" in out  # the next ticks found bob's job pending
    assert "Received SIGTERM; stopping after the current batch" in out and "stopped after" in out
    assert real_redis.get(LEASE) is None  # released on the way out


def test_two_cli_replicas_one_leads_and_the_other_takes_over_after_sigkill(tmp_path: Path,
                                                                           real_server: RedisServer,
                                                                           real_redis: redis.Redis) -> None:
    path = seeded_db(tmp_path)
    first = start(real_server.url, path)
    second = None
    try:
        wait_for(lambda: real_redis.get(LEASE) is not None, 15, what="a leader")
        assert str(first.pid) in real_redis.get(LEASE).decode()  # type: ignore[union-attr]
        second = start(real_server.url, path)
        time.sleep(2.5)  # several intervals: the follower must not take the lease
        assert str(first.pid) in real_redis.get(LEASE).decode()  # type: ignore[union-attr]
        first.kill()  # no clean-up: the lease (0.5 s at --interval 1) must expire by itself
        first.wait(10)
        killed = time.monotonic()
        wait_for(lambda: str(second.pid) in (real_redis.get(LEASE) or b"").decode(), 5, what="the takeover")  # type: ignore[union-attr]
        assert time.monotonic() - killed < 1.0 + 0.3  # within one interval (+ process/poll slack)
    finally:
        out1 = stop(first)
        out2 = stop(second) if second else ""
    assert "Scheduler tick:" in out1
    assert out2.count("Scheduler tick:") >= 1 and "took the lease" in out2
    keys = real_redis.hkeys("dedupkit:slots:email_processing")
    assert len(keys) == 1  # bob only (alice is not due, carol is off): one job whichever replica ticked

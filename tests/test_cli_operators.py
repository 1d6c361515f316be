"""The operator subcommands of the ``dedupkit`` console script, on a real redis-server."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from rq import Queue

from dedupkit import Deduplicator
from dedupkit.cli import main

from . import rqstate
from .support import RedisServer

TASK = "tests.tasks.work"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_status_list_cancel_stats_sweep_adopt(real_server: RedisServer, real_redis: redis.Redis,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    url = real_server.url
    queue = Queue("ops", connection=real_redis)
    dedup = Deduplicator(queue)
    dedup.enqueue("alice@example.com", TASK)
    dedup.enqueue_in(timedelta(hours=1), "bob", TASK)
    running = dedup.enqueue("carol", TASK)
    rqstate.start(real_redis, queue, running.job_id)

    code, out = run(capsys, "status", "ops", "alice@example.com", "--url", url)
    assert code == 0 and "queued job_alice-40example-2ecom_" in out
    code, out = run(capsys, "status", "ops", "bob", "--url", url, "--json")
    assert json.loads(out)["has_scheduled_job"] is True
    code, out = run(capsys, "status", "ops", "--url", url, "--json")
    data = json.loads(out)
    assert data["sizes"]["slots"] == 3 and data["stats"]["admitted"] == 3

    code, out = run(capsys, "list", "ops", "--url", url, "--all", "--json")
    listed = {s["key"]: s for s in json.loads(out)["slots"]}
    assert set(listed) == {"alice@example.com", "bob", "carol"} and listed["carol"]["state"] == "running"
    code, out = run(capsys, "list", "ops", "--url", url)
    assert "3 slots" in out and "alice@example.com" in out

    code, out = run(capsys, "cancel", "ops", "bob", "--url", url)
    assert code == 0 and "cancelled" in out and not dedup.has_pending("bob")
    code, out = run(capsys, "cancel", "ops", "carol", "--url", url)
    assert code == 1 and "not cancelled" in out and dedup.is_running("carol")

    real_redis.hset(f"rq:job:{running.job_id}", "status", "finished")  # and the horse's execution ends:
    real_redis.delete(queue.started_job_registry.key, f"rq:executions:{running.job_id}")
    code, out = run(capsys, "sweep", "ops", "--url", url, "--json")
    assert json.loads(out) == {"deleted": 1}
    code, out = run(capsys, "stats", "ops", "--url", url, "--json")
    assert json.loads(out)["cancelled"] == 1 and json.loads(out)["swept"] == 1

    queue.enqueue(TASK, job_id="email_process_42_1700000000")
    code, out = run(capsys, "adopt", "ops", "--url", url, "--id-pattern", "email_process_{key}_*", "--json")
    assert json.loads(out)["adopted"] == 1 and dedup.has_pending(42)


def test_errors_are_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["status", "ops", "", "--url", "redis://127.0.0.1:1/0"])
    assert code == 2 and "invalid dedup key" in capsys.readouterr().err
    code = main(["status", "ops", "x", "--url", "redis://127.0.0.1:1/0"])
    assert code == 2 and "Redis is unavailable" in capsys.readouterr().err


def test_console_script_is_installed(real_server: RedisServer) -> None:
    exe = Path(sys.executable).with_name("dedupkit")
    out = subprocess.run([str(exe), "stats", "nothing", "--url", real_server.url], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and "no decisions yet" in out.stdout


DOWN = "redis://127.0.0.1:1/0"


@pytest.mark.parametrize("argv", [
    ["status", "ops"], ["status", "ops", "k"], ["list", "ops"], ["list", "ops", "--all"], ["cancel", "ops", "k"],
    ["stats", "ops"], ["sweep", "ops"], ["adopt", "ops", "--id-pattern", "email_process_{key}_*"],
    ["requeue", "ops", "--all"], ["requeue", "ops", "job_1_1"],
], ids=lambda argv: "-".join(a for a in argv if not a.startswith("email")))
def test_every_subcommand_with_redis_down_prints_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code = main([*argv, "--url", DOWN])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert captured.err.startswith(f"dedupkit {argv[0]}: error: Redis is unavailable")


def test_a_redis_error_the_library_does_not_wrap_is_one_line_too(real_server: RedisServer,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """A server that wants a password answers NOAUTH, a ResponseError: still one line, exit 2."""
    conn = redis.Redis.from_url(real_server.url)
    conn.config_set("requirepass", "secret")
    try:
        for argv in (["status", "ops"], ["stats", "ops"], ["list", "ops"]):
            code = main([*argv, "--url", real_server.url])
            err = capsys.readouterr().err
            assert code == 2 and err.count("\n") == 1 and err.startswith(f"dedupkit {argv[0]}: error: "), err
    finally:
        redis.Redis.from_url(real_server.url, password="secret").config_set("requirepass", "")


def test_status_of_a_queue_rq_does_not_know(real_server: RedisServer, real_redis: redis.Redis,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    Queue("known", connection=real_redis).enqueue(TASK)
    for argv in (["status", "nosuchqueue"], ["status", "nosuchqueue", "k"], ["list", "nosuchqueue"]):
        code = main([*argv, "--url", real_server.url])
        captured = capsys.readouterr()
        assert code == 2 and captured.out == ""
        assert "queue 'nosuchqueue' is unknown to RQ" in captured.err and "known queues: known" in captured.err
    code, out = run(capsys, "status", "known", "--url", real_server.url)
    assert code == 0 and "queued      1" in out

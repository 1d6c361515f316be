"""The distribution `rq-dedupkit` ships the Lua scripts and its LICENSE, and builds without
setuptools warnings: build the sdist and, from it, the wheel; `pip install` the wheel in a
clean venv (a fresh install gets RQ 3), run the README's snippet, and a real `rq worker`."""

from __future__ import annotations

import email
import os
import re
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest
import redis

from .support import ROOT, RedisServer

pytestmark = pytest.mark.slow


def test_wheel_contains_scripts_and_works_from_a_clean_venv(tmp_path: Path, real_server: RedisServer) -> None:
    # Without --sdist/--wheel, build makes the sdist and then the wheel from the unpacked sdist,
    # so the wheel's Lua files prove the sdist carries them too. PYTHONDONTWRITEBYTECODE (set in
    # some shells and CI) makes distutils print "warning: ... byte-compiling is disabled", a
    # notice about the environment, not the project: the build runs without it.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    build = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path), str(ROOT)],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    assert build.returncode == 0, build.stdout
    warnings = [line for line in build.stdout.splitlines() if re.search("warning", line, re.IGNORECASE)]
    assert not warnings, "\n".join(warnings)

    sdist = next(tmp_path.glob("rq_dedupkit-*.tar.gz"))
    sdist_names = {name.split("/", 1)[-1] for name in tarfile.open(sdist).getnames()}
    assert {"LICENSE", "dedupkit/lua/admit.lua", "dedupkit/lua/_common.lua", "dedupkit/py.typed"} <= sdist_names

    wheel = next(tmp_path.glob("rq_dedupkit-*.whl"))
    zf = zipfile.ZipFile(wheel)
    names = zf.namelist()
    for script in ("_common.lua", "admit.lua", "status.lua", "cancel.lua"):
        assert f"dedupkit/lua/{script}" in names
    assert "dedupkit/py.typed" in names
    dist_info = next(name.split("/", 1)[0] for name in names if name.endswith(".dist-info/METADATA"))
    assert dist_info.startswith("rq_dedupkit-")
    assert {name.split("/", 1)[0] for name in names} == {"dedupkit", dist_info}  # one import package
    metadata = email.message_from_bytes(zf.read(f"{dist_info}/METADATA"))
    assert metadata["Name"] == "rq-dedupkit"
    assert metadata["License-Expression"] == "MIT"
    assert metadata.get_all("License-File") == ["LICENSE"]
    license_text = zf.read(f"{dist_info}/licenses/LICENSE").decode()
    assert license_text == (ROOT / "LICENSE").read_text()
    assert license_text.startswith("MIT License") and "dedupkit contributors" in license_text
    assert zf.read(f"{dist_info}/entry_points.txt").decode().split() == [
        "[console_scripts]", "dedupkit", "=", "dedupkit.cli:main"]

    _readme_snippet_runs_from_a_clean_venv(tmp_path, wheel, real_server)


def _readme_snippet(name: str = "dedup = Deduplicator(queue)") -> str:
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    return next(block for block in blocks if name in block)


def _readme_snippet_runs_from_a_clean_venv(tmp_path: Path, wheel: Path, real_server: RedisServer) -> None:
    """What a user does: a new venv, ``pip install`` the wheel (its dependencies from the
    package index: a fresh install gets RQ 3), the README's snippet, a real ``rq worker``."""
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    python, rq_bin = env_dir / "bin" / "python", env_dir / "bin" / "rq"
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    install = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                              str(wheel)], capture_output=True, text=True, env=clean)
    assert install.returncode == 0, install.stdout + install.stderr
    versions = subprocess.run([str(python), "-c", "import dedupkit, rq, sys; print(rq.__version__); "
                               "print(dedupkit.__file__)"], capture_output=True, text=True, env=clean, cwd=tmp_path)
    assert versions.returncode == 0, versions.stderr
    rq_version, dedupkit_file = versions.stdout.split()
    assert rq_version.startswith("3."), rq_version
    assert dedupkit_file.startswith(str(env_dir)), dedupkit_file  # the wheel's copy, not this checkout

    app = tmp_path / "app"
    app.mkdir()
    (app / "mytasks.py").write_text(
        "import os, redis\n\n"
        "def process_user_emails(user_id):\n"
        "    redis.Redis.from_url(os.environ['REDIS_URL']).rpush('readme:ran', str(user_id))\n"
        "    return user_id\n")
    (app / "snippet.py").write_text(
        "import os\nfrom mytasks import process_user_emails\n"
        "url, user_id = os.environ['REDIS_URL'], 42\n"
        + _readme_snippet()
        + "print('admitted' if adm.admitted else 'conflict', adm.job_id)\n")
    env = dict(clean, REDIS_URL=real_server.url)
    runs = [subprocess.run([str(python), "snippet.py"], capture_output=True, text=True, env=env, cwd=app)
            for _ in range(2)]
    for run in runs:
        assert run.returncode == 0, run.stderr
    first, second = (run.stdout.split() for run in runs)
    assert first[0] == "admitted" and second[-2:] == ["conflict", first[1]], (first, second)
    assert "already pending:" in runs[1].stdout and "'pending': True" in runs[1].stdout
    worker = subprocess.run([str(rq_bin), "worker", "--burst", "-u", real_server.url, "--path", str(app),
                             "email_processing"], capture_output=True, text=True, env=env, cwd=app, timeout=120)
    assert worker.returncode == 0, worker.stdout + worker.stderr
    conn = redis.Redis.from_url(real_server.url)
    try:
        assert conn.lrange("readme:ran", 0, -1) == [b"42"]  # the one admitted job ran, once
        assert conn.hget(f"rq:job:{first[1]}", "status") == b"finished"
    finally:
        conn.delete("readme:ran")
        conn.close()
    third = subprocess.run([str(python), "snippet.py"], capture_output=True, text=True, env=env, cwd=app)
    assert third.returncode == 0 and third.stdout.startswith("admitted"), third.stdout + third.stderr

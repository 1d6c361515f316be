"""The wheel ships the Lua scripts: build it, install it in a clean venv, admit a job."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from .support import ROOT, RedisServer

pytestmark = pytest.mark.slow


def test_wheel_contains_scripts_and_works_from_a_clean_venv(tmp_path: Path, real_server: RedisServer) -> None:
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("dedupkit-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    for script in ("_common.lua", "admit.lua", "status.lua", "cancel.lua"):
        assert f"dedupkit/lua/{script}" in names
    assert "dedupkit/py.typed" in names

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False, system_site_packages=False).create(env_dir)
    python = env_dir / "bin" / "python"
    # The wheel goes into a fresh directory; its dependencies (rq, redis, click) come from
    # this environment's site-packages through PYTHONPATH, which does not run the .pth
    # file of the editable install, so only the wheel's copy of dedupkit is importable.
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                    str(tmp_path / "site"), str(wheel)], check=True)
    check = (
        "import sys; sys.path[:0] = [sys.argv[1]]\n"
        "import dedupkit, redis; from rq import Queue\n"
        "assert dedupkit.__file__.startswith(sys.argv[1]), dedupkit.__file__\n"
        "d = dedupkit.Deduplicator(Queue('pkg', connection=redis.Redis.from_url(sys.argv[2])))\n"
        "assert d.enqueue('u', 'os.getpid').admitted and not d.enqueue('u', 'os.getpid').admitted\n"
        "print('ok')\n"
    )
    deps = subprocess.run([sys.executable, "-c", "import rq, redis, click, os; "
                           "print(os.pathsep.join(os.path.dirname(os.path.dirname(m.__file__)) "
                           "for m in (rq, redis, click)))"], capture_output=True, text=True, check=True).stdout.strip()
    out = subprocess.run([str(python), "-c", check, str(tmp_path / "site"), real_server.url],
                         capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": deps})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"

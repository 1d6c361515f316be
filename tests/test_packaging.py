"""The distribution `rq-dedupkit` ships the Lua scripts and its LICENSE, and builds without
setuptools warnings: build the sdist and, from it, the wheel; install the wheel in a clean venv,
admit a job."""

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
        "import importlib.metadata as md; dist = md.distribution('rq-dedupkit')\n"
        "assert str(dist.locate_file('')).startswith(sys.argv[1]), dist.locate_file('')\n"
        "assert dist.version == dedupkit.__version__, (dist.version, dedupkit.__version__)\n"
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

"""RQ 3's RQ_KEY_PREFIX: dedupkit takes every key from RQ's own objects, so any prefix works,
and a prefix with a hash tag ("{rq}") puts dedupkit's keys in the same Redis Cluster slot.

Each case runs tests/prefix_probe.py in a subprocess (RQ reads the variable at import) with
a real redis-server and a real ``rq worker`` that inherits the same prefix.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import rq

from dedupkit.keys import hash_tag

from .support import ROOT, RedisServer

RQ_MAJOR = int(rq.__version__.split(".")[0])


def test_hash_tag() -> None:
    assert hash_tag("{rq}:queue:") == "{rq}" and hash_tag("rq:queue:") == "" and hash_tag("a{}b{c}") == ""
    assert hash_tag("app{x}:q") == "{x}"


@pytest.mark.rq_version
@pytest.mark.skipif(RQ_MAJOR < 3, reason=f"RQ_KEY_PREFIX is RQ 3's; this is RQ {rq.__version__}")
@pytest.mark.parametrize("prefix", ["{rq}", "myapp"])
def test_every_key_follows_rq_key_prefix(real_server: RedisServer, prefix: str) -> None:
    env = dict(os.environ, RQ_KEY_PREFIX=prefix, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "tests.prefix_probe", real_server.url], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["runs"] == {"holder": 1, "follow": 1, "r1": 1, "r2": 1}
    assert result["follow_up_admitted"] and result["limited_states"] == ["queued", "rate_limited"]
    assert result["last_u"] == "finished"
    assert result["job_key"] == f"{prefix}:job:{result['holder']}"
    tag = hash_tag(prefix)
    ours = f"{tag}:dedupkit:" if tag else "dedupkit:"
    assert result["slots"] == f"{ours}slots:pfx"
    stray = [k for k in result["seen"] if not k.startswith((f"{prefix}:", ours, "test:runs:"))]
    assert stray == [], f"keys outside RQ's prefix and dedupkit's namespace: {stray}"
    assert any(k.startswith(f"{prefix}:executions:") for k in result["seen"])
    assert any(k.startswith(ours) for k in result["seen"])

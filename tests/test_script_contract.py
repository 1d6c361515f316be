"""Each .lua header documents the KEYS/ARGV that Python passes (scripts.SPECS)."""

from __future__ import annotations

import re

import pytest

from dedupkit import scripts


def _header(name: str) -> str:
    lines = []
    for line in scripts.source(name).splitlines():
        if not line.startswith("--"):
            break
        lines.append(line)
    return "\n".join(lines)


@pytest.mark.parametrize("spec", scripts.SPECS + scripts.LEASE_SPECS, ids=lambda s: s.name)
def test_header_matches_how_python_calls(spec: scripts.ScriptSpec) -> None:
    header = _header(spec.name)
    assert header.startswith(f"-- {spec.name}:"), "header opens with the file name and purpose"
    for what, fixed, more in (("KEYS", spec.keys, spec.more_keys), ("ARGV", spec.argv, spec.more_argv)):
        numbered = sorted(int(n) for n in re.findall(rf"^-- {what}\[(\d+)\]", header, re.M))
        assert numbered == list(range(1, fixed + 1)), f"{what} documented: {numbered}"
        variadic = re.search(rf"^-- {what}\[{fixed + 1}\.\.\]", header, re.M) is not None
        assert variadic == more, f"{what}[{fixed + 1}..] documented: {variadic}"
    assert "Reply" in header


@pytest.mark.parametrize("spec", scripts.SPECS + scripts.LEASE_SPECS, ids=lambda s: s.name)
def test_scripts_build_no_rq_key_names(spec: scripts.ScriptSpec) -> None:
    body = "\n".join(line.split("--")[0] for line in scripts.source(spec.name).splitlines())
    assert "'rq:" not in body and '"rq:' not in body, "RQ key names come from Python"
    assert "os." not in body, "real Redis has no os library"


def test_common_helpers_use_no_keys_of_their_own() -> None:
    common = scripts.source("_common.lua")
    assert "KEYS[" not in common and "ARGV[" not in common

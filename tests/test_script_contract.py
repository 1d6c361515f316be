"""Each script's contract (dedupkit.protocol) matches its .lua file by name, in order.

Three sides must agree: the names Python builds KEYS/ARGV from (``protocol.Contract``),
the .lua header (``-- KEYS[i]  <name> ...``), and the names the script body binds
``KEYS[i]``/``ARGV[i]`` to. Swapping two keys on any side fails ``problems``; the
``swapped`` tests prove that for every pair of keys of every script, on both sides.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import replace

import pytest

from dedupkit import protocol, scripts
from dedupkit.keys import KeySpace

# Names a script body binds that differ from the contract's (the body's are shorter, and
# shared with _common.lua's K table, so they stay).
BODY_ALIASES = {"exec_prefix": "executions_prefix", "dependents": "dependents_template",
                "rate_limited": "rate_limited_template", "dependencies_tpl": "dependencies_template",
                "ttl_ms": "lease_ms"}


def _header(text: str) -> str:
    lines = []
    for line in text.splitlines():
        if not line.startswith("--"):
            break
        lines.append(line)
    return "\n".join(lines)


def _body(text: str) -> str:
    return "\n".join(line.split("--")[0] for line in text.splitlines())


def _name(raw: str) -> str:
    raw = BODY_ALIASES.get(raw, raw)
    return raw[:-4] if raw.endswith("_key") else raw


def _split_top(expr: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in expr:
        depth += int(ch in "({[")
        depth -= int(ch in ")}]")
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return [*parts, cur.strip()]


_INDEX = re.compile(r"^(?:tonumber\()?(KEYS|ARGV)\[(\d+|pos(?: \+ (\d+))?)\]\)?$")


def body_bindings(text: str) -> list[tuple[str, str, str]]:
    """(KEYS|ARGV, index or 'pos+k', name) for every name the body binds a KEYS/ARGV entry to."""
    found: list[tuple[str, str, str]] = []
    rest = []
    for line in _body(text).splitlines():
        m = re.match(r"^\s*local\s+([\w\s,]+?)\s*=\s*(.+)$", line)
        pairs = list(zip([n.strip() for n in m.group(1).split(",")], _split_top(m.group(2)), strict=False)) if m else []
        hits = [(name, _INDEX.match(expr)) for name, expr in pairs]
        hits = [(name, h) for name, h in hits if h]
        if not hits:
            rest.append(line)
        for name, h in hits:
            index = h.group(2) if not h.group(2).startswith("pos") else f"pos+{h.group(3) or 0}"
            found.append((h.group(1), index, _name(name)))
    for m2 in re.finditer(r"(\w+)\s*=\s*(KEYS|ARGV)\[(\d+)\]", "\n".join(rest)):
        found.append((m2.group(2), m2.group(3), _name(m2.group(1))))
    return found


def problems(contract: protocol.Contract, text: str) -> list[str]:
    """Every disagreement between ``contract`` and the script source ``text``."""
    out: list[str] = []
    header = _header(text)
    if not header.startswith(f"-- {contract.name}:"):
        out.append("the header opens with the file name and purpose")
    if "Reply" not in header:
        out.append("the header documents the reply")
    for what, names, more in (("KEYS", contract.keys, contract.more_keys),
                              ("ARGV", contract.argv, contract.more_argv)):
        documented = {int(i): name.replace("-", "_") for i, name in
                      re.findall(rf"^-- {what}\[(\d+)\]\s+(\S+)", header, re.M)}
        expected = {i + 1: name for i, name in enumerate(names)}
        for i in sorted(set(documented) | set(expected)):
            if documented.get(i) != expected.get(i):
                out.append(f"header {what}[{i}] is {documented.get(i)!r}, contract says {expected.get(i)!r}")
        tail = re.findall(rf"^-- {what}\[(\d+)\.\.\]\s*(\w+)", header, re.M)
        want_tail = [(str(len(names) + 1), more)] if more else []
        if tail != want_tail:
            out.append(f"header {what} tail: {tail} != contract {want_tail}")
        for kind, index, name in body_bindings(text):
            if kind == what and index.isdigit():
                i = int(index)
                if i > len(names) or names[i - 1] != name:
                    out.append(f"body binds {what}[{i}] to {name!r}, contract says "
                               f"{names[i - 1] if i <= len(names) else None!r}")
        bound = {int(i) for kind, i, _ in body_bindings(text) if kind == what and i.isdigit()}
        if what == "KEYS" and bound != set(expected):
            out.append(f"body binds KEYS {sorted(bound)}, contract has {sorted(expected)}")
    if contract.request_argv:
        fields = re.findall(r"^--\s{10}(\w+)\s", header.split(f"ARGV[{len(contract.argv) + 1}..]")[1], re.M)
        if fields[:len(contract.request_argv)] != list(contract.request_argv):
            out.append(f"header request fields {fields} != contract {contract.request_argv}")
        for kind, index, name in body_bindings(text):
            if kind == "ARGV" and index.startswith("pos+"):
                k = int(index[4:])
                if k >= len(contract.request_argv) or contract.request_argv[k] != name:
                    out.append(f"body binds ARGV[pos + {k}] to {name!r}")
    return out


def test_every_script_has_a_contract() -> None:
    shipped = {p.name for p in scripts.resources.files("dedupkit").joinpath("lua").iterdir()
               if p.name.endswith(".lua") and p.name != "_common.lua"}
    assert shipped == {c.name for c in protocol.ALL}


@pytest.mark.parametrize("contract", protocol.ALL, ids=lambda c: c.name)
def test_contract_matches_the_header_and_the_body(contract: protocol.Contract) -> None:
    assert problems(contract, scripts.source(contract.name)) == []


@pytest.mark.parametrize("contract", protocol.SLOT_SCRIPTS, ids=lambda c: c.name)
def test_every_key_name_is_a_keyspace_field(contract: protocol.Contract) -> None:
    fields = set(KeySpace.__dataclass_fields__)
    assert set(contract.keys) <= fields
    assert {n for n in contract.argv if n.endswith(("_prefix", "_template"))} <= fields


def _pairs(contract: protocol.Contract) -> list[tuple[int, int]]:
    return list(itertools.combinations(range(len(contract.keys)), 2))


_SWAPS = [(c, i, j) for c in protocol.ALL for i, j in _pairs(c)]


@pytest.mark.parametrize(("contract", "i", "j"), _SWAPS, ids=lambda v: getattr(v, "name", str(v)))
def test_two_keys_swapped_in_the_contract_are_caught(contract: protocol.Contract, i: int, j: int) -> None:
    keys = list(contract.keys)
    keys[i], keys[j] = keys[j], keys[i]
    assert problems(replace(contract, keys=tuple(keys)), scripts.source(contract.name))


@pytest.mark.parametrize(("contract", "i", "j"), _SWAPS, ids=lambda v: getattr(v, "name", str(v)))
def test_two_keys_swapped_in_the_script_body_are_caught(contract: protocol.Contract, i: int, j: int) -> None:
    head = _header(scripts.source(contract.name))
    body = scripts.source(contract.name)[len(head):]
    swapped = re.sub(rf"KEYS\[({i + 1}|{j + 1})\]",
                     lambda m: f"KEYS[{j + 1 if m.group(1) == str(i + 1) else i + 1}]", body)
    assert problems(contract, head + swapped)


@pytest.mark.parametrize("contract", protocol.ALL, ids=lambda c: c.name)
def test_scripts_build_no_rq_key_names(contract: protocol.Contract) -> None:
    body = _body(scripts.source(contract.name))
    assert "'rq:" not in body and '"rq:' not in body, "RQ key names come from Python"
    assert "os." not in body, "real Redis has no os library"


def test_common_helpers_use_no_keys_of_their_own() -> None:
    common = scripts.source("_common.lua")
    assert "KEYS[" not in common and "ARGV[" not in common

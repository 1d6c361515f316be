"""The mutation runner (tests/mutate.py) and its list (dedupkit/lua/mutants.toml), issue 10."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from . import mutate

# -- the runner ---------------------------------------------------------------------------


def test_the_list_is_valid_and_covers_every_script() -> None:
    lst = mutate.load()
    scripts = {p.name for p in (mutate.ROOT / mutate.LUA_DIR).glob("*.lua")}
    assert {m.file for m in lst.mutants} == scripts
    assert set(lst.tests) == scripts


def _write_list(tmp_path: Path, mutant: str) -> Path:
    text = mutate.LIST.read_text(encoding="utf-8") + "\n" + mutant
    path = tmp_path / "mutants.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_mutant_added_by_hand_is_picked_up_without_touching_the_runner(tmp_path: Path) -> None:
    path = _write_list(tmp_path, '[[mutant]]\nid = "by-hand"\nfile = "lease_renew.lua"\n'
                                 'original = "return 1"\nreplacement = "return 0"\ndescription = "renew says no"\n')
    added = [m for m in mutate.load(path).mutants if m.id == "by-hand"]
    assert added == [mutate.Mutant("by-hand", "lease_renew.lua", "return 1", "return 0", "renew says no")]


@pytest.mark.parametrize("original, found", [("this text is in no script", 0), ("redis.call(", 2)])
def test_a_stale_snippet_fails_loudly(tmp_path: Path, original: str, found: int) -> None:
    path = _write_list(tmp_path, f'[[mutant]]\nid = "stale"\nfile = "lease_renew.lua"\noriginal = "{original}"\n'
                                 'replacement = "x"\ndescription = "d"\n')
    with pytest.raises(mutate.MutantListError, match=f"stale: the original snippet occurs {found} times"):
        mutate.load(path)
    assert mutate.main(["--list", str(path), "--check"]) == 2


def test_the_list_is_not_shipped() -> None:
    import tomllib

    data = tomllib.loads((mutate.ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert data["tool"]["setuptools"]["package-data"]["dedupkit.lua"] == ["*.lua"]


def test_a_mutant_added_by_hand_runs_and_the_tree_is_untouched(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """End to end: the list gains one table, the runner (unchanged) copies the tree, applies
    it, runs the lease tests on fakeredis, restores, reports."""
    monkeypatch.setattr(mutate, "HINTS", tmp_path / "killers.json")
    script = mutate.ROOT / mutate.LUA_DIR / "lease_renew.lua"
    before = script.read_text(encoding="utf-8")
    copies = set(Path(tempfile.gettempdir()).glob("dedupkit-mutate-*"))  # other runs' copies
    path = _write_list(tmp_path, '[[mutant]]\nid = "by-hand"\nfile = "lease_renew.lua"\n'
                                 'original = "  return 1"\nreplacement = "  return 0"\n'
                                 'description = "renew says no"\n')
    assert mutate.main(["--list", str(path), "--only", "by-hand", "--phases", "fake"]) == 0
    out = capsys.readouterr().out
    assert "by-hand" in out and "killed by tests/" in out
    assert out.rstrip().endswith("mutation score: 1/1 killed")
    assert script.read_text(encoding="utf-8") == before
    assert set(Path(tempfile.gettempdir()).glob("dedupkit-mutate-*")) <= copies  # its copy removed

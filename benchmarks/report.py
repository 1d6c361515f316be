"""Copy the latest tables from ``results/<name>.md`` into benchmarks/README.md.

    .venv/bin/python -m benchmarks.report [--quick]

The README marks each table's place with ``<!-- results:<name> -->`` and
``<!-- /results:<name> -->``; everything between is replaced by the file the benchmark
wrote, so the README's numbers are always the scripts' output, never typed by hand.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from ._common import RESULTS

README = Path(__file__).resolve().parent / "README.md"
NAMES = ("admission", "batch", "status", "contention", "memory", "script_cost")


def splice(text: str, name: str, table: str) -> str:
    pattern = re.compile(rf"(<!-- results:{name} -->\n).*?(<!-- /results:{name} -->)", re.S)
    if not pattern.search(text):
        raise SystemExit(f"README has no <!-- results:{name} --> block")
    return pattern.sub(lambda m: m.group(1) + table.strip() + "\n" + m.group(2), text)


def main(argv: list[str] | None = None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="use the -quick results (for testing this script)")
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--readme", type=Path, default=README)
    args = p.parse_args(argv)
    text = args.readme.read_text()
    done = []
    for name in NAMES:
        src = args.results / (f"{name}-quick.md" if args.quick else f"{name}.md")
        if src.exists():
            text = splice(text, name, src.read_text())
            done.append(name)
    args.readme.write_text(text)
    print(f"updated {args.readme}: {', '.join(done) or 'nothing'}")
    return done


if __name__ == "__main__":
    main()

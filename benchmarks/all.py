"""Run every benchmark in full mode, one after the other, then update the README tables.

    .venv/bin/python -m benchmarks.all [--quick]

Each script starts its own redis-server. The full run takes about 20 minutes on a
2-core machine (the two 1,000,000-key ticks of ``batch`` and ``memory`` dominate).
"""

from __future__ import annotations

import sys
import time

from . import admission, batch, contention, memory, report, script_cost, status


def main(argv: list[str] | None = None) -> None:
    flags = list(sys.argv[1:] if argv is None else argv)
    for module in (admission, batch, status, contention, memory, script_cost):
        t0 = time.perf_counter()
        print(f"\n=== {module.__name__} ===", flush=True)
        module.main(flags)
        print(f"=== {module.__name__}: {time.perf_counter() - t0:.0f} s ===", flush=True)
    report.main(["--quick"] if "--quick" in flags else [])


if __name__ == "__main__":
    main()

"""Tests written to kill the mutants of dedupkit/lua/mutants.toml (issue 10).

`make mutate` runs this file first for every script. Each test reads one thing the other
test files do not (a boundary, a piece of bookkeeping, a registry entry), on fakeredis and
on a real redis-server.
"""

from __future__ import annotations

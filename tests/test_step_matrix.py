"""The step-kill matrix, a representative slice (the full run: ``make step-matrix``).

Real redis-server, real ``rq worker`` processes killed after a Redis step sampled from each
phase of the job's life (dequeue, prepare, perform, finish / fail / retry / requeue), with
admissions, replacements and cancels racing RQ's own maintenance. Judged from RQ's data:
no two live jobs of the key, no overlapping executions, no silent loss, key free again.
"""

from __future__ import annotations

import pytest

from . import step_matrix

# Worker and SimpleWorker; success, retry with and without interval, repeat with a follow-up.
SUBSET = ["success", "simple-success", "retry", "retry-interval", "repeat-follow-up"]


@pytest.mark.real
@pytest.mark.slow
def test_step_matrix_subset(real_server: object) -> None:
    lines: list[str] = []
    cells = step_matrix.run_matrix(SUBSET, "kill", full=False, lanes=2, churn_seconds=3.0, per_phase=1,
                                   out=lines.append)
    table = step_matrix.report(cells, "kill")
    print(table)
    reached = [c for c in cells if c.reached]
    assert reached, "no cell reached its kill step"
    assert [c for c in reached if c.duplicates] == [], table
    assert [c for c in reached if c.losses] == [], table
    assert [c for c in reached if c.free_seconds is None] == [], table

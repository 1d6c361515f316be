"""Worker classes for tests: RQ's Worker with a short heartbeat lease.

RQ sets a running job's lease to now + min(remaining timeout, job_monitoring_interval)
+ 60 s on every heartbeat (RQ 2.12 and 3.0 alike). The 60 s of slack is a constant in RQ;
this class keeps the same mechanism with 2 s of slack so a killed-worker test takes
seconds, not minutes. RQ 3 passes ``working_time=`` to ``get_heartbeat_ttl`` (RQ 2 reads
``self.current_job_working_time``), so the override passes whatever RQ passes.
"""

from __future__ import annotations

from typing import Any

from rq import Worker
from rq.job import Job


class ShortLeaseWorker(Worker):
    def get_heartbeat_ttl(self, job: Job, *args: Any, **kwargs: Any) -> int:
        return int(super().get_heartbeat_ttl(job, *args, **kwargs)) - 60 + 2

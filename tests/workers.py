"""Worker classes for tests: RQ's Worker with a short heartbeat lease.

RQ sets a running job's lease to now + min(remaining timeout, job_monitoring_interval)
+ 60 s on every heartbeat. The 60 s of slack is a constant in RQ; this class keeps the
same mechanism with 2 s of slack so a killed-worker test takes seconds, not minutes.
"""

from __future__ import annotations

from rq import Worker
from rq.job import Job


class ShortLeaseWorker(Worker):
    def get_heartbeat_ttl(self, job: Job) -> int:
        return int(super().get_heartbeat_ttl(job)) - 60 + 2

"""Run dedupkit and a real ``rq worker`` under RQ_KEY_PREFIX (RQ 3 reads it at import).

``python -m tests.prefix_probe <redis url>`` with RQ_KEY_PREFIX set in the environment:
admits a job, runs a real worker, admits a follow-up behind the running job, on RQ 3 a
rate-limited pair, waits until every job ran and every key is free, and prints JSON:
the Redis keys that exist at the end (and at their peak), and what ran.
tests/test_key_prefix.py runs it in a subprocess (the prefix must be set before rq loads).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import redis
import rq
from rq import Queue

from dedupkit import Deduplicator

from .support import ROOT, RQ_BIN, wait_for

TASK = "tests.tasks.work"


def main(url: str) -> None:
    conn = redis.Redis.from_url(url)
    conn.flushall()
    queue = Queue("pfx", connection=conn)
    dedup = Deduplicator(queue)
    seen: set[str] = set()

    def snapshot() -> None:
        seen.update(k.decode() for k in conn.keys("*"))

    holder = dedup.enqueue("u", TASK, "holder", 1.5)
    snapshot()
    worker = subprocess.Popen([RQ_BIN, "worker", "-u", url, "--path", str(ROOT), "pfx"], cwd=ROOT,
                              env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.DEVNULL,
                              stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: dedup.is_running("u"), 30, what="the holder to start")
        snapshot()
        follow = dedup.enqueue("u", TASK, "follow", on_conflict="follow_up")
        snapshot()
        limited: list[str] = []
        if int(rq.__version__.split(".")[0]) >= 3:
            from rq.rate_limit import RateLimit

            for key in ("r1", "r2"):
                adm = dedup.enqueue(key, TASK, key, 0.5, rate_limit=RateLimit("probe", 1))
                limited.append(adm.status.state.value if adm.status.state else "")
            snapshot()
        keys = ["u", "r1", "r2"] if limited else ["u"]
        wait_for(lambda: not any(s.pending for s in dedup.status_many(keys)), 60, what="every job to end")
        snapshot()
        runs = {tag: conn.llen(f"test:runs:{tag}") for tag in ("holder", "follow", "r1", "r2")}
        print(json.dumps({
            "rq": rq.__version__, "holder": holder.job_id, "follow_up": follow.job_id,
            "follow_up_admitted": follow.admitted, "limited_states": limited, "runs": runs,
            "job_key": dedup.keys.job_key(holder.job_id or ""), "slots": dedup.keys.slots,
            "seen": sorted(seen), "last_u": dedup.status("u").last_run.status if dedup.status("u").last_run else None,
        }))
    finally:
        os.killpg(worker.pid, 15)
        worker.wait(10)
        time.sleep(0)


if __name__ == "__main__":
    main(sys.argv[1])

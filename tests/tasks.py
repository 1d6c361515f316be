"""Job functions the test workers run. Each records its run in Redis so tests can count runs."""

from __future__ import annotations

import os
import time

from rq import get_current_job


def _record(tag: str) -> None:
    job = get_current_job()
    assert job is not None
    job.connection.rpush(f"test:runs:{tag}", f"{job.id}:{os.getpid()}:{time.time()}")


def work(tag: str, seconds: float = 0.0) -> str:
    """Record the run, then sleep ``seconds``."""
    _record(tag)
    if seconds:
        time.sleep(seconds)
    return "done"


def fail(tag: str, seconds: float = 0.0) -> None:
    """Record the run, sleep, then raise."""
    _record(tag)
    if seconds:
        time.sleep(seconds)
    raise RuntimeError("failing on purpose")

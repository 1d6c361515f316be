"""Job functions the test workers run. Each records its run in Redis so tests can count runs."""

from __future__ import annotations

import json
import os
import time
from typing import Any

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


# -- the step-kill matrix (tests/step_matrix.py) ----------------------------------------
# Each execution logs its start and end (job id, pid, time) to one list per dedup key, so
# the judge can check from Redis alone that no two executions of a key overlapped.

def step_log_key(key: str) -> str:
    return f"steplog:{key}"


def _step_event(key: str, event: str, **extra: object) -> None:
    job = get_current_job()
    assert job is not None
    record = {"ev": event, "job": job.id, "pid": os.getpid(), "t": time.time(), **extra}
    job.connection.rpush(step_log_key(key), json.dumps(record))


def step_work(key: str, seconds: float = 0.2) -> str:
    """Log start, sleep, log end (also when RQ's timeout interrupts the sleep)."""
    _step_event(key, "start")
    try:
        time.sleep(seconds)
    finally:
        _step_event(key, "end")
    return "done"


def step_fail(key: str, seconds: float = 0.1) -> None:
    """Log start, sleep, raise; log end."""
    _step_event(key, "start")
    try:
        time.sleep(seconds)
        raise RuntimeError("failing on purpose")
    finally:
        _step_event(key, "end")


def step_follow_up(key: str, seconds: float = 0.3) -> str:
    """While running, admit a follow-up for the own key (on_conflict="follow_up"), then sleep."""
    from rq import Queue

    from dedupkit import Deduplicator

    _step_event(key, "start")
    try:
        job = get_current_job()
        assert job is not None
        dedup = Deduplicator(Queue(job.origin, connection=job.connection))
        admission = dedup.enqueue(key, step_work, key, on_conflict="follow_up")
        if admission.admitted:
            _step_event(key, "admitted", admitted=admission.job_id)
        time.sleep(seconds)
    finally:
        _step_event(key, "end")
    return "done"


def step_on_success(job: Any, connection: Any, result: Any, *args: Any, **kwargs: Any) -> None:
    connection.rpush(f"steplog:callbacks:{job.id}", "success")


def step_on_failure(job: Any, connection: Any, *exc_info: Any) -> None:
    connection.rpush(f"steplog:callbacks:{job.id}", "failure")

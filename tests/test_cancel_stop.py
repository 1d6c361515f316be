"""cancel(stop_running=True) when the job ends between the script's answer and RQ's stop command."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import redis
from rq import Queue
from rq.job import Job

import dedupkit.core as deduplicator_module
from dedupkit import Deduplicator

from . import rqstate

TASK = "tests.tasks.work"


def ending_first(end: str) -> Any:
    """send_stop_job_command, but the job ends just before it runs (as a worker would
    finish it): with result_ttl=0 its hash is deleted, else the worker is no longer named."""
    real = deduplicator_module.send_stop_job_command

    def send(connection: redis.Redis, job_id: str, serializer: Any = None) -> None:
        job = Job.fetch(job_id, connection=connection)
        if end == "deleted":
            job.delete()
        else:  # what the worker's success pipeline writes: final status, execution deleted
            with connection.pipeline() as pipe:
                pipe.hset(job.key, mapping={"status": "finished", "worker_name": ""})
                for execution in job.get_executions():
                    execution.delete(job, pipe)
                pipe.execute()
        real(connection, job_id, serializer=serializer)

    return send


@pytest.mark.parametrize("end", ["deleted", "finished"])
def test_a_job_that_ends_first_is_reported_not_raised(conn: redis.Redis, end: str, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    queue = Queue("stop", connection=conn)
    dedup = Deduplicator(queue)
    running = dedup.enqueue("alice", TASK)
    rqstate.start(conn, queue, running.job_id)  # type: ignore[arg-type]
    monkeypatch.setattr(deduplicator_module, "send_stop_job_command", ending_first(end))
    with caplog.at_level(logging.INFO, logger="dedupkit"):
        assert dedup.cancel("alice", stop_running=True) is False  # nothing was stopped
    assert any("ended before the stop command reached it" in r.getMessage() for r in caplog.records)
    assert not dedup.status("alice").pending


def test_a_running_job_still_gets_the_stop_command(conn: redis.Redis) -> None:
    queue = Queue("stop", connection=conn)
    dedup = Deduplicator(queue)
    running = dedup.enqueue("bob", TASK)
    rqstate.start(conn, queue, running.job_id)  # type: ignore[arg-type]
    assert dedup.cancel("bob", stop_running=True) is True

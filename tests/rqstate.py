"""Put jobs into the states RQ's worker puts them in, with RQ's own code where it exists."""

from __future__ import annotations

import inspect
import time

import redis
from redis.client import Pipeline
from rq import Queue
from rq.executions import Execution, ExecutionRegistry
from rq.job import Job


def start(conn: redis.Redis, queue: Queue, job_id: str, lease: float | None = 30.0) -> Execution:
    """What a worker does when it takes a job: dequeue, create the execution, mark started.

    ``lease`` seconds from now is the execution's score in rq:wip (its heartbeat lease);
    negative means already expired, None means RQ's '+inf' (no timeout).
    """
    job = Job.fetch(job_id, connection=conn)
    conn.lrem(queue.key, 1, job_id)
    with conn.pipeline() as pipe:
        execution = create_execution(job, -1 if lease is None else 60, pipe, "test-worker")
        job.prepare_for_execution("test-worker", pipe)
        pipe.execute()
    if lease is not None:
        heartbeat(conn, queue, execution, lease)
    return execution


def create_execution(job: Job, ttl: int, pipe: Pipeline, worker_name: str) -> Execution:
    """RQ's Execution.create; worker_name= is RQ 2.11+ (and 3), RQ 2.10's has none."""
    named = {"worker_name": worker_name} if "worker_name" in inspect.signature(Execution.create).parameters else {}
    return Execution.create(job, ttl=ttl, pipeline=pipe, **named)


def heartbeat(conn: redis.Redis, queue: Queue, execution: Execution, lease: float) -> None:
    """What RQ's heartbeat writes: the lease in rq:wip, and the execution's own score in
    rq:executions:<job> 60 s later (rq/executions.py ExecutionRegistry.add)."""
    end = time.time() + lease
    conn.zadd(queue.started_job_registry.key, {execution.composite_key: end}, xx=True)
    conn.zadd(ExecutionRegistry.key_template.format(execution.job_id), {execution.id: end + 60})


def run_all(queue: Queue) -> None:
    """Run every queued job to its end in this process with RQ's SimpleWorker."""
    from rq import SimpleWorker

    SimpleWorker([queue], connection=queue.connection).work(burst=True)

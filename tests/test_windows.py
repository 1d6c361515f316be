"""The windows of issue 9, each driven with RQ's own code, step by step, on fakeredis and
a real redis-server: RQ writes its state in several steps, and at every step between
them the key must stay with the job RQ may still run.

Each test stops RQ's real code between two of its writes (an unexecuted pipeline, a
callback RQ runs in the middle of its cleanup) and asks dedupkit to admit there.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
import rq
from rq import Callback, Queue, Retry
from rq.job import Job, JobStatus
from rq.registry import ScheduledJobRegistry, StartedJobRegistry
from rq.repeat import Repeat

from dedupkit import Deduplicator, JobState

from . import rqstate

TASK = "tests.tasks.work"
RQ_MAJOR = int(rq.__version__.split(".")[0])


def _kill_horse(conn: redis.Redis, queue: Queue, job_id: str, retries: int) -> None:
    """A job that was running when its worker died: lease expired, RQ has not cleaned up."""
    execution = rqstate.start(conn, queue, job_id, lease=30)
    rqstate.heartbeat(conn, queue, execution, lease=-1)
    assert Job.fetch(job_id, connection=conn).retries_left == (retries or None)


def test_retry_with_interval_holds_the_key_between_rqs_writes(dedup: Deduplicator, queue: Queue,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Job.retry writes status 'scheduled' at once, then the registry entry, and the
    worker's pipeline removes the execution later. At each step in between the key must
    stay taken (it did not: 'scheduled' without a registry entry read as 'gone')."""
    conn = queue.connection
    adm = dedup.enqueue("u", "tests.tasks.fail", "r", retry=Retry(max=2, interval=30))
    execution = rqstate.start(conn, queue, adm.job_id, lease=30)
    job = Job.fetch(adm.job_id, connection=conn)
    seen: list[str] = []
    original = ScheduledJobRegistry.schedule

    def schedule(registry: ScheduledJobRegistry, *args: Any, **kwargs: Any) -> Any:
        seen.append(conn.hget(job.key, "status").decode())  # RQ wrote 'scheduled' already
        _assert_held(dedup, adm.job_id)
        return original(registry, *args, **kwargs)

    monkeypatch.setattr(ScheduledJobRegistry, "schedule", schedule)
    with conn.pipeline() as pipe:
        execution.delete(job=job, pipeline=pipe)  # what the worker queues before retry()
        job.retry(queue, pipe)
        _assert_held(dedup, adm.job_id)
        pipe.execute()
    assert seen == ["scheduled"]
    _assert_held(dedup, adm.job_id)
    assert dedup.status("u").state is JobState.SCHEDULED


def _assert_held(dedup: Deduplicator, job_id: str) -> None:
    assert dedup.status("u").job_id == job_id
    for policy in ("reject", "replace"):
        answer = dedup.enqueue("u", TASK, "x", on_conflict=policy)
        assert not answer.admitted and answer.job_id == job_id, policy
    assert dedup.sweep() == 0 and not dedup.cancel("u")
    # A follow-up may wait behind it (RQ enqueues dependents only after the last retry).
    answer = dedup.enqueue("u", TASK, "x", on_conflict="follow_up")
    assert answer.follow_up_of == job_id or (answer.conflict and answer.status.job_id == job_id)
    if answer.admitted:
        assert dedup.cancel("u")  # cancels the follow-up, not the holder
    assert dedup.status("u").job_id == job_id


@pytest.mark.parametrize("retries", [1, 0])
def test_a_dead_holder_is_rqs_to_retry_while_it_has_retries(dedup: Deduplicator, queue: Queue,
                                                            retries: int) -> None:
    """A dead job with retries left is re-queued by RQ's cleanup: it keeps the key until
    then, on every path (admit, gc, sweep, cancel). Without retries it is free at once."""
    conn = queue.connection
    adm = dedup.enqueue("u", TASK, "d", **({"retry": Retry(max=retries)} if retries else {}))
    _kill_horse(conn, queue, adm.job_id, retries)
    if not retries:
        assert not dedup.has_pending("u")
        assert dedup.enqueue("u", TASK, "d").recovered == "dead"
        return
    assert dedup.status("u").state is JobState.RUNNING
    assert not dedup.enqueue("u", TASK, "d").admitted
    assert not dedup.enqueue("u", TASK, "d", on_conflict="replace").admitted
    assert dedup.sweep() == 0 and not dedup.cancel("u")
    StartedJobRegistry(queue=queue).cleanup()  # RQ's maintenance: re-queues it
    status = dedup.status("u")
    assert status.state is JobState.QUEUED and status.job_id == adm.job_id
    assert conn.lrange(queue.key, 0, -1) == [adm.job_id.encode()]


def test_an_admission_inside_rqs_cleanup_of_a_dead_holder_is_refused(dedup: Deduplicator, queue: Queue) -> None:
    """RQ's cleanup fetches the dead job, runs its on_failure callback, then re-saves its
    own copy and re-queues it. An admission in the middle (here: from that callback) must
    not take the key: the old version zeroed retries_left, the cleanup undid it."""
    conn = queue.connection
    answers: list[Any] = []
    _CALLBACK_STATE["answer"] = answers
    _CALLBACK_STATE["dedup"] = dedup
    adm = dedup.enqueue("u", TASK, "d", retry=Retry(max=1), on_failure=Callback(admit_from_callback))
    _kill_horse(conn, queue, adm.job_id, 1)
    StartedJobRegistry(queue=queue).cleanup()
    assert answers and not answers[0].admitted
    assert conn.lrange(queue.key, 0, -1) == [adm.job_id.encode()]  # RQ's retry, alone
    assert dedup.status("u").job_id == adm.job_id


_CALLBACK_STATE: dict[str, Any] = {}


def admit_from_callback(job: Job, connection: redis.Redis, *args: Any) -> None:
    dedup = _CALLBACK_STATE["dedup"]
    _CALLBACK_STATE["answer"].append(dedup.enqueue("u", TASK, "intruder"))


def test_follow_up_is_refused_behind_a_repeating_holder(dedup: Deduplicator, queue: Queue) -> None:
    """On success RQ re-queues a repeating job and enqueues its dependents together."""
    adm = dedup.enqueue("u", TASK, "rep", repeat=Repeat(times=1))
    rqstate.start(queue.connection, queue, adm.job_id, lease=30)
    answer = dedup.enqueue("u", TASK, "next", on_conflict="follow_up")
    assert not answer.admitted and answer.reason == "repeating"


@pytest.mark.parametrize("policy", ["reject", "replace", "follow_up"])
def test_a_replayed_admission_answers_admitted_and_changes_nothing(dedup: Deduplicator, queue: Queue,
                                                                   policy: str) -> None:
    """redis-py resends a script call whose reply was lost: the same job id again."""
    conn = queue.connection
    holder = dedup.enqueue("u" if policy != "reject" else "other", TASK, "first")
    if policy == "follow_up":
        rqstate.start(conn, queue, holder.job_id, lease=30)
    prepared = dedup._prepare(_request("u", policy))
    first = dedup._admit([prepared])[0]
    assert first.admitted
    before = _rq_state(conn, queue)
    again = dedup._admit([prepared])[0]
    assert again.admitted and again.job_id == first.job_id and again.error is None
    assert _rq_state(conn, queue) == before
    expected = {"reject": first.job_id, "replace": first.job_id, "follow_up": holder.job_id}[policy]
    assert dedup.status("u").job_id == expected


def test_a_replay_after_the_job_ended_is_still_that_admission(dedup: Deduplicator, queue: Queue) -> None:
    prepared = dedup._prepare(_request("u", "reject"))
    first = dedup._admit([prepared])[0]
    rqstate.run_all(queue)
    dedup.enqueue("other", TASK, "gc")  # gc may reuse the slot meanwhile
    again = dedup._admit([prepared])[0]
    assert again.admitted and again.job_id == first.job_id
    assert not dedup.has_pending("u")
    assert queue.connection.llen(queue.key) == 1  # only "other"


def test_a_running_job_whose_hash_vanished_holds_the_key_while_its_lease_lives(dedup: Deduplicator,
                                                                               queue: Queue) -> None:
    """A ttl or an eviction can drop the job hash under a running horse; its execution
    lease in rq:wip is what shows it runs."""
    conn = queue.connection
    adm = dedup.enqueue("u", TASK, "d")
    execution = rqstate.start(conn, queue, adm.job_id, lease=30)
    conn.delete(f"rq:job:{adm.job_id}")
    assert dedup.is_running("u")
    assert not dedup.enqueue("u", TASK, "d").admitted and dedup.sweep() == 0
    rqstate.heartbeat(conn, queue, execution, lease=-1)
    assert dedup.enqueue("u", TASK, "d").recovered == "gone"


def test_a_running_job_cancelled_by_rq_holds_the_key_while_its_horse_runs(dedup: Deduplicator,
                                                                          queue: Queue) -> None:
    conn = queue.connection
    adm = dedup.enqueue("u", TASK, "c")
    execution = rqstate.start(conn, queue, adm.job_id, lease=30)
    Job.fetch(adm.job_id, connection=conn).cancel()
    assert Job.fetch(adm.job_id, connection=conn).get_status() == JobStatus.CANCELED
    assert not conn.zscore(queue.started_job_registry.key, execution.composite_key)  # RQ took the lease away
    assert dedup.is_running("u") and not dedup.enqueue("u", TASK, "c").admitted
    conn.zrem(f"rq:executions:{adm.job_id}", execution.id)  # the horse ended (Execution.delete)
    assert dedup.enqueue("u", TASK, "c").admitted


def test_a_status_the_scripts_do_not_know_holds_the_key(dedup: Deduplicator, queue: Queue) -> None:
    """A newer RQ may add statuses (RQ 3 added ready_to_enqueue and rate_limited, which the
    scripts now name): fail closed, reported as queued."""
    adm = dedup.enqueue("u", TASK, "n")
    queue.connection.hset(f"rq:job:{adm.job_id}", "status", "some_future_status")
    assert dedup.status("u").state is JobState.QUEUED
    assert dedup.has_pending("u") and not dedup.enqueue("u", TASK, "n").admitted
    assert dedup.sweep() == 0


def _request(key: str, policy: str) -> Any:
    from dedupkit import EnqueueRequest

    return EnqueueRequest(key, TASK, ("second",), {}, on_conflict=policy)


def _rq_state(conn: redis.Redis, queue: Queue) -> tuple[Any, ...]:
    return (conn.lrange(queue.key, 0, -1), conn.zrange(queue.scheduled_job_registry.key, 0, -1),
            conn.zrange(queue.deferred_job_registry.key, 0, -1), conn.zrange(queue.canceled_job_registry.key, 0, -1),
            sorted(conn.keys("rq:job:*")))


def test_a_running_job_deleted_by_rq_leaves_a_gap_the_readme_names(dedup: Deduplicator, queue: Queue) -> None:
    """Job.delete drops the hash, the wip entry and the executions zset: RQ keeps no trace
    of the running horse (a documented bypass). On RQ 2.x its next heartbeat re-adds the
    execution's score (RQ's Execution.heartbeat, ZADD without XX) and the key is held
    again; RQ 3's heartbeat only updates existing entries, so the gap lasts until the
    horse ends."""
    conn = queue.connection
    adm = dedup.enqueue("u", TASK, "d")
    execution = rqstate.start(conn, queue, adm.job_id, lease=30)
    Job.fetch(adm.job_id, connection=conn).delete()
    assert not dedup.has_pending("u")  # the gap the README names
    with conn.pipeline() as pipe:
        execution.heartbeat(queue.started_job_registry, 30, pipe)  # RQ's own heartbeat
        pipe.execute()
    assert dedup.is_running("u") is (RQ_MAJOR < 3)


@pytest.mark.rq_version
@pytest.mark.skipif(RQ_MAJOR >= 3,
                    reason="RQ 3 passes the execution to handle_job_success and keeps it across the retry")
@pytest.mark.parametrize("retries", [1, 0])
def test_a_success_retried_after_a_watch_error_keeps_the_key_while_rq_may_revive_it(
        dedup: Deduplicator, queue: Queue, monkeypatch: pytest.MonkeyPatch, retries: int) -> None:
    """RQ's handle_job_success WATCHes the job's dependents set; a follow_up admission
    (SADD to that set) between its WATCH and EXEC makes RQ run the transaction again. On
    that second run RQ's worker has already dropped its execution (cleanup_execution set
    worker.execution = None in the aborted first run), so the job is written 'finished'
    and its execution stays in rq:wip: a lease nobody renews (found by the step matrix,
    repeat-follow-up k=48). When it expires, RQ's StartedJobRegistry.cleanup treats the
    finished job as abandoned: with retries left it re-queues it and the job runs again.
    Until then the key must stay with it."""
    from rq import Worker
    from rq.executions import prepare_execution

    conn = queue.connection
    adm = dedup.enqueue("u", TASK, "w", **({"retry": Retry(max=retries)} if retries else {}))
    worker = Worker([queue], connection=conn, name="watch-worker")
    job = Job.fetch(adm.job_id, connection=conn)
    conn.lrem(queue.key, 1, job.id)
    prepare_execution(worker, job)  # the worker: execution + lease in rq:wip
    execution = worker.execution
    assert execution is not None
    worker.prepare_job_execution(job)  # the horse: status 'started'
    job.perform()
    job.ended_at = job.started_at
    follow_ups: list[Any] = []
    original = Queue.enqueue_dependents

    def enqueue_dependents(self: Queue, parent: Job, *args: Any, **kwargs: Any) -> Any:
        if not follow_ups:  # inside RQ's WATCH, before its EXEC
            follow_ups.append(dedup.enqueue("u", TASK, "next", on_conflict="follow_up"))
        return original(self, parent, *args, **kwargs)

    monkeypatch.setattr(Queue, "enqueue_dependents", enqueue_dependents)
    worker.handle_job_success(job, queue, queue.started_job_registry)  # RQ's own, WatchError and all
    follow_up = follow_ups[0]
    assert follow_up.admitted and follow_up.follow_up_of == adm.job_id
    assert Job.fetch(adm.job_id, connection=conn).get_status() == JobStatus.FINISHED
    wip = queue.started_job_registry.key
    assert conn.zscore(wip, execution.composite_key) is not None  # RQ 2 left the execution behind
    assert conn.lrange(queue.key, 0, -1) == [follow_up.job_id.encode()]  # RQ enqueued the follow-up
    rqstate.run_all(queue)  # the follow-up runs and ends
    rqstate.heartbeat(conn, queue, execution, lease=-1)  # nobody renews the lease: it expires
    if retries:
        assert dedup.has_pending("u") and dedup.status("u").job_id == adm.job_id
        assert not dedup.enqueue("u", TASK, "intruder").admitted
        assert dedup.sweep() == 0 and not dedup.cancel("u")
    StartedJobRegistry(queue=queue).cleanup()  # RQ's maintenance
    revived = conn.lrange(queue.key, 0, -1)
    if retries:
        assert revived == [adm.job_id.encode()]  # RQ runs the finished job again, alone
        assert dedup.status("u").job_id == adm.job_id
    else:
        assert revived == []
        assert Job.fetch(adm.job_id, connection=conn).get_status() == JobStatus.FAILED  # RQ: "abandoned"
        assert dedup.enqueue("u", TASK, "after").admitted



def _dequeue_into_intermediate(conn: redis.Redis, queue: Queue) -> None:
    """What Queue.lmove does on Redis >= 6.2: LMOVE the next id into the intermediate list.
    Redis 5 has no LMOVE (and RQ pops with LPOP there, never filling that list): the same
    move in MULTI, so the list state is there and the scripts' LPOS-less path reads it."""
    try:
        conn.lmove(queue.key, queue.intermediate_queue_key)
    except redis.exceptions.ResponseError as exc:
        assert "unknown command" in str(exc).lower(), exc
        with conn.pipeline() as pipe:
            job_id = conn.lindex(queue.key, 0)
            pipe.lpop(queue.key)
            pipe.rpush(queue.intermediate_queue_key, job_id)  # type: ignore[arg-type]
            pipe.execute()


def _pop_and_die(queue: Queue, *others: Queue) -> str:
    """What RQ's worker does first with several queues (or on Redis < 6.2): LPOP the id,
    with no intermediate list. A worker killed right after it never writes again."""
    popped = Queue.dequeue_any([queue, *others], timeout=None, connection=queue.connection)
    assert popped is not None
    job, _ = popped
    assert not queue.connection.lrange(queue.intermediate_queue_key, 0, -1)
    return str(job.id)


def test_a_job_popped_by_a_worker_that_died_before_starting_it_frees_the_key(queue: Queue) -> None:
    """RQ loses such a job (status 'queued' forever, in no list or registry). A cancel or
    replace that finds it in no list marks it; still so due_margin later, it is lost and
    the key is free (it was blocked forever: step matrix two-queues k=38/39)."""
    dedup = Deduplicator(queue, due_margin=0.3)
    adm = dedup.enqueue("u", TASK, "p")
    assert _pop_and_die(queue, Queue("other", connection=queue.connection)) == adm.job_id
    assert not dedup.cancel("u")  # could be a live worker about to start it: marked, kept
    assert not dedup.enqueue("u", TASK, "x", on_conflict="replace").admitted
    assert dedup.status("u").job_id == adm.job_id
    time.sleep(0.5)
    assert not dedup.has_pending("u") and dedup.status("u").last_run.status == "lost"  # type: ignore[union-attr]
    taken = dedup.enqueue("u", TASK, "after")
    assert taken.admitted and taken.recovered == "lost"


def test_a_popped_job_that_starts_or_comes_back_is_never_taken_for_lost(queue: Queue) -> None:
    conn = queue.connection
    dedup = Deduplicator(queue, due_margin=0.3)
    adm = dedup.enqueue("u", TASK, "p")
    _pop_and_die(queue, Queue("other", connection=conn))
    assert not dedup.cancel("u")  # marked
    job = Job.fetch(adm.job_id, connection=conn)
    queue._enqueue_job(job)  # back in the list the way RQ re-queues (retry, requeue): new enqueued_at
    time.sleep(0.5)
    assert dedup.status("u").state is JobState.QUEUED and not dedup.enqueue("u", TASK, "x").admitted
    # Popped by a worker of one queue (intermediate list): never marked, whatever the wait.
    Queue.dequeue_any([queue], timeout=None, connection=conn)
    if conn.lrange(queue.intermediate_queue_key, 0, -1):
        assert not dedup.cancel("u")
        time.sleep(0.5)
        assert dedup.has_pending("u")
    # A worker that did start it: a live lease, whatever the mark says.
    rqstate.start(conn, queue, adm.job_id, lease=30)
    time.sleep(0.5)
    assert dedup.is_running("u")


def test_a_failed_job_left_in_the_scheduled_registry_holds_the_key(dedup: Deduplicator, queue: Queue) -> None:
    """RQ's maintenance raced with itself (two cleanups of one stuck job, as the step matrix
    saw at retry-interval k=45): the first retries it (status 'scheduled', registry entry),
    the second, reading it with no retries left, fails it and leaves the entry. RQ's
    scheduler promotes every id in that registry whatever its status: the job will run."""
    from rq import Worker

    conn = queue.connection
    adm = dedup.enqueue("u", "tests.tasks.fail", "z", retry=Retry(max=1, interval=3600))
    conn.lrem(queue.key, 1, adm.job_id)  # a worker took it, then died
    worker = Worker([queue], connection=conn, name="maintenance")
    worker.handle_job_failure(Job.fetch(adm.job_id, connection=conn), queue, exc_string="stuck")  # retries it
    worker.handle_job_failure(Job.fetch(adm.job_id, connection=conn), queue, exc_string="stuck")  # fails it
    assert Job.fetch(adm.job_id, connection=conn).get_status() == JobStatus.FAILED
    assert conn.zscore(queue.scheduled_job_registry.key, adm.job_id) is not None
    status = dedup.status("u")
    assert status.state is JobState.SCHEDULED and status.job_id == adm.job_id
    assert not dedup.enqueue("u", TASK, "x").admitted and dedup.sweep() == 0
    assert dedup.cancel("u")  # not due for an hour: withdrawn from the registry, as RQ's cancel does
    assert conn.zscore(queue.scheduled_job_registry.key, adm.job_id) is None
    assert dedup.enqueue("u", TASK, "x").admitted


def test_a_job_in_the_intermediate_list_is_never_withdrawn(dedup: Deduplicator, queue: Queue) -> None:
    """A worker of one queue LMOVEs the id into the intermediate list. If RQ's cleanup
    re-queues it meanwhile (the step matrix, retry k=80), it is in both lists: a replace or
    cancel that took it from the queue would leave it to RQ's intermediate-queue cleanup,
    which retries it whatever its status."""
    conn = queue.connection
    adm = dedup.enqueue("u", TASK, "i", retry=Retry(max=2))
    _dequeue_into_intermediate(conn, queue)
    queue._enqueue_job(Job.fetch(adm.job_id, connection=conn))  # RQ's retry pushes it again
    assert conn.lrange(queue.key, 0, -1) == [adm.job_id.encode()]
    answer = dedup.enqueue("u", TASK, "x", on_conflict="replace")
    assert not answer.admitted and answer.reason == "dequeued"
    assert not dedup.cancel("u")
    assert conn.lrange(queue.key, 0, -1) == [adm.job_id.encode()]
    assert Job.fetch(adm.job_id, connection=conn).get_status() == JobStatus.QUEUED


def test_rqs_intermediate_cleanup_retrying_a_stuck_job_keeps_the_key(dedup: Deduplicator, queue: Queue,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker of one queue LMOVEd the id into the intermediate list and died before
    starting it (no execution, no lease). RQ's intermediate cleanup then runs
    handle_job_failure: with retries and an interval, Job.retry writes 'scheduled' first,
    the registry entry after, and the id leaves the intermediate list last. In between the
    key was free (step matrix on RQ 3, retry-interval k=34)."""
    from rq import Worker

    conn = queue.connection
    adm = dedup.enqueue("u", "tests.tasks.fail", "s", retry=Retry(max=2, interval=3600))
    _dequeue_into_intermediate(conn, queue)
    seen: list[str] = []
    original = ScheduledJobRegistry.schedule

    def schedule(registry: ScheduledJobRegistry, *args: Any, **kwargs: Any) -> Any:
        seen.append(conn.hget(f"rq:job:{adm.job_id}", "status").decode())
        assert dedup.status("u").job_id == adm.job_id
        assert not dedup.enqueue("u", TASK, "x").admitted and dedup.sweep() == 0 and not dedup.cancel("u")
        return original(registry, *args, **kwargs)

    monkeypatch.setattr(ScheduledJobRegistry, "schedule", schedule)
    worker = Worker([queue], connection=conn, name="maintenance")
    worker.handle_job_failure(Job.fetch(adm.job_id, connection=conn), queue, exc_string="stuck")  # as the cleanup
    assert seen == ["scheduled"]
    conn.lrem(queue.intermediate_queue_key, 1, adm.job_id)  # the cleanup's last step
    status = dedup.status("u")
    assert status.state is JobState.SCHEDULED and status.job_id == adm.job_id


@pytest.mark.xfail(strict=True, reason="open window: RQ's intermediate cleanup fails a job its live worker has "
                   "just dequeued (stale first-seen key); from RQ's data it reads failed for good (README)")
def test_rqs_intermediate_cleanup_failing_a_job_its_worker_just_dequeued_keeps_the_key(
        dedup: Deduplicator, queue: Queue) -> None:
    """RQ's IntermediateQueue.cleanup (2.10 and 3.0) keeps an id's first-seen key for 24 h
    after it handled the id (``remove`` only LREMs). A job that was stuck once (its worker
    died after the dequeue) is retried; when a live worker dequeues it again, a maintenance
    run before that worker starts it finds the old first-seen time and fails the job. The
    worker still runs it (its start writes 'started' over 'failed'). Between the two, the
    key must stay taken; today it is free (the step matrix on RQ 2.10, simple-retry k=49,
    fits this). Strict xfail: it fails the run the day the window closes or RQ changes."""
    from rq import Worker
    from rq.intermediate_queue import IntermediateQueue

    conn = queue.connection
    inter = IntermediateQueue(queue.key, connection=conn)
    maintenance = Worker([queue], connection=conn, name="maintenance")
    adm = dedup.enqueue("u", "tests.tasks.fail", "s", retry=Retry(max=1))
    _dequeue_into_intermediate(conn, queue)  # a worker dequeues it and dies
    inter.cleanup(maintenance, queue)  # first seen
    conn.set(inter.get_first_seen_key(adm.job_id), time.time() - 61)
    inter.cleanup(maintenance, queue)  # stuck over a minute: RQ retries it
    assert Job.fetch(adm.job_id, connection=conn).get_status() == JobStatus.QUEUED
    _dequeue_into_intermediate(conn, queue)  # a live worker dequeues it again ...
    inter.cleanup(maintenance, queue)  # ... and maintenance runs before the worker starts it
    assert Job.fetch(adm.job_id, connection=conn).get_status() == JobStatus.FAILED  # RQ's doing
    assert not dedup.enqueue("u", TASK, "x").admitted, "the worker is about to run the job: the key is taken"


def test_a_popped_job_whose_worker_died_after_creating_its_execution_is_not_held_forever(queue: Queue) -> None:
    """The step matrix on RQ 3 (two-queues k=50): the worker LPOPed the id, created the
    execution (a lease in rq:wip), and died before the horse wrote 'started'. RQ 2's
    cleanup fails such a job; RQ 3's settles only 'started' jobs and just drops the
    expired entry, leaving it 'queued' in no list. Either way the key must not stay
    taken: after RQ's cleanup, a cancel marks it and due_margin later it is free."""
    from rq import Worker
    from rq.executions import prepare_execution

    conn = queue.connection
    dedup = Deduplicator(queue, due_margin=0.3)
    adm = dedup.enqueue("u", TASK, "e")
    _pop_and_die(queue, Queue("other", connection=conn))
    worker = Worker([queue], connection=conn, name="died-after-prepare")
    prepare_execution(worker, Job.fetch(adm.job_id, connection=conn))  # the lease, then the worker dies
    assert dedup.is_running("u")
    assert worker.execution is not None
    rqstate.heartbeat(conn, queue, worker.execution, lease=-1)  # the lease runs out
    StartedJobRegistry(queue=queue).cleanup()  # RQ's maintenance
    dedup.cancel("u")  # finds it in no list: marks it (RQ 3), or it is already failed (RQ 2)
    time.sleep(0.5)
    assert not dedup.has_pending("u")
    assert dedup.enqueue("u", TASK, "after").admitted

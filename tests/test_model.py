"""A stateful model of the world (hypothesis), checked against RQ's own data.

Rules: a manual trigger, a scheduler tick (enqueue_many, immediate and future runs), time
passing, RQ's scheduler promoting due jobs (driven step by step, with a cancel between
its read and its write), a worker's two dequeue steps, success, failure, a worker killed
hard (its heartbeat stops; the lease expires as time passes), cancel, RQ's own cancel of a
running job (the horse runs on), an operator's sweep, a job hash deleted (its TTL ran out)
and SCRIPT FLUSH. Targeted scenarios, each one rule that builds its own running holder
(hypothesis turns a random subset of the rules off in each example, so sequences of four
plain rules are rare): a holder dies (with a follow-up or not) and its key is triggered or
swept; a holder with a follow-up ends; RQ cancels a running holder; a taken holder is
cancelled or replaced; a run due soon is cancelled while RQ's scheduler promotes it.
`make mutate-seeds` measures how often this model alone catches the
state-machine mutants of dedupkit/lua/mutants.toml (issue 10).

Time is the model's: "time passes by dt" moves every RQ score (scheduled run times,
heartbeat leases) dt seconds into the past, which is what a clock moving forward does to
every comparison the scripts and RQ make. No sleeps.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict
from datetime import datetime, timedelta, timezone

import fakeredis
import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from rq import Queue
from rq.executions import Execution
from rq.job import Job, JobStatus

from dedupkit import Deduplicator, EnqueueRequest
from dedupkit.keys import decode_key, encode_key

from . import rqstate
from .support import RedisServer

KEYS = ["a", "b", "c"]
# A longer soak: DEDUPKIT_SOAK=10 runs ten times the examples (README, "Tests").
SOAK = int(os.environ.get("DEDUPKIT_SOAK", "1"))
TASK = "tests.tasks.work"
LEASE = 60.0  # seconds a heartbeat keeps a running job alive, as RQ's 60 s of slack


def key_of(job_id: str) -> str:
    return decode_key(job_id.split("_")[1])


class World(RuleBasedStateMachine):
    """Subclasses set ``connect()``."""

    due_margin = 60.0  # the Deduplicator default (test_scheduler_race.py shows why it exists)

    def connect(self) -> redis.Redis:
        raise NotImplementedError

    def __init__(self) -> None:
        super().__init__()
        self.conn = self.connect()
        self.conn.flushall()
        self.queue = Queue("model", connection=self.conn)
        self.dedup = Deduplicator(self.queue, gc_budget=2, gc_min_age=0, due_margin=self.due_margin)
        self.admitted: dict[str, str] = {}  # job id -> key
        self.dequeued: list[str] = []  # ids a worker took from the list but has not started
        self.running: dict[str, tuple[Job, Execution]] = {}  # job id -> the worker's copy
        self.killed: set[str] = set()
        self.cancelled: set[str] = set()
        self.deleted: set[str] = set()
        self.lost: set[str] = set()  # dequeued by a worker that died before starting them

    # -- RQ's view -------------------------------------------------------------------

    def status_of(self, job_id: str) -> str | None:
        raw = self.conn.hget(f"rq:job:{job_id}", "status")
        return raw.decode() if raw else None

    def waiting(self) -> dict[str, set[str]]:
        """Per key, the deferred jobs RQ holds (follow-ups waiting for a running job)."""
        out: dict[str, set[str]] = defaultdict(set)
        for raw in self.conn.zrange(self.queue.deferred_job_registry.key, 0, -1):
            job_id = raw.decode()
            if self.status_of(job_id) == "deferred":
                out[key_of(job_id)].add(job_id)
        return out

    def runnable(self) -> dict[str, set[str]]:
        """Per key, the jobs RQ would still run (or is running), from RQ's data alone."""
        now = time.time()
        out: dict[str, set[str]] = defaultdict(set)
        listed = [j.decode() for j in self.conn.lrange(self.queue.key, 0, -1)]
        scheduled = [j.decode() for j in self.conn.zrange(self.queue.scheduled_job_registry.key, 0, -1)]
        # A worker runs what is in the list; RQ's scheduler re-queues whatever is in the
        # scheduled registry, whatever its status says, as long as the hash exists.
        for job_id in listed + scheduled + self.dequeued:
            if self.conn.exists(f"rq:job:{job_id}"):
                out[key_of(job_id)].add(job_id)
        for member, score in self.conn.zrange(self.queue.started_job_registry.key, 0, -1, withscores=True):
            job_id = member.decode().split(":")[0]
            if score > now:  # a horse with a live lease runs, whatever the hash says
                out[key_of(job_id)].add(job_id)
        for job_id, (_, execution) in self.running.items():
            # A live horse runs even after RQ's own cancel took its wip entry away; a killed
            # one's lease is then its execution's score less RQ's 60 s (rq/executions.py).
            score = self.conn.zscore(f"rq:executions:{job_id}", execution.id)
            if job_id not in self.killed or (score is not None and score - 60 > now):
                out[key_of(job_id)].add(job_id)
        return out

    # -- rules -----------------------------------------------------------------------

    @rule(key=st.sampled_from(KEYS), policy=st.sampled_from(["reject", "reject", "replace", "follow_up"]))
    def trigger(self, key: str, policy: str) -> None:
        before = self.runnable()[key] | self.waiting()[key]
        adm = self.dedup.enqueue(key, TASK, key, on_conflict=policy)
        if adm.admitted:
            assert adm.job_id is not None
            self.admitted[adm.job_id] = key
            if adm.replaced:
                self.cancelled.add(adm.replaced)
                assert adm.replaced in before
            elif adm.follow_up_of:
                assert before == {adm.follow_up_of}
                # README: a follow-up waits only behind a running holder (else not_running).
                assert adm.follow_up_of in self.running, f"follow-up behind {adm.follow_up_of}, not running"
            else:
                assert not before, f"admitted {adm.job_id} beside {before}"
        else:
            if not self._lost_holds(adm.job_id):
                assert before, f"key {key} free in RQ but refused: {adm}"
                assert adm.job_id in before
        self._no_follow_up_waits_behind_nothing(key)

    def _no_follow_up_waits_behind_nothing(self, key: str) -> None:
        """After a call that writes (admission, sweep), a follow-up whose holder is over has
        been released: RQ would wait for its 10-minute maintenance, or forever."""
        if self.waiting()[key]:
            assert self.runnable()[key], f"{key}: follow-up {self.waiting()[key]} deferred behind nothing"

    @precondition(lambda self: any(j not in self.killed for j in self.running))
    @rule(data=st.data())
    def follow_up_behind_a_running_job(self, data: st.DataObject) -> None:
        """A targeted trigger: the follow-up path (slot handover, release, coalescing) is
        where a random trigger rarely goes, and where the handover mutants live."""
        job_id = data.draw(st.sampled_from(sorted(j for j in self.running if j not in self.killed)))
        self.trigger(key_of(job_id), "follow_up")

    # -- targeted scenarios ------------------------------------------------------------
    # Hypothesis enables a random subset of the rules in each example (swarm testing), so
    # a sequence that needs four rules in order (trigger, dequeue, start, kill...) is rare:
    # `make mutate-seeds` found the release, handover and RQ-cancel mutants caught under
    # 0 to 5 seeds in 10. Each scenario below is one rule that builds its own running
    # holder, and the invariants are checked after each of its steps.

    def _check(self) -> None:
        self.at_most_one_runnable_job_per_key_and_status_agrees()
        self.nothing_admitted_is_lost()

    def _take(self, key: str, start: bool) -> str | None:
        """Make key's holder run (start) or sit dequeued but not started; a worker takes the
        list in order, so the jobs ahead of it run first. None when the holder is not in
        the list (scheduled, deferred, running already)."""
        if not self.dedup.status(key).pending:
            self.trigger(key, "reject")
        holder = self.dedup.status(key).job_id
        listed = [j.decode() for j in self.conn.lrange(self.queue.key, 0, -1)]
        if holder is None or holder not in listed:
            return holder if start and holder in self.running and holder not in self.killed else None
        for _ in range(listed.index(holder) + 1):
            self.worker_dequeues()
            if start or self.dequeued[-1] != holder:
                while self.dequeued:
                    self.worker_starts()
            self._check()
        taken = holder in self.running if start else holder in self.dequeued
        return holder if taken else None

    @rule(key=st.sampled_from(KEYS), with_follow_up=st.booleans(),
          then=st.sampled_from(["reject", "replace", "follow_up", "sweep"]))
    def holder_dies_and_its_key_is_triggered(self, key: str, with_follow_up: bool, then: str) -> None:
        """A holder (with or without a follow-up) loses its worker, its lease runs out, and
        its key is triggered or swept before RQ's maintenance: dedupkit alone must hand
        the slot on (to the follow-up, released onto the queue) or free it."""
        job_id = self._take(key, start=True)
        if job_id is None:
            return
        if with_follow_up:
            self.trigger(key, "follow_up")
            self._check()
        self.killed.add(job_id)
        self.time_passes(4000)  # past any lease RQ gives (the wip score and the executions score)
        self._check()
        if then == "sweep":
            self.operator_sweeps()
        else:
            self.trigger(key, then)

    @rule(key=st.sampled_from(KEYS), success=st.booleans(), then=st.sampled_from(["reject", "replace", "follow_up"]))
    def holder_with_a_follow_up_ends(self, key: str, success: bool, then: str) -> None:
        """A follow-up waits behind a running holder, which ends: RQ enqueues the follow-up,
        and the slot passes to it at the next call (and stays with it at the one after)."""
        job_id = self._take(key, start=True)
        if job_id is None:
            return
        self.trigger(key, "follow_up")
        self._check()
        follow = self.dedup.status(key).follow_up_job_id
        self._end(job_id, success)
        self._check()
        if follow is not None:  # RQ itself enqueued it: nothing waits for dedupkit's next call
            assert self.status_of(follow) == "queued", (follow, self.status_of(follow))
        for policy in ("reject", then):
            self.trigger(key, policy)
            self._check()

    @rule(key=st.sampled_from(KEYS), dies=st.booleans(), with_follow_up=st.booleans())
    def rq_cancels_a_running_holder(self, key: str, dies: bool, with_follow_up: bool) -> None:
        """RQ's own cancel of a running holder (its horse runs on, the wip entry is gone),
        then perhaps the horse dies and its lease runs out; the key is triggered."""
        job_id = self._take(key, start=True)
        if job_id is None or self.status_of(job_id) != "started":
            return
        if with_follow_up:
            self.trigger(key, "follow_up")
            self._check()
        Job.fetch(job_id, connection=self.conn).cancel()
        self.cancelled.add(job_id)
        self._check()
        if dies:
            self.killed.add(job_id)
            self.time_passes(4000)
            self._check()
        self.trigger(key, "reject")

    @rule(key=st.sampled_from(KEYS), taken=st.sampled_from(["started", "dequeued", "lost"]),
          then=st.sampled_from(["cancel", "replace"]))
    def holder_taken_then_cancelled_or_replaced(self, key: str, taken: str, then: str) -> None:
        """Cancel or replace a holder a worker has taken: running with a follow-up waiting
        behind it (cancel takes the follow-up first), dequeued but not started, or lost
        with its worker (dequeued, never started: freed a due margin after the cancel)."""
        job_id = self._take(key, start=taken == "started")
        if job_id is None:
            return
        if taken == "started":
            self.trigger(key, "follow_up")
            self._check()
        elif taken == "lost":
            self.dequeued.remove(job_id)
            self.lost.add(job_id)
            self._check()
        if then == "cancel":
            self._cancel(key)
        else:
            self.trigger(key, "replace")
        if taken == "lost":
            self._check()
            self.time_passes(61)  # past the mark's due margin

    @rule(key=st.sampled_from(KEYS), delay=st.sampled_from([5, 20, 29]))
    def scheduled_soon_and_cancelled_while_promoted(self, key: str, delay: int) -> None:
        """A run due within the due margin but not yet by the Redis clock, read by RQ's
        scheduler on a host 30 s ahead, and cancelled between that read and its write."""
        if not self.dedup.status(key).pending:
            self.scheduler_tick_one(key, delay)
            self._check()
        self._promote(30, between=key)

    def scheduler_tick_one(self, key: str, delay: int) -> None:
        at = datetime.now(timezone.utc) + timedelta(seconds=delay)
        adm = self.dedup.enqueue_at(at, key, TASK, key)
        if adm.admitted:
            assert adm.job_id is not None
            self.admitted[adm.job_id] = key

    @rule(delays=st.lists(st.sampled_from([None, 0, 20, 90, 3600]), min_size=1, max_size=4))
    def scheduler_tick(self, delays: list[int | None]) -> None:
        now = datetime.now(timezone.utc)
        requests = [EnqueueRequest(KEYS[i % len(KEYS)], TASK, (i,),
                                   at=None if d is None else now + timedelta(seconds=d))
                    for i, d in enumerate(delays)]
        for adm in self.dedup.enqueue_many(requests):
            if adm.admitted:
                assert adm.job_id is not None
                self.admitted[adm.job_id] = key_of(adm.job_id)

    @rule(dt=st.sampled_from([1, 15, 45, 61, 120, 4000]))
    def time_passes(self, dt: int) -> None:
        executions = self.conn.keys("rq:executions:*")  # each execution's own score ages too
        for zkey in (self.queue.scheduled_job_registry.key, self.queue.started_job_registry.key, *executions):
            for member, score in self.conn.zrange(zkey, 0, -1, withscores=True):
                self.conn.zadd(zkey, {member: score - dt})
        for job_id in self.lost:  # the adrift marks' times too (dk_lost)
            mark = self.conn.hget(f"rq:job:{job_id}", "dedupkit_adrift")
            if mark is not None:
                since, _, lost_from = mark.decode().rpartition("|")
                self.conn.hset(f"rq:job:{job_id}", "dedupkit_adrift", f"{since}|{float(lost_from) - dt}")
        now = time.time()
        for job_id, (_, execution) in self.running.items():  # live workers heartbeat meanwhile
            if job_id not in self.killed:
                self.conn.zadd(self.queue.started_job_registry.key, {execution.composite_key: now + LEASE})
                self.conn.zadd(f"rq:executions:{job_id}", {execution.id: now + LEASE + 60})

    def _promote(self, skew: int, between: str | None = None) -> None:
        """RQScheduler.enqueue_scheduled_jobs, step by step (rq 2.12 scheduler.py), on a
        host whose clock is ``skew`` seconds ahead of the Redis server's."""
        registry = self.queue.scheduled_job_registry
        job_ids = registry.get_jobs_to_schedule(int(time.time()) + skew)
        if between is not None:  # the race of DESIGN.md: a cancel between RQ's read and write
            self._cancel(between)
        with self.conn.pipeline() as pipe:
            for job in Job.fetch_many(job_ids, connection=self.conn):
                if job is not None:
                    self.queue._enqueue_job(job, pipeline=pipe, at_front=job.should_enqueue_at_front())
            for job_id in job_ids:
                registry.remove(job_id, pipeline=pipe)
            pipe.execute()

    @rule(skew=st.sampled_from([0, 30]))
    def rq_scheduler_promotes(self, skew: int) -> None:
        self._promote(skew)

    @rule(key=st.sampled_from(KEYS), skew=st.sampled_from([0, 30]))
    def rq_scheduler_promotes_with_a_cancel_in_between(self, key: str, skew: int) -> None:
        self._promote(skew, between=key)

    @precondition(lambda self: self.conn.llen(self.queue.key) > 0)
    @rule()
    def worker_dequeues(self) -> None:
        job_id = self.conn.lpop(self.queue.key)
        assert job_id is not None
        self.dequeued.append(job_id.decode())

    def _lost_holds(self, job_id: str | None) -> bool:
        """Whether a lost job may still hold its key: RQ never runs it, but dedupkit holds it
        as queued until a cancel or replace has marked it adrift and the mark's time (the
        due margin later) has passed: "<enqueued_at>|<lost from>" (_common.lua dk_lost)."""
        if job_id not in self.lost or self.status_of(job_id) != "queued":
            return False
        mark, enqueued_at = self.conn.hmget(f"rq:job:{job_id}", "dedupkit_adrift", "enqueued_at")
        if mark is None:
            return True
        since, _, lost_from = mark.decode().rpartition("|")
        return since != (enqueued_at or b"").decode() or float(lost_from) > time.time()

    @precondition(lambda self: bool(self.dequeued))
    @rule()
    def worker_dies_after_dequeue(self) -> None:
        """A worker pops an id and dies before starting it: with LPOP (no intermediate
        list) nothing in RQ will ever run it; it stays 'queued'."""
        self.lost.add(self.dequeued.pop(0))

    @precondition(lambda self: bool(self.dequeued))
    @rule()
    def worker_starts(self) -> None:
        job_id = self.dequeued.pop(0)
        job = Job.fetch(job_id, connection=self.conn) if self.conn.exists(f"rq:job:{job_id}") else None
        if job is None:
            return  # RQ's dequeue skips ids whose hash is gone
        with self.conn.pipeline() as pipe:
            execution = rqstate.create_execution(job, int(LEASE), pipe, "model")
            job.prepare_for_execution("model", pipe)
            pipe.execute()
        self.running[job_id] = (job, execution)

    @precondition(lambda self: any(j not in self.killed for j in self.running))
    @rule(success=st.booleans(), data=st.data())
    def worker_ends_job(self, success: bool, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(sorted(j for j in self.running if j not in self.killed)))
        self._end(job_id, success)

    def _end(self, job_id: str, success: bool) -> None:
        job, execution = self.running.pop(job_id)  # the worker's copy, even if the hash expired
        with self.conn.pipeline() as pipe:
            job.set_status(JobStatus.FINISHED if success else JobStatus.FAILED, pipeline=pipe)
            execution.delete(job, pipe)
            pipe.execute()
        self.queue.enqueue_dependents(job)  # as the worker does after success or failure

    @precondition(lambda self: any(j not in self.killed for j in self.running))
    @rule(data=st.data())
    def worker_killed_hard(self, data: st.DataObject) -> None:
        self.killed.add(data.draw(st.sampled_from(sorted(j for j in self.running if j not in self.killed))))

    @rule()
    def rq_maintenance(self) -> None:
        """RQ's worker maintenance: fail jobs whose lease expired, enqueue their dependents."""
        self.queue.started_job_registry.cleanup()
        # Killed jobs stay in self.running: runnable() reads their leases, which end by themselves.

    @rule(key=st.sampled_from(KEYS))
    def cancel(self, key: str) -> None:
        self._cancel(key)

    @precondition(lambda self: any(j not in self.killed and self.status_of(j) == "started" for j in self.running))
    @rule(data=st.data())
    def rq_cancels_a_running_job(self, data: st.DataObject) -> None:
        """RQ's own Job.cancel (say from its dashboard): status 'canceled', the wip entry
        gone, while the horse runs on and its heartbeat keeps the execution's score."""
        job_id = data.draw(st.sampled_from(sorted(j for j in self.running
                                                  if j not in self.killed and self.status_of(j) == "started")))
        Job.fetch(job_id, connection=self.conn).cancel()
        self.cancelled.add(job_id)

    @rule()
    def operator_sweeps(self) -> None:
        before = {k: self.runnable()[k] | self.waiting()[k] for k in KEYS}
        self.dedup.sweep()
        for key in KEYS:
            if before[key]:
                assert self.dedup.status(key).pending, f"sweep freed {key} while RQ holds {before[key]}"
            self._no_follow_up_waits_behind_nothing(key)

    def _cancel(self, key: str) -> None:
        """cancel(key) takes a waiting follow-up first, else the holder."""
        before = self.dedup.status(key)
        target = before.follow_up_job_id or before.job_id
        # A follow-up RQ still defers can always be withdrawn (nothing has taken it yet).
        must = before.follow_up_job_id is not None and self.status_of(before.follow_up_job_id) == "deferred"
        cancelled = self.dedup.cancel(key)
        assert cancelled or not must, f"cancel({key}) refused while follow-up {before.follow_up_job_id} waits"
        if cancelled and target == before.job_id:  # the holder itself: its slot is freed, not left to gc
            assert not self.conn.hexists(self.dedup.keys.slots, encode_key(key)), f"{key}'s slot kept after cancel"
        if cancelled:
            assert target is not None
            # RQ's scheduler promotes whatever id its registry holds, whatever the status.
            assert self.conn.zscore(self.queue.scheduled_job_registry.key, target) is None, f"{target} still scheduled"
            self.cancelled.add(target)
            assert self.status_of(target) == "canceled"
            assert target not in self.runnable()[key] | self.waiting()[key]

    @precondition(lambda self: bool(self.admitted))
    @rule(data=st.data())
    def job_hash_expires(self, data: st.DataObject) -> None:
        job_id = data.draw(st.sampled_from(sorted(self.admitted)))
        self.conn.delete(f"rq:job:{job_id}")
        self.deleted.add(job_id)

    @rule()
    def script_flush(self) -> None:
        self.conn.script_flush()

    # -- invariants ------------------------------------------------------------------

    @invariant()
    def at_most_one_runnable_job_per_key_and_status_agrees(self) -> None:
        runnable, waiting = self.runnable(), self.waiting()
        for key in KEYS:
            jobs, follow = runnable[key], waiting[key]
            assert len(jobs) <= 1, f"key {key} has {len(jobs)} jobs RQ would run: {jobs}"
            assert len(follow) <= 1, f"key {key} has {len(follow)} follow-ups: {follow}"
            status = self.dedup.status(key)
            if not (jobs or follow) and self._lost_holds(status.job_id):
                continue  # a lost job holds its key until its adrift mark's time (README)
            assert status.pending == bool(jobs or follow), f"{key}: status {status} but RQ holds {jobs} {follow}"
            if jobs:
                assert status.job_id in jobs
                assert status.follow_up_job_id in (follow or {None})
            elif follow:
                assert status.job_id in follow

    @invariant()
    def nothing_admitted_is_lost(self) -> None:
        for job_id in self.admitted:
            if job_id in self.deleted:
                continue
            state = self.status_of(job_id)
            assert state in ("queued", "scheduled", "deferred", "started", "finished", "failed", "canceled"), (
                job_id, state)
            if state == "canceled":
                assert job_id in self.cancelled, f"{job_id} canceled by nobody"

    def teardown(self) -> None:
        self.conn.close()


class FakeWorld(World):
    def connect(self) -> redis.Redis:
        return fakeredis.FakeRedis(server=fakeredis.FakeServer())


TestModelFakeredis = FakeWorld.TestCase
TestModelFakeredis.settings = settings(max_examples=100 * SOAK, stateful_step_count=30, deadline=None,
                                       suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture
def real_world(real_server: RedisServer) -> type[World]:
    class RealWorld(World):
        def connect(self) -> redis.Redis:
            return redis.Redis.from_url(real_server.url)

    return RealWorld


def test_model_on_real_redis(real_world: type[World]) -> None:
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(real_world, settings=settings(max_examples=20 * SOAK, stateful_step_count=30,
                                                            deadline=None,
                                                            suppress_health_check=[HealthCheck.too_slow]))


@pytest.mark.parametrize("backend", ["fake", "real"])
def test_model_replay_cancel_of_a_follow_up_between_promote_steps(backend: str, request: pytest.FixtureRequest) -> None:
    """The sequence hypothesis found on CI: the model once credited this cancel to the
    running holder, while cancel(key) (as documented) takes the waiting follow-up."""
    world_type: type[World] = FakeWorld if backend == "fake" else request.getfixturevalue("real_world")
    world = world_type()
    try:
        steps = [lambda: world.scheduler_tick(delays=[None]), world.worker_dequeues, world.worker_starts,
                 lambda: world.trigger(key="a", policy="follow_up"),
                 lambda: world.rq_scheduler_promotes_with_a_cancel_in_between(key="a", skew=0)]
        for step in steps:
            step()
            world.at_most_one_runnable_job_per_key_and_status_agrees()
            world.nothing_admitted_is_lost()
        follow_ups = [j for j in world.admitted if world.status_of(j) == "canceled"]
        assert len(follow_ups) == 1 and world.cancelled == set(follow_ups)
        assert world.dedup.status("a").state == "running"
    finally:
        world.teardown()

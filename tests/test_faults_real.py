"""Real concurrency and faults on a real redis-server with real rq workers."""

from __future__ import annotations

import multiprocessing as mp
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from rq import Queue
from rq.job import Job

from dedupkit import Deduplicator, RedisUnavailableError

from .snapshot import runnable_by_key, violations
from .support import RedisServer, RQWorker, wait_for

PROCS, OPS, KEYS = 8, 300, 50


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))


def _load(url: str, seed: int, ops: int, queue_name: str, out: Any, tolerate_outage: bool,
          ready: Any, done: Any) -> None:
    """``ops`` operations; with a ``done`` event, keep going (up to ``ops``) until it is set."""
    rng = random.Random(seed)
    dedup = Deduplicator(Queue(queue_name, connection=_client(url)))
    counts: Counter[str] = Counter()
    admitted: list[tuple[str, float]] = []
    ready.wait()
    for i in range(ops):
        if done is not None and done.is_set():
            break
        if done is not None and i == ops - 1:
            counts["ran_out_of_ops"] += 1
        key = f"k{rng.randrange(KEYS)}"
        roll = rng.random()
        try:
            if roll < 0.85:
                if roll < 0.6:
                    adm = dedup.enqueue(key, "tests.tasks.work", "load", rng.uniform(0, 0.03))
                else:
                    adm = dedup.enqueue_in(timedelta(seconds=rng.uniform(0, 2)), key, "tests.tasks.work", "load")
                counts["admitted" if adm.admitted else "conflict"] += 1
                if adm.recovered in ("dead", "gone"):
                    counts["recovered"] += 1
                if adm.admitted:
                    assert adm.job_id is not None
                    admitted.append((adm.job_id, time.time()))
            else:
                counts["cancelled" if dedup.cancel(key) else "not_cancelled"] += 1
        except RedisUnavailableError:
            if not tolerate_outage:
                raise
            counts["unavailable"] += 1
            time.sleep(0.05)
    out.put((counts, admitted))


def _run_load(url: str, queue_name: str, procs: int, ops: int, tolerate_outage: bool = False,
              during: Callable[[], None] | None = None) -> tuple[Counter[str], list[tuple[str, float]]]:
    """Start ``procs`` load processes together; with ``during``, they run until it returns."""
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    ready = ctx.Barrier(procs + 1)
    done = ctx.Event() if during else None
    workers = [ctx.Process(target=_load, args=(url, seed, ops, queue_name, out, tolerate_outage, ready, done))
               for seed in range(procs)]
    for p in workers:
        p.start()
    ready.wait(timeout=60)
    if during:
        assert done is not None
        during()
        done.set()
    results = [out.get(timeout=240) for _ in workers]
    for p in workers:
        p.join(30)
        assert p.exitcode == 0
    counts: Counter[str] = Counter()
    admitted: list[tuple[str, float]] = []
    for c, a in results:
        counts.update(c)
        admitted += a
    return counts, admitted


class Monitor(threading.Thread):
    """Samples RQ's lists and registries (atomically) until stopped; records violations."""

    def __init__(self, conn: redis.Redis, queue: Queue) -> None:
        super().__init__(daemon=True)
        self.conn, self.queue = conn, queue
        self.samples, self.found, self.errors = 0, [], 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                bad = violations(self.conn, self.queue)
            except redis.exceptions.ConnectionError:
                self.errors += 1
                time.sleep(0.05)
                continue
            self.samples += 1
            if bad:
                self.found.append(bad)
            time.sleep(0.005)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(10)


def test_load_8_processes_50_keys_with_2_real_workers(real_server: RedisServer, real_redis: redis.Redis,
                                                      workers: Callable[..., RQWorker]) -> None:
    queue = Queue("load", connection=real_redis)
    workers("load", scheduler=True)
    workers("load")
    monitor = Monitor(_client(real_server.url), queue)
    monitor.start()
    started = time.monotonic()
    counts, admitted = _run_load(real_server.url, "load", PROCS, OPS)
    elapsed = time.monotonic() - started
    dedup = Deduplicator(queue)
    wait_for(lambda: not any(dedup.has_pending(f"k{i}") for i in range(KEYS)), 90, interval=0.5,
             what="the workers to drain the queue")
    monitor.stop()
    print(f"\nload: {PROCS} processes x {OPS} ops in {elapsed:.1f}s, {dict(counts)}; "
          f"monitor samples {monitor.samples}, violations {len(monitor.found)}")
    assert monitor.samples > 50
    assert monitor.found == []
    assert counts["admitted"] == len(admitted) > KEYS and counts["conflict"] > 0
    # Nothing lost: every admitted job ran to the end or was cancelled by a caller.
    statuses = Counter(Job.fetch(j, connection=real_redis).get_status().value for j, _ in admitted)
    assert set(statuses) <= {"finished", "canceled"}, statuses
    assert statuses["canceled"] <= counts["cancelled"]
    assert real_redis.llen("test:runs:load") == statuses["finished"]


def test_redis_restart_mid_load_with_aof(tmp_path: Any) -> None:
    server = RedisServer("--appendonly", "yes", "--appendfsync", "always")
    try:
        restarted_at: list[float] = []

        def restart() -> None:
            time.sleep(1.0)
            server.stop()
            time.sleep(1.0)  # down: clients must get RedisUnavailableError, not hang
            server.start()
            restarted_at.append(time.time())
            time.sleep(1.0)  # up again: clients must recover without a restart of their own

        counts, admitted = _run_load(server.url, "restart", 4, 20_000, tolerate_outage=True, during=restart)
        conn = _client(server.url)
        queue = Queue("restart", connection=conn)
        print(f"\nrestart: {dict(counts)}")
        assert counts["ran_out_of_ops"] == 0, "the clients ran through the whole outage"
        assert counts["unavailable"] > 0, "the outage was seen as RedisUnavailableError"
        assert any(t > restarted_at[0] for _, t in admitted), "admissions resumed after the restart"
        assert violations(conn, queue) == {}
        dedup = Deduplicator(queue)
        for key, jobs in runnable_by_key(conn, queue).items():
            assert dedup.status(key).job_id in jobs, "the slot agrees with RQ after the restart"
        assert conn.info("persistence")["aof_enabled"] == 1
    finally:
        server.close()


def test_unresponsive_redis_times_out_with_the_typed_error() -> None:
    """A server that accepts connections and never answers: the socket timeout fires."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        conn = redis.Redis(port=port, socket_timeout=0.5, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
        dedup = Deduplicator(Queue("x", connection=conn))
        for call in (lambda: dedup.enqueue("u", "tests.tasks.work"), lambda: dedup.status("u"),
                     lambda: dedup.cancel("u")):
            started = time.monotonic()
            with pytest.raises(RedisUnavailableError) as err:
                call()
            assert isinstance(err.value.error, redis.exceptions.TimeoutError)
            assert time.monotonic() - started < 2.0


@pytest.mark.parametrize("skew", [-30, 30])
def test_client_clock_skew_neither_frees_nor_blocks(real_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch,
                                                    skew: int) -> None:
    """The scripts use the Redis server's TIME; a client's clock 30 s off changes nothing."""
    from . import rqstate

    queue = Queue("skew", connection=real_redis)
    dedup = Deduplicator(queue)
    live = dedup.enqueue("live", "tests.tasks.work")
    rqstate.start(real_redis, queue, live.job_id, lease=20)  # a live lease, 20 s left on the server's clock
    done = dedup.enqueue("done", "tests.tasks.work")
    real_redis.hset(f"rq:job:{done.job_id}", "status", "finished")

    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + skew)
    monkeypatch.setattr(time, "time_ns", lambda: int((real_time() + skew) * 1e9))
    assert not dedup.enqueue("live", "tests.tasks.work").admitted, "a live slot is not freed early"
    assert dedup.is_running("live")
    assert dedup.enqueue("done", "tests.tasks.work").admitted, "a free slot is not blocked"

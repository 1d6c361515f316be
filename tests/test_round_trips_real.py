"""One request per decision, counted on a real redis-server with MONITOR (commands that
MONITOR tags as run from Lua are the script's own and cross no network)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta

import redis
from rq import Queue

from dedupkit import Deduplicator, EnqueueRequest

from . import rqstate
from .support import RedisServer


def _requests(server: RedisServer, action: Callable[[], object]) -> list[str]:
    seen: list[dict[str, str]] = []
    ready = threading.Event()
    watcher = redis.Redis.from_url(server.url)
    marker = redis.Redis.from_url(server.url)
    marker.ping()  # connect (and handshake) before MONITOR starts

    def watch() -> None:
        with watcher.monitor() as m:
            ready.set()
            for cmd in m.listen():
                seen.append(cmd)
                if "STOP-MARKER" in cmd["command"]:
                    return

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    ready.wait(5)
    time.sleep(0.2)
    action()
    marker.echo("STOP-MARKER")
    thread.join(10)
    return [c["command"].split()[0].upper() for c in seen
            if c.get("client_type") != "lua" and "STOP-MARKER" not in c["command"]]


def test_each_call_is_one_request(real_server: RedisServer, real_redis: redis.Redis) -> None:
    dedup = Deduplicator(Queue("rt", connection=real_redis))
    dedup.enqueue("warm", "tests.tasks.work")  # loads the scripts (NOSCRIPT, then EVAL)
    dedup.status("warm")
    dedup.cancel("warm")
    assert _requests(real_server, lambda: dedup.enqueue("a", "tests.tasks.work")) == ["EVALSHA"]
    assert _requests(real_server, lambda: dedup.enqueue("a", "tests.tasks.work")) == ["EVALSHA"]  # conflict
    assert _requests(real_server, lambda: dedup.enqueue_in(timedelta(hours=1), "b", "tests.tasks.work")) == [
        "EVALSHA"]
    assert _requests(real_server, lambda: dedup.status("a")) == ["EVALSHA"]
    assert _requests(real_server, lambda: dedup.status_many(range(1200))) == ["EVALSHA"] * 3  # 500 per call
    assert _requests(real_server, lambda: dedup.cancel("a")) == ["EVALSHA"]
    # The conflict policies are decided inside the same script: still one request.
    assert _requests(real_server, lambda: dedup.enqueue("b", "tests.tasks.work", on_conflict="replace")) == [
        "EVALSHA"]
    running = dedup.enqueue("c", "tests.tasks.work")
    rqstate.start(real_redis, Queue("rt", connection=real_redis), running.job_id)
    assert _requests(real_server, lambda: dedup.enqueue("c", "tests.tasks.work", on_conflict="follow_up")) == [
        "EVALSHA"]
    batch = [EnqueueRequest(f"k{i}", "tests.tasks.work") for i in range(300)]
    assert _requests(real_server, lambda: dedup.enqueue_many(batch, batch_size=100)) == ["EVALSHA"] * 3

"""How many jobs RQ holds for a queue in each pending state (``dedupkit status QUEUE``, the
metrics), and the jobs waiting in RQ 3's rate limits (also read by ``adopt``).

Every key comes from RQ's own objects (queue, registries, ``RateLimitRegistry``), so RQ 3's
``RQ_KEY_PREFIX`` moves them all.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, cast

import redis

from . import scripts
from .follow_ups import waiting as waiting_follow_ups
from .keys import RateLimitRegistry

if TYPE_CHECKING:
    from .deduplicator import Deduplicator

# RQ's pending states, as the CLI and the metrics name them. ``ready`` (RQ 3's
# ready_to_enqueue: follow-ups on their way to the queue) and ``rate_limited`` (RQ 3: waiting
# for a slot of their RateLimit) are always 0 on RQ 2, which has neither.
PENDING_STATES = ("queued", "scheduled", "started", "deferred", "ready", "rate_limited")


def rate_limited_jobs(connection: redis.Redis, job_prefix: str, page: int = 500) -> Iterator[tuple[str, str]]:
    """(job id, origin queue name) of every job waiting in an RQ 3 rate limit; nothing on RQ 2.

    A rate limit groups jobs of any queue, so each waiting id's ``origin`` is read (pipelined,
    ``page`` at a time): the cost grows with the number of waiting jobs. An id whose hash has
    no origin (gone) is left out, as RQ's own promotion drops it.
    """
    if RateLimitRegistry is None:
        return
    with scripts.redis_errors():
        registries = RateLimitRegistry.all(connection)
    for registry in registries:
        ids: list[str] = []
        with scripts.redis_errors():
            for member, _ in connection.zscan_iter(registry.rate_limited_key, count=page):
                ids.append(member.decode())
                if len(ids) >= page:
                    yield from _with_origins(connection, job_prefix, ids)
                    ids = []
            yield from _with_origins(connection, job_prefix, ids)


def _with_origins(connection: redis.Redis, job_prefix: str, ids: Sequence[str]) -> Iterator[tuple[str, str]]:
    if not ids:
        return
    with connection.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hget(job_prefix + job_id, "origin")
        origins = cast(list[bytes | None], pipe.execute())
    for job_id, origin in zip(ids, origins, strict=True):
        if origin is not None:
            yield job_id, origin.decode()


def queue_sizes(deduplicators: Iterable[Deduplicator]) -> list[dict[str, int]]:
    """Per Deduplicator: ``slots``, ``follow_ups`` (those still waiting: ``follow_ups.waiting``)
    and RQ's jobs in each of PENDING_STATES.

    One pipelined round trip per queue of O(1) commands (HLEN, LLEN, ZCARD), two for the
    follow-ups; on RQ 3 with
    rate limits in use, plus one scan of the jobs waiting in them, shared by the queues of
    one connection (``rate_limited_jobs``).
    """
    dedups = list(deduplicators)
    waiting: dict[int, Counter[str]] = {}
    sizes = []
    for dedup in dedups:
        k, conn = dedup.keys, dedup.connection
        if id(conn) not in waiting:
            waiting[id(conn)] = Counter(origin for _, origin in rate_limited_jobs(conn, k.job_prefix))
        ready = getattr(dedup.queue, "ready_job_registry", None)  # RQ 3
        with scripts.redis_errors(), conn.pipeline(transaction=False) as pipe:
            pipe.hlen(k.slots)
            pipe.llen(k.queue)
            pipe.zcard(k.scheduled)
            pipe.zcard(k.started)
            pipe.zcard(k.deferred)
            if ready is not None:
                pipe.zcard(ready.key)
            counts = [int(n) for n in pipe.execute()]
        slots, *rq_counts = counts
        follow_ups = waiting_follow_ups(dedup)  # what waits, not the hash's length
        if ready is None:
            rq_counts.append(0)
        rq_counts.append(waiting[id(conn)][dedup.queue.name])
        sizes.append({"slots": slots, "follow_ups": follow_ups, **dict(zip(PENDING_STATES, rq_counts, strict=True))})
    return sizes

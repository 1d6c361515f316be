"""Operators' tools on a queue's slots: list them, sweep ended ones, adopt pre-dedupkit jobs.

The CLI's ``list``, ``sweep`` and ``adopt`` (and ``Deduplicator.slots/sweep/adopt``); not
on any hot path. ``requeue`` (failed jobs back through admission) is in ``requeue``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, cast

from rq.utils import now as rq_now
from rq.utils import utcformat

from . import legacy, protocol, scripts, sizes
from .errors import DedupkitError, InvalidRequestError
from .keys import decode_key, encode_key, namespace_base
from .models import SlotStatus

if TYPE_CHECKING:
    from .deduplicator import Deduplicator

logger = logging.getLogger("dedupkit")


def slots(dedup: Deduplicator, cursor: int = 0, count: int = 100) -> tuple[int, list[tuple[str, str, SlotStatus]]]:
    """See ``Deduplicator.slots``."""
    with scripts.redis_errors():
        cursor, page = _hscan(dedup, cursor, count)
    items = sorted(page.items())
    keys = [decode_key(field.decode()) for field, _ in items]
    statuses = dedup.status_many(keys)
    return int(cursor), [(key, job_id.decode(), status)
                         for key, (_, job_id), status in zip(keys, items, statuses, strict=True)]


def drop_old_gc_index(dedup: Deduplicator) -> int:
    """Delete the gc zset ``<ns>:gc:<q>`` an earlier dedupkit kept (one member per slot;
    nothing reads it since the gc walks the slots hash). Returns how many members it had."""
    key = f"{namespace_base(dedup.queue, dedup.namespace)}:gc:{dedup.queue.name}"
    conn = dedup.connection
    with scripts.redis_errors():
        if conn.type(key) not in (b"zset", "zset"):
            return 0
        members = int(conn.zcard(key))
        conn.delete(key)
    logger.info("Deleted %s, the gc index of an earlier dedupkit version (%d members): nothing reads it now",
                key, members)
    return members


def sweep(dedup: Deduplicator, batch_size: int = 100) -> int:
    """See ``Deduplicator.sweep``."""
    k, contract = dedup.keys, protocol.SWEEP
    drop_old_gc_index(dedup)
    deleted, cursor = 0, 0
    while True:
        with scripts.redis_errors():
            cursor, page = _hscan(dedup, cursor, batch_size)
        if page:
            deleted += protocol.swept(dedup._scripts.call(
                contract, contract.key_list(k), contract.arg_list(k, {"now_text": utcformat(rq_now())}, page)))
        if int(cursor) == 0:
            return deleted


def adopt(dedup: Deduplicator, id_pattern: str, *, batch_size: int = 500) -> dict[str, int]:
    """See ``Deduplicator.adopt``."""
    if id_pattern.count("{key}") != 1:
        raise InvalidRequestError("id_pattern must contain {key} exactly once")
    before, _, after = id_pattern.partition("{key}")
    regex = re.compile(
        re.escape(before).replace(r"\*", ".*") + "(?P<key>.+?)" + re.escape(after).replace(r"\*", ".*"))
    counts: dict[str, int] = {"adopted": 0, "already": 0, "held": 0, "not_pending": 0, "unmatched": 0}
    pairs: list[str] = []

    def flush() -> None:
        for reply in legacy.adopt_pairs(dedup, pairs):
            counts[reply.outcome] += 1
        pairs.clear()

    for job_id in rq_job_ids(dedup, batch_size):
        match = regex.fullmatch(job_id)
        try:
            field = encode_key(match.group("key")) if match else None
        except DedupkitError:
            field = None
        if field is None:
            counts["unmatched"] += 1
            continue
        pairs += (field, job_id)
        if len(pairs) >= 2 * batch_size:
            flush()
    if pairs:
        flush()
    logger.info("adopt %r on queue %s: %s", id_pattern, dedup.queue.name, counts)
    return counts


def _hscan(dedup: Deduplicator, cursor: int, count: int) -> tuple[int, dict[bytes, bytes]]:
    next_cursor, page = dedup.connection.hscan(dedup.keys.slots, cursor, count=count)
    return int(next_cursor), cast(dict[bytes, bytes], page)


def rq_job_ids(dedup: Deduplicator, page: int) -> Iterator[str]:
    conn, k = dedup.connection, dedup.keys
    with scripts.redis_errors():
        start = 0
        while ids := cast(list[bytes], conn.lrange(k.queue, start, start + page - 1)):
            yield from (i.decode() for i in ids)
            start += page
        # ids a worker has dequeued and not yet marked started (status still 'queued')
        yield from (i.decode() for i in cast(list[bytes], conn.lrange(k.intermediate, 0, -1)))
        ready = getattr(dedup.queue, "ready_job_registry", None)  # RQ 3: dependents on their way to the queue
        for zkey in (k.scheduled, k.started, k.deferred, *([ready.key] if ready is not None else [])):
            for member, _ in conn.zscan_iter(zkey, count=page):
                # started registry members are <job id>:<execution id>
                yield member.decode().split(":")[0]
    # RQ 3: jobs waiting for a slot of their RateLimit (status rate_limited), held like queued ones
    yield from (job_id for job_id, origin in sizes.rate_limited_jobs(conn, k.job_prefix, page)
                if origin == dedup.queue.name)

"""How many follow-ups wait: the entries of ``<ns>:followups:<q>`` whose job RQ still defers.

An entry stays in the follow-ups hash after its job has been released, has run, or was
cancelled, until the next write on that key resolves it (``_common.lua``, ``dk_resolve``).
So the hash's length over-counts; a gauge must count what waits: the follow-up ids that
are in RQ's deferred registry of the queue.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from . import scripts

if TYPE_CHECKING:
    from .deduplicator import Deduplicator


def waiting(dedup: Deduplicator) -> int:
    """Follow-ups still waiting for their running holder (status deferred in RQ).

    Two round trips: HVALS of the follow-ups hash (one entry per key that was given a
    follow-up and not touched since), then one pipelined ZSCORE per entry in RQ's
    deferred registry. O(entries), never a scan of RQ's registries.
    """
    conn, k = dedup.connection, dedup.keys
    with scripts.redis_errors():
        ids = cast(list[bytes], conn.hvals(k.followups))
        if not ids:
            return 0
        with conn.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.zscore(k.deferred, job_id)
            return sum(score is not None for score in pipe.execute())

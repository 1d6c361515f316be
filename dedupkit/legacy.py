"""Old-style jobs: those the code dedupkit replaces enqueued itself, found as it found them.

The replaced functions found a user's jobs by scanning RQ's queue and registries for ids
``<prefix>_<user id>_…`` and enqueued with ``queue.enqueue(f, job_id=...)``, outside any
slot. While such jobs may be pending (during a deploy, before ``adopt``), the drop-in
functions of ``job_utils`` scan for them too, and classify each by RQ's own status.

The scan reads the whole queue list and registries of one queue: O(jobs on the queue), as
the replaced code was. It is a migration aid (``job_utils.configure(legacy_scan=False)``
turns it off once no old-style job can be pending), never used by ``Deduplicator``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from . import operators, protocol, scripts
from .keys import encode_key, normalize_key
from .models import JobState, SlotStatus

if TYPE_CHECKING:
    from .deduplicator import Deduplicator

FINAL = frozenset({"finished", "failed", "stopped", "canceled", "created"})
"""RQ statuses of a job that will not run (again); every other status, unknown ones
included (a newer RQ's), is read as pending, as dedupkit's scripts read it."""

PAGE = 500


@dataclass(frozen=True)
class LegacyJob:
    """A pending job found by its id, and RQ's own status of it ('queued', 'started', ...)."""

    job_id: str
    rq_status: str

    def as_status(self, key: str) -> SlotStatus:
        """As a SlotStatus, so its has_* flags read as a slot's do."""
        try:
            state = JobState.from_rq(self.rq_status)
        except ValueError:
            state = JobState.QUEUED  # a status this dedupkit does not know: pending, shown as queued
        return SlotStatus(key, self.job_id, state)


def id_prefixes(user_id: object, prefix: str) -> tuple[str, ...]:
    """The id prefixes the replaced code gave a user's jobs: ``<prefix>_<user id>_`` as it
    wrote them, and ``<prefix>_<encoded user id>_`` as ``generate_job_id`` writes them."""
    raw = normalize_key(user_id)
    return tuple(dict.fromkeys((f"{prefix}_{raw}_", f"{prefix}_{encode_key(raw)}_")))


def _ids(dedup: Deduplicator) -> Iterator[str]:
    """Every job id on the queue: its list, the ids a worker has just dequeued, the
    scheduled, started, deferred and (RQ 3) ready registries, and (RQ 3) the jobs waiting
    for a rate limit whose origin is this queue."""
    yield from operators.rq_job_ids(dedup, PAGE)


def scan(dedup: Deduplicator, user_id: object, prefix: str) -> list[LegacyJob]:
    """The user's pending jobs whose ids start as the replaced code's did, each with RQ's
    status, in the order found (queue first). Raises RedisUnavailableError."""
    starts = id_prefixes(user_id, prefix)
    with scripts.redis_errors():
        found = list(dict.fromkeys(i for i in _ids(dedup) if i.startswith(starts)))
        if not found:
            return []
        with dedup.connection.pipeline(transaction=False) as pipe:
            for job_id in found:
                pipe.hmget(dedup.keys.job_key(job_id), "status", "origin")
            fields = cast(list[list[bytes | None]], pipe.execute())
    jobs = []
    for job_id, (status, origin) in zip(found, fields, strict=True):
        # No status or origin: a bare heartbeat hash or a vanished job (rq#1450), not pending.
        if status is None or origin is None or origin.decode() != dedup.queue.name:
            continue
        if status.decode() not in FINAL:
            jobs.append(LegacyJob(job_id, status.decode()))
    return jobs


def adopt(dedup: Deduplicator, user_id: object, jobs: Sequence[LegacyJob]) -> list[str]:
    """Give the user's slot to the first of ``jobs`` that is still pending, in one adopt.lua
    call (which takes only a free slot, and only for a pending job). Returns each job's outcome."""
    if not jobs:
        return []
    field = encode_key(user_id)
    return [reply.outcome for reply in adopt_pairs(dedup, [part for job in jobs for part in (field, job.job_id)])]


def adopt_pairs(dedup: Deduplicator, pairs: Sequence[str]) -> list[protocol.AdoptReply]:
    """One adopt.lua call over ``field, job id, ...``: each pair 'adopted', 'already', 'held' or 'not_pending'."""
    k, contract = dedup.keys, protocol.ADOPT
    replies = dedup._scripts.call(contract, contract.key_list(k), contract.arg_list(k, {}, pairs))
    return [protocol.AdoptReply.decode(reply) for reply in replies]

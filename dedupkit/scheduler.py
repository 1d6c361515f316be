"""Periodic per-key scheduling on top of Deduplicator.

Every ``interval`` seconds the Scheduler reads schedule entries (key, next run time,
function, args/kwargs) from a source the application supplies, and admits the ones due
before the next tick with ``Deduplicator.enqueue_many``: at most two script calls per batch,
never one round trip per key. Overdue entries are enqueued now, the others scheduled at their
run time (``rq worker --with-scheduler`` runs them). A key whose job is still pending is
skipped, and the skip is logged with the holder's status. Each batch first reads its keys'
status (``status_many``, one read-only call) so that RQ jobs are built only for keys that
may be free (``precheck``); the admission decides atomically either way.

    def entries():
        for user in users_with_automation_enabled():
            yield ScheduleEntry(user.id, user.next_run, "app.tasks.process", (user.id,))

    Scheduler(Deduplicator(queue), entries, interval=60).run()

Several replicas may run at once. Admission is atomic, so the one-job-per-key guarantee
never depends on which replica ticks; a Redis lease only keeps the replicas from all
doing the full work. One replica leads; if it dies its lease (interval / 2) expires and
another takes over within one interval (at most 2/3 of it, for intervals of 1 s or more).

A tick too big for one process (a million admissions is about RQ's own ``enqueue_many``
time for as many jobs) can be split: run N schedulers, each with its own ``name`` (so
each leads its own lease) and a source that yields only its shard of the keys,
``shard_of(key, N) == i``. The shards never share a key, and if they did, admission would
still let one job in per key.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from types import FrameType
from typing import Any

import redis

from .admission import held
from .deduplicator import Deduplicator
from .errors import (
    DedupkitError,
    EvictionPolicyError,
    InvalidKeyError,
    NaiveDatetimeError,
    RedisUnavailableError,
    ScriptError,
)
from .keys import Key, normalize_key
from .lease import Lease, scheduler_lease_key
from .models import Admission, EnqueueRequest

logger = logging.getLogger("dedupkit.scheduler")

# The precheck reads a batch only while the previous batch of the tick found at least this
# share of its keys pending. Measured over 1,000,000 keys (benchmarks/results/batch_tick.md):
# the read costs ~41 us a key, and skipping a pending key instead of building its job and
# letting the script refuse it saves ~75 us, so the read pays from about a third pending.
PRECHECK_MIN_PENDING = 0.25

@dataclass(frozen=True)
class ScheduleEntry:
    """One key's next run, as the application's source yields it.

    ``next_run`` None or in the past means overdue: enqueue now. It must carry a time
    zone: a naive datetime is a bad entry (NaiveDatetimeError, logged and counted), since
    RQ and Python read naive times an hour apart in winter. ``kwargs`` are read as ``rq.Queue.enqueue`` reads them
    (job_timeout, result_ttl, meta, ... are RQ's; the rest go to ``func``). ``cooldown``: None
    for the Deduplicator's, or this key's (see ``Deduplicator.enqueue``); a key cooling down
    is skipped and logged like a pending one.
    """

    key: Key
    next_run: datetime | None
    func: Any
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    cooldown: timedelta | None = None


@dataclass
class TickResult:
    """What one tick did. ``aborted`` names why it stopped early, else None."""

    entries: int = 0
    admitted: int = 0
    skipped: int = 0
    not_due: int = 0
    errors: int = 0
    batches: int = 0
    duration: float = 0.0
    aborted: str | None = None
    admissions: list[tuple[Key, Admission]] = field(default_factory=list, repr=False)

    @property
    def ok(self) -> bool:
        return self.aborted is None


EntrySource = Callable[[], Iterable[ScheduleEntry]]


def shard_of(key: Key, shards: int) -> int:
    """Which of ``shards`` schedulers owns ``key``: 0 .. shards - 1, the same in every
    process and Python run (CRC-32 of the normalized key, not ``hash``). 123 and "123" are
    one key, as everywhere in dedupkit. Raises InvalidKeyError for a key dedupkit refuses
    and ValueError for a ``shards`` that is not a positive int."""
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ValueError(f"shards must be a positive int, not {shards!r}")
    return zlib.crc32(normalize_key(key).encode("utf-8")) % shards


def _valid_key(key: Key) -> bool:
    """False for a key enqueue_many will refuse (it reports that as the request's error)."""
    try:
        normalize_key(key)
    except InvalidKeyError:
        return False
    return True


def _abort_reason(exc: Exception) -> str:
    if isinstance(exc, ScriptError):
        return "script failed"
    if isinstance(exc, EvictionPolicyError):
        return "eviction policy"
    return "redis error"


def _fmt(when: datetime) -> str:
    return when.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


class Scheduler:
    """Admit each key's next run every ``interval`` seconds; see the module docstring.

    ``source``: called once per tick; returns an iterable of ScheduleEntry (it may be a
    generator: entries are read lazily, ``batch_size`` at a time).
    ``horizon``: seconds ahead; entries due later are left for a later tick, so a slot is
    not held for hours by a far-off run. Defaults to ``interval``.
    ``subject``: the word used for a key in the log ("user": "... for user 123 ...").
    ``leader_lease``: elect one ticking replica through a Redis lease (default True).
    ``lease_ttl``: lease length in seconds, default ``interval / 2`` (at least 0.5 s); the
    lease is renewed every ``lease_ttl / 3`` and between batches.
    ``precheck``: read each batch's statuses first (one read-only call) and build jobs only
    for keys that may be free; on a steady schedule most keys are pending, and building
    their jobs is most of a tick (default True). A batch is read only while the previous
    batch of the tick found at least a quarter of its keys pending (the first always is), so
    a tick that mostly admits does not pay for reads that skip nothing. Admission stays
    atomic either way; a skip is logged and counted in ``stats()`` as the conflict it stands for.
    """

    def __init__(self, dedup: Deduplicator, source: EntrySource, *, interval: float = 60.0,
                 batch_size: int = 500, horizon: float | None = None, subject: str = "user",
                 name: str = "default", leader_lease: bool = True, lease_ttl: float | None = None,
                 precheck: bool = True, log: logging.Logger | None = None) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.dedup = dedup
        self.source = source
        self.interval = float(interval)
        self.batch_size = batch_size
        self._horizon = horizon
        self.subject = subject
        self.name = name
        self.leader_lease = leader_lease
        self._lease_ttl = lease_ttl
        self.precheck = precheck
        self.log = log or logger
        self.lease = Lease(dedup.connection, scheduler_lease_key(dedup.namespace, dedup.queue.name, name))
        self.token = self.lease.token
        self.lease_key = self.lease.key
        self._stop = threading.Event()
        self._leading = False
        self._pending_share = 1.0

    def __repr__(self) -> str:
        return f"Scheduler({self.dedup!r}, interval={self.interval}, name={self.name!r})"

    @property
    def horizon(self) -> float:
        return self.interval if self._horizon is None else float(self._horizon)

    @property
    def lease_ttl(self) -> float:
        return max(0.5, self.interval / 2) if self._lease_ttl is None else float(self._lease_ttl)

    @property
    def is_leader(self) -> bool:
        return self._leading

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        """Ask ``run`` to return after the current batch. Safe from any thread or signal handler."""
        self._stop.set()

    # -- one tick ------------------------------------------------------------------

    def tick(self) -> TickResult:
        """Read the source once and admit every entry due within the horizon.

        Never raises for one bad entry, a script error, a server refusal or Redis going
        away: a request's own error is logged and counted (``errors``); anything that
        fails a whole script call ends the tick early (``aborted``), never turning into
        one call per key.
        """
        started = time.monotonic()
        result = TickResult()
        try:
            self._tick(result)
        except RedisUnavailableError as exc:
            result.aborted = "redis refused" if exc.code else "redis unavailable"
            self.log.error("Redis is unavailable; tick abandoned, retrying in %.0f s: %s", self.interval, exc)
        except (DedupkitError, redis.exceptions.RedisError) as exc:
            # A script failing as a whole (not one request: those come back as answers) or
            # a server that may evict keys: the next tick tries again, it does not split the batch.
            result.aborted = _abort_reason(exc)
            self.log.error("Tick abandoned, retrying in %.0f s: %s", self.interval, exc)
        except Exception as exc:  # the application's source failed; the next tick retries
            result.aborted = "source failed"
            self.log.exception("Reading the schedule entries failed; tick abandoned: %s", exc)
        result.duration = time.monotonic() - started
        self.log.info(
            "Scheduler tick: %d entries, %d admitted, %d skipped (pending), %d not due, %d errors, "
            "%d batches in %.3f s%s", result.entries, result.admitted, result.skipped, result.not_due,
            result.errors, result.batches, result.duration, f" (aborted: {result.aborted})" if result.aborted else "")
        return result

    def _tick(self, result: TickResult) -> None:
        self._pending_share = 1.0  # the first batch of a tick is always read
        for batch in self._batches(result):
            if self._stop.is_set():
                result.aborted = "stopping"
                return
            if result.batches and not self._keep_lease():
                result.aborted = "lost the leader lease"
                self.log.warning("Lost the scheduler lease %s mid-tick; another replica leads", self.lease_key)
                return
            self._admit(batch, result)
            result.batches += 1

    def _batches(self, result: TickResult) -> Iterator[list[tuple[EnqueueRequest, datetime | None]]]:
        now = datetime.now(timezone.utc)
        limit = now + timedelta(seconds=self.horizon)
        batch: list[tuple[EnqueueRequest, datetime | None]] = []
        for entry in self.source():
            result.entries += 1
            try:
                request, when = self._request(entry, now, limit)
            except (TypeError, ValueError, AttributeError) as exc:
                result.errors += 1
                self.log.error("Skipping a bad schedule entry %r: %s", entry, exc)
                continue
            if request is None:
                result.not_due += 1
                continue
            batch.append((request, when))
            if len(batch) >= self.batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def _request(self, entry: ScheduleEntry, now: datetime,
                 limit: datetime) -> tuple[EnqueueRequest | None, datetime | None]:
        if not isinstance(entry, ScheduleEntry):
            raise TypeError(f"expected a ScheduleEntry, got {type(entry).__name__}")
        when = entry.next_run
        if when is not None and not isinstance(when, datetime):
            raise TypeError(f"next_run must be a datetime or None, not {type(when).__name__}")
        if when is not None and when.utcoffset() is None:
            raise NaiveDatetimeError(when, "next_run")
        if when is not None and when > limit:
            return None, None
        at = when if when is not None and when > now else None
        return EnqueueRequest(entry.key, entry.func, tuple(entry.args), dict(entry.kwargs), at=at,
                              cooldown=entry.cooldown), at

    def _skip_pending(self, batch: list[tuple[EnqueueRequest, datetime | None]],
                      result: TickResult) -> list[tuple[EnqueueRequest, datetime | None]]:
        """Skip the keys whose job is pending, read with one status_many call.

        Only a shortcut, and it opens no window: nothing is written on what this read says.
        A skipped key is left as it is, which is what the admission would have done with a
        pending key; if its job ends between this read and the admission, the key is free
        and the next tick admits it (the same as a job ending just after a conflict). A key
        read as free goes to the admission script, which reads the slot again and decides
        atomically: if a job took it in between, the answer is a conflict. So a key never
        gets a second job through the precheck, and at most one tick passes before a freed
        key is admitted. A skip is logged as the conflict it stands for and counted as one
        in ``Deduplicator.stats()`` (one HINCRBY per batch), so the counters and metrics read
        the same with the precheck on or off.
        """
        readable = [i for i, (request, _) in enumerate(batch) if _valid_key(request.key)]
        try:
            statuses = self.dedup.status_many([batch[i][0].key for i in readable], batch_size=len(readable) or 1)
        except ScriptError as exc:
            self.log.error("Reading the status of a batch of %d failed (%s); admitting it all", len(readable), exc)
            return batch
        pending = {i: status for i, status in zip(readable, statuses, strict=True) if status.pending}
        rest = []
        for i, (request, at) in enumerate(batch):
            if i in pending:
                self._record(request, at, held(pending[i]), result)
            else:
                rest.append((request, at))
        self.dedup._run(self.dedup._count_flow("conflict", len(pending)))
        return rest

    def _admit(self, batch: list[tuple[EnqueueRequest, datetime | None]], result: TickResult) -> None:
        size, skipped = len(batch), result.skipped
        try:
            self._admit_batch(batch, result)
        finally:
            self._pending_share = (result.skipped - skipped) / size

    def _admit_batch(self, batch: list[tuple[EnqueueRequest, datetime | None]], result: TickResult) -> None:
        # A batch that mostly admits (a first tick, new users) is not worth the read; the
        # share pending in the previous batch (skips and conflicts alike) decides.
        if self.precheck and self._pending_share >= PRECHECK_MIN_PENDING:
            batch = self._skip_pending(batch, result)
            if not batch:
                return
        requests = [r for r, _ in batch]
        # The script isolates a request that meets damaged data (its Admission carries the
        # error); anything that fails the whole call (a refusal, an outage, a script
        # error) would fail each key alone too, so it ends the tick instead.
        admissions = self.dedup.enqueue_many(requests, batch_size=len(requests), raise_errors=False)
        for (request, at), admission in zip(batch, admissions, strict=True):
            self._record(request, at, admission, result)

    def _record(self, request: EnqueueRequest, at: datetime | None, admission: Admission,
                result: TickResult) -> None:
        result.admissions.append((request.key, admission))
        who = f"{self.subject} {request.key}"
        if admission.error is not None:
            result.errors += 1
            self.log.error("Could not schedule job for %s: %s", who, admission.error)
        elif admission.admitted:
            result.admitted += 1
            if at is None:
                self.log.info("Scheduled job %s for %s at %s (due: queued now)", admission.job_id, who,
                              _fmt(datetime.now(timezone.utc)))
            else:
                self.log.info("Scheduled job %s for %s at %s", admission.job_id, who, _fmt(at))
        elif admission.reason == "cooldown":
            result.skipped += 1
            self.log.info("Skipping job scheduling for %s - cooling down after job %s: next run possible at %s",
                          who, admission.job_id, _fmt(admission.retry_after) if admission.retry_after else "?")
        else:
            result.skipped += 1
            self.log.info("Skipping job scheduling for %s - job already pending: %s", who,
                          admission.status.to_dict())

    # -- leader lease --------------------------------------------------------------

    def acquire_lease(self) -> bool:
        """Take or renew the leader lease; True while this replica leads.

        Raises RedisUnavailableError when Redis cannot be reached or refuses (a replica
        after failover answers READONLY), redis-py's RedisError for anything else; either
        way this replica no longer counts itself as leader.
        """
        ttl_ms = int(self.lease_ttl * 1000)
        try:
            if self._leading and self.lease.renew(ttl_ms):
                return True
            leading = self.lease.take(ttl_ms)
            if not leading:  # our own lease from before, e.g. after a Redis hiccup
                leading = self.lease.renew(ttl_ms)
        except (RedisUnavailableError, redis.exceptions.RedisError):
            self._leading = False
            raise
        if leading != self._leading:
            self.log.info("Scheduler %s %s the lease %s", self.token,
                          "took" if leading else "lost", self.lease_key)
        self._leading = leading
        return leading

    def release_lease(self) -> None:
        """Give the lease up (on a clean stop) so another replica takes over at once."""
        if not self._leading:
            return
        self._leading = False
        try:
            self.lease.release()
        except (RedisUnavailableError, redis.exceptions.RedisError) as exc:
            self.log.warning("Could not release the scheduler lease (it expires by itself): %s", exc)

    def _keep_lease(self) -> bool:
        # A tick called by hand (not from run) does not take part in the election.
        if not self.leader_lease or not self._leading:
            return True
        return self.acquire_lease()

    # -- the loop ------------------------------------------------------------------

    def run(self, *, max_ticks: int | None = None, handle_signals: bool = True) -> int:
        """Tick every ``interval`` seconds until ``stop()``, SIGTERM or SIGINT.

        A stop request ends the run after the current batch. Returns the number of ticks
        done. Signal handlers are installed only from the main thread and restored on
        return. Never raises for Redis outages, refusals (READONLY after a failover, OOM,
        ...) or other Redis errors, in the lease or in a tick: they are logged, and the
        lease is tried again after a pause that doubles up to ``interval``.
        """
        restore = self._install_signal_handlers() if handle_signals else {}
        ticks = 0
        next_tick = time.monotonic()
        redis_down = False
        backoff = 0.0
        self.log.info("Scheduler %s started: interval %.0f s, batch size %d, horizon %.0f s%s", self.token,
                      self.interval, self.batch_size, self.horizon,
                      f", lease {self.lease_key} ({self.lease_ttl:.0f} s)" if self.leader_lease else "")
        try:
            while not self._stop.is_set() and (max_ticks is None or ticks < max_ticks):
                leading = True
                if self.leader_lease:
                    try:
                        leading = self.acquire_lease()
                        if redis_down:
                            self.log.info("Redis is reachable again")
                        redis_down, backoff = False, 0.0
                    except (RedisUnavailableError, redis.exceptions.RedisError) as exc:
                        if not redis_down:
                            self.log.error("Redis is unavailable or refusing; cannot take the scheduler lease, "
                                           "retrying: %s", exc)
                        redis_down = True
                        backoff = min(self.interval, max(backoff * 2, self.lease_ttl / 3))
                        self._stop.wait(backoff)
                        continue
                now = time.monotonic()
                if leading and now >= next_tick:
                    self.tick()
                    ticks += 1
                    next_tick = now + self.interval
                wait = next_tick - time.monotonic()
                if self.leader_lease:
                    wait = min(wait, self.lease_ttl / 3)
                self._stop.wait(max(0.01, wait))
        finally:
            if self.leader_lease:
                self.release_lease()
            for sig, handler in restore.items():
                signal.signal(sig, handler)
            self.log.info("Scheduler %s stopped after %d ticks", self.token, ticks)
        return ticks

    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}

        def handle(signum: int, frame: FrameType | None) -> None:
            self.log.info("Received %s; stopping after the current batch", signal.Signals(signum).name)
            self.stop()

        old: dict[int, Any] = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            old[sig] = signal.signal(sig, handle)
        return old


__all__ = ["EntrySource", "ScheduleEntry", "Scheduler", "TickResult", "shard_of"]

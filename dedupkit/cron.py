"""RQ's cron without overlap: ``rq cron`` jobs admitted through a Deduplicator.

RQ's own cron (``rq cron CONFIG``, RQ 2.4+) enqueues a job on every tick, even while the
previous run is still queued or running: a job that runs longer than its interval runs
beside itself. In the same config file, register a job with ``dedupkit.cron.register``
instead of ``rq.cron.register``, and each tick is admitted for a dedup key: while that
key's previous run is pending (queued, scheduled, deferred or running) the tick is skipped,
logged and counted.

    # cron_config.py, run with:  rq cron cron_config.py  (or rq cron -u redis://... cron_config.py)
    from dedupkit import cron
    from myapp.tasks import refresh_index, sync_account

    cron.register(refresh_index, "default", interval=60)                  # key "cron:myapp.tasks.refresh_index"
    for account in (1, 2, 3):                                              # one key per argument set
        cron.register(sync_account, "default", args=(account,), interval=300, per_args=True)

How it hooks in. RQ's ``CronScheduler`` loads the config file, then calls each of its
``CronJob``s' ``enqueue(connection)`` when due; that method is where RQ calls
``Queue.enqueue``. ``register`` adds a ``DedupCronJob`` (a ``CronJob`` whose ``enqueue``
admits through ``Deduplicator.enqueue``) to the scheduler that is loading the file: the
one ``CronScheduler.load_config_from_file`` frame found on the call stack, or the one
passed as ``scheduler=``. Nothing in RQ is patched; jobs registered with
``rq.cron.register`` in the same file keep RQ's behaviour.

The key is ``cron:<name>`` (``name`` defaults to the function's dotted path, as in RQ 3),
``cron:<name>:<args as JSON>`` with ``per_args=True``, or the ``key=`` given. Two cron jobs
with one key (the same function registered twice without ``per_args``, say) share one slot:
one's pending run skips the other's ticks.

Each tick's outcome is counted in Redis (``<namespace>:cron:<queue>``, a hash of
``admitted:<name>`` / ``skipped:<name>`` -> count, incremented after the admission in a
second round trip) and on the job object (``DedupCronJob.admitted`` / ``.skipped``);
``counts(queue)`` reads the hash, so does ``dedupkit cron QUEUE`` and the metrics
collector. Skips are logged at INFO on ``rq.cron.dedupkit``, a child of ``rq cron``'s own
logger, so they appear in its output beside RQ's "Enqueued job" lines.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

import rq.defaults
from redis import Redis
from rq import Queue
from rq.cron import CronJob, CronScheduler
from rq.defaults import DEFAULT_RESULT_TTL
from rq.job import Job

from . import callables
from .deduplicator import Deduplicator
from .errors import InvalidRequestError, RedisUnavailableError
from .keys import Key, cron_counts_key, normalize_key
from .models import Admission
from .scripts import redis_errors

try:  # RQ 3 (and 2.x from 2.11 or so) keeps a per-name history of the jobs each cron job spawned
    _cron_job_registry: Any = importlib.import_module("rq.cron_job_registry")
except ImportError:  # pragma: no cover - RQ 2
    _cron_job_registry = None
_HISTORY_LIMIT: int = getattr(rq.defaults, "DEFAULT_CRON_JOB_HISTORY_LIMIT", 0)
_HISTORY_TTL: int = getattr(rq.defaults, "DEFAULT_CRON_JOB_HISTORY_TTL", 0)

OUTCOMES = ("admitted", "skipped")
# RQ 3's CronJob takes a name (several jobs may share one); RQ 2's has none.
_RQ_NAMES = "name" in inspect.signature(CronJob.__init__).parameters
# What CronScheduler.load_config_from_file calls a config file given by absolute path.
_CONFIG_MODULE_PREFIX = "rq_cron_config_"


class DedupCronJob(CronJob):
    """A ``rq.cron.CronJob`` whose ticks are admitted through a Deduplicator.

    RQ's scheduler drives it as any CronJob (``should_run``, ``enqueue``,
    ``set_enqueue_time``, ``to_dict``); ``enqueue`` admits the run for ``key`` and returns
    the new job, or None when the tick was skipped because the key's previous run is
    pending. Either way RQ then sets the next tick one interval (or cron step) later:
    a skipped tick is not retried.
    """

    def __init__(self, queue_name: str, func: Callable[..., Any], *, key: Key, name: str = "",
                 namespace: str = "dedupkit", job_id_prefix: str = "job", allow_eviction: bool = False,
                 log: logging.Logger | None = None, **options: Any) -> None:
        if _RQ_NAMES:
            super().__init__(queue_name, func=func, name=name, **options)
        else:
            super().__init__(queue_name, func=func, **options)
            self.name = name or self.func_name
        self.key = normalize_key(key)
        self.namespace = namespace
        self.job_id_prefix = job_id_prefix
        self.allow_eviction = allow_eviction
        self.log = log or logging.getLogger("rq.cron.dedupkit")
        self.admitted = 0
        self.skipped = 0
        self._dedup: Deduplicator | None = None

    def deduplicator(self, connection: Redis) -> Deduplicator:
        """The Deduplicator of this job's queue on ``connection`` (built once, kept)."""
        if self._dedup is None or self._dedup.connection is not connection:
            self._dedup = Deduplicator(Queue(self.queue_name, connection=connection), namespace=self.namespace,
                                       job_id_prefix=self.job_id_prefix, allow_eviction=self.allow_eviction)
        return self._dedup

    # RQ's CronJob.enqueue always returns a Job; a skipped tick has none. RQ's scheduler
    # discards the value (CronScheduler.enqueue_jobs), so None reaches only direct callers.
    def enqueue(self, connection: Redis) -> Job | None:  # type: ignore[override]
        """Admit this tick's run for ``key``: the new Job, or None (skipped: a run is pending).

        Raises what ``Deduplicator.enqueue`` raises (RedisUnavailableError,
        EvictionPolicyError, ...); in ``rq cron`` that ends the process, as an error of
        RQ's own enqueue does there.
        """
        dedup = self.deduplicator(connection)
        # args/kwargs passed by name, as RQ's CronJob does, so the function's own keyword
        # arguments may share names with RQ's job options.
        admission = dedup.enqueue(self.key, self.func, args=self.args, kwargs=self.kwargs, **self.job_options)
        self._count(dedup, admission)
        if not admission.admitted:
            self.log.info("Skipping cron job %s for key %s - job already pending: %s", self.name, self.key,
                          admission.status.to_dict())
            return None
        job = admission.job
        assert job is not None  # an admitted Admission carries its job
        self._record_history(connection, job)
        self.log.info("Enqueued job %s (%s) to queue %s for key %s", job.id, self.func_name, self.queue_name,
                      self.key)
        return job

    # The tick is decided once the admission returns; the two writes below only report it.
    # Redis failing them (a blip between two round trips) is logged, not raised: raising
    # would end ``rq cron`` over a run that was admitted and will run.

    def _count(self, dedup: Deduplicator, admission: Admission) -> None:
        outcome = "admitted" if admission.admitted else "skipped"
        if admission.admitted:
            self.admitted += 1
        else:
            self.skipped += 1
        try:
            with redis_errors():
                dedup.connection.hincrby(cron_counts_key(dedup.queue, self.namespace), f"{outcome}:{self.name}", 1)
        except RedisUnavailableError as exc:
            self.log.warning("Could not count the %s tick of cron job %s in Redis: %s", outcome, self.name, exc)

    def _record_history(self, connection: Redis, job: Job) -> None:
        """Where RQ has the history (RQ 3, late 2.x), record the run where RQ's cron records
        its own (``CronJob.get_job_ids``, RQ's cron job registry), so RQ's monitoring sees
        dedupkit's runs."""
        if _cron_job_registry is None or job.enqueued_at is None:
            return
        stamp = job.enqueued_at.timestamp()
        try:
            with redis_errors(), connection.pipeline() as pipe:
                pipe.zadd(self.job_history_key, {job.id: stamp})
                pipe.zremrangebyrank(self.job_history_key, 0, -(_HISTORY_LIMIT + 1))
                pipe.expire(self.job_history_key, _HISTORY_TTL)
                _cron_job_registry.add(self.name, pipe, enqueue_timestamp=stamp)
                pipe.execute()
        except RedisUnavailableError as exc:
            self.log.warning("Could not record job %s in RQ's history of cron job %s: %s", job.id, self.name, exc)

    def to_dict(self) -> dict[str, Any]:
        """RQ's monitoring record of this cron job, with its dedup key."""
        data: dict[str, Any] = super().to_dict()
        data["dedup_key"] = self.key
        return data


def register(func: Callable[..., Any], queue_name: str, args: tuple[Any, ...] | None = None,
             kwargs: dict[str, Any] | None = None, interval: int | None = None, cron: str | None = None,
             job_timeout: int | None = None, result_ttl: int = DEFAULT_RESULT_TTL, ttl: int | None = None,
             failure_ttl: int | None = None, meta: dict[str, Any] | None = None,
             webhooks: Sequence[Any] | None = None, name: str = "", *, key: Key | None = None,
             per_args: bool = False, namespace: str = "dedupkit", job_id_prefix: str = "job",
             allow_eviction: bool = False, scheduler: CronScheduler | None = None) -> DedupCronJob:
    """Register ``func`` as a cron job of ``rq cron`` that never runs beside its own pending run.

    The arguments up to ``name`` are ``rq.cron.register``'s (``interval`` in seconds, or a
    ``cron`` expression; ``name`` defaults to the function's dotted path). Then:
    ``key``: the dedup key (default ``cron:<name>``); ``per_args``: one key per argument
    set, ``cron:<name>:<[args, kwargs] as JSON>`` (the arguments must be JSON-serializable;
    not with ``key``); ``namespace``/``job_id_prefix``/``allow_eviction``: the
    Deduplicator's. ``scheduler``: the CronScheduler to add the job to; by default the
    one loading the calling config file (``rq cron CONFIG``).

    Returns the DedupCronJob. Raises InvalidRequestError (no scheduler to add to, ``key``
    with ``per_args``, arguments that are not JSON, a function a worker cannot import),
    InvalidKeyError (a bad or too long key), InvalidRequestError or ValueError for a bad
    ``namespace`` or ``job_id_prefix``, and what RQ's CronJob raises for bad
    schedules (ValueError: both or neither of ``interval`` and ``cron``).
    """
    if not callable(func) or isinstance(func, str):
        raise InvalidRequestError(f"func must be a callable, as for rq.cron.register, not {type(func).__name__}")
    callables.check_importable(func)
    module = getattr(func, "__module__", None) or ""
    if module.startswith(_CONFIG_MODULE_PREFIX):
        raise InvalidRequestError(
            f"func {func.__name__} is defined in the cron config file itself ({module}): an RQ worker "
            "imports the job's function by its dotted path and cannot import the config file by that name. "
            "Define it in a module the workers can import")
    if key is not None and per_args:
        raise InvalidRequestError("pass key= or per_args=True, not both")
    target = scheduler if scheduler is not None else _loading_scheduler()
    options = {"args": args, "kwargs": kwargs, "interval": interval, "cron": cron, "job_timeout": job_timeout,
               "result_ttl": result_ttl, "ttl": ttl, "failure_ttl": failure_ttl, "meta": meta,
               "webhooks": webhooks}
    job_name = name or f"{func.__module__}.{func.__name__}"
    job = DedupCronJob(queue_name, func, key=_key_for(job_name, key, per_args, args, kwargs), name=job_name,
                       namespace=namespace, job_id_prefix=job_id_prefix, allow_eviction=allow_eviction,
                       log=target.log.getChild("dedupkit"), **options)
    job.deduplicator(target.connection)  # a bad namespace or job id prefix fails here, not at the first tick
    jobs = target.get_jobs()
    jobs.append(job)
    if job not in target.get_jobs():  # a CronScheduler whose get_jobs() is a copy would drop it silently
        raise InvalidRequestError(f"cannot add a cron job to {type(target).__name__}: get_jobs() is not its list")
    every = f"every {interval} seconds" if interval else f"with cron schedule '{cron}'"
    target.log.info("Registered '%s' to run on %s %s, one pending run per dedup key %s", job.func_name,
                    queue_name, every, job.key)
    return job


def _key_for(name: str, key: Key | None, per_args: bool, args: tuple[Any, ...] | None,
             kwargs: dict[str, Any] | None) -> Key:
    if key is not None:
        return key
    if not per_args:
        return f"cron:{name}"
    try:
        text = json.dumps([list(args or ()), kwargs or {}], sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise InvalidRequestError(f"per_args=True needs JSON-serializable args and kwargs ({exc}); "
                                  "pass key= for this cron job instead") from exc
    return f"cron:{name}:{text}"


def _loading_scheduler() -> CronScheduler:
    """The CronScheduler whose ``load_config_from_file`` is running the calling config file."""
    loader = CronScheduler.load_config_from_file.__code__
    frame: FrameType | None = sys._getframe(1)
    try:
        while frame is not None:
            if frame.f_code is loader:
                owner = frame.f_locals.get("self")
                if isinstance(owner, CronScheduler):
                    return owner
            frame = frame.f_back
    finally:
        del frame
    raise InvalidRequestError(
        "dedupkit.cron.register found no CronScheduler loading this config file: call it from the config file "
        "given to `rq cron CONFIG`, or pass scheduler= (a rq.cron.CronScheduler)")


def counts(queue: Queue, *, namespace: str = "dedupkit") -> dict[str, dict[str, int]]:
    """Ticks admitted and skipped per cron job name on ``queue``, from Redis (every process's).

    One HGETALL. ``{"myapp.tasks.refresh_index": {"admitted": 3, "skipped": 7}}``.
    Raises RedisUnavailableError.
    """
    with redis_errors():
        raw: dict[Any, Any] = queue.connection.hgetall(cron_counts_key(queue, namespace))
    result: dict[str, dict[str, int]] = {}
    for field, value in raw.items():
        outcome, _, name = (field.decode() if isinstance(field, bytes) else field).partition(":")
        if outcome in OUTCOMES:
            result.setdefault(name, dict.fromkeys(OUTCOMES, 0))[outcome] = int(value)
    return dict(sorted(result.items()))


__all__ = ["OUTCOMES", "DedupCronJob", "counts", "register"]

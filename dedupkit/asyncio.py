"""``AsyncDeduplicator``: the Deduplicator's guarantee for asyncio apps (FastAPI, Starlette, Quart).

    from redis.asyncio import Redis
    from rq import Queue
    from dedupkit.asyncio import AsyncDeduplicator

    dedup = AsyncDeduplicator(Queue("emails", connection=sync_redis), connection=Redis.from_url(url))
    adm = await dedup.enqueue(user_id, "app.tasks.process", user_id)

The same operations as ``Deduplicator`` (``core``'s flows, one script call per decision),
sent over a ``redis.asyncio.Redis``. The ``rq.Queue`` gives the queue's name, serializer,
job class and options; it is never used for I/O. RQ's own synchronous calls that a few
paths need (the stop command of ``cancel(stop_running=True)``, RQ 3's rate limit
registry for ``rate_limit=`` jobs) run in a worker thread on a redis-py connection built
from ``connection``'s settings, or on ``rq_connection`` when given.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, TypeVar

import redis
from rq import Queue

from . import scripts, steps
from .admission import Prepared
from .core import DEFAULT_RETENTION, DedupCore
from .errors import InvalidRequestError
from .keys import Key
from .models import Admission, EnqueueRequest, OnConflict, SlotStatus

T = TypeVar("T")

# redis.asyncio connection settings that mean the same to a redis-py connection.
_SHARED_SETTINGS = ("host", "port", "db", "username", "password", "path", "socket_timeout",
                    "socket_connect_timeout", "client_name", "ssl_certfile", "ssl_keyfile", "ssl_ca_certs",
                    "ssl_cert_reqs", "ssl_check_hostname")


class AsyncDeduplicator(DedupCore):
    """``Deduplicator`` on redis.asyncio: the same methods, as coroutines, with the same
    results and errors (see ``dedupkit.Deduplicator`` for each).

    ``queue``: an ``rq.Queue`` (name, serializer, job class, options; never used for I/O).
    ``connection``: a ``redis.asyncio.Redis`` on the queue's Redis. ``rq_connection``: a
    redis-py ``Redis`` for RQ's own synchronous calls (see the module docstring); by
    default one is built from ``connection``'s host, port, db and credentials when first
    needed. The other options are ``Deduplicator``'s. A ``Queue(is_async=False)`` is
    refused: running a job inline would block the event loop; use ``Deduplicator`` there.
    The operators' tools (slots, sweep, adopt, requeue) stay on ``Deduplicator``.
    """

    def __init__(self, queue: Queue, *, connection: Any, rq_connection: redis.Redis | None = None,
                 namespace: str = "dedupkit", job_id_prefix: str = "job", due_margin: float = 60.0,
                 gc_budget: int = 2, gc_min_age: float = 60.0, allow_eviction: bool = False,
                 min_replicas: int = 0, replica_timeout: float = 1.0, cooldown: timedelta | None = None,
                 retention: timedelta = DEFAULT_RETENTION) -> None:
        super().__init__(queue, namespace=namespace, job_id_prefix=job_id_prefix, due_margin=due_margin,
                         gc_budget=gc_budget, gc_min_age=gc_min_age, allow_eviction=allow_eviction,
                         min_replicas=min_replicas, replica_timeout=replica_timeout, cooldown=cooldown,
                         retention=retention)
        if not queue.is_async:
            raise InvalidRequestError("AsyncDeduplicator cannot run jobs inline (Queue(is_async=False)); "
                                      "use Deduplicator")
        if not callable(getattr(connection, "register_script", None)) or not hasattr(connection, "connection_pool"):
            raise InvalidRequestError(f"connection must be a redis.asyncio.Redis, not {type(connection).__name__}")
        self.connection = connection
        self._rq_connection = rq_connection
        self._scripts = scripts.AsyncScripts(connection)

    def _blocking_connection(self) -> redis.Redis:
        if self._rq_connection is None:
            kwargs = self.connection.connection_pool.connection_kwargs
            self._rq_connection = redis.Redis(**{k: kwargs[k] for k in _SHARED_SETTINGS if k in kwargs})
        return self._rq_connection

    async def _run(self, flow: steps.Flow[T]) -> T:
        return await steps.run_async(flow, self._scripts, self.connection, self._blocking_connection)

    # -- admission -----------------------------------------------------------------

    async def enqueue(self, key: Key, func: Any, *args: Any, on_conflict: OnConflict | str = OnConflict.REJECT,
                      cooldown: timedelta | None = None, **kwargs: Any) -> Admission:
        """See ``Deduplicator.enqueue``."""
        return await self._run(self._enqueue_flow(EnqueueRequest(key, func, args, kwargs, on_conflict=on_conflict,
                                                                 cooldown=cooldown)))

    async def enqueue_at(self, when: datetime, key: Key, func: Any, *args: Any,
                         on_conflict: OnConflict | str = OnConflict.REJECT,
                         cooldown: timedelta | None = None, **kwargs: Any) -> Admission:
        """See ``Deduplicator.enqueue_at``."""
        return await self._run(self._timed_flow("when", when, datetime, EnqueueRequest(
            key, func, args, kwargs, on_conflict=on_conflict, cooldown=cooldown)))

    async def enqueue_in(self, delta: timedelta, key: Key, func: Any, *args: Any,
                         on_conflict: OnConflict | str = OnConflict.REJECT,
                         cooldown: timedelta | None = None, **kwargs: Any) -> Admission:
        """See ``Deduplicator.enqueue_in``."""
        return await self._run(self._timed_flow("delta", delta, timedelta, EnqueueRequest(
            key, func, args, kwargs, on_conflict=on_conflict, cooldown=cooldown)))

    async def enqueue_many(self, requests: Iterable[EnqueueRequest], *, batch_size: int = 500,
                           raise_errors: bool = True) -> list[Admission]:
        """See ``Deduplicator.enqueue_many``."""
        return await self._run(self._enqueue_many_flow(requests, batch_size, raise_errors))

    async def _admit(self, batch: list[Prepared]) -> list[Admission]:
        return await self._run(self._admit_flow(batch))

    # -- reading -------------------------------------------------------------------

    async def status(self, key: Key) -> SlotStatus:
        """See ``Deduplicator.status``."""
        return (await self.status_many([key]))[0]

    async def status_many(self, keys: Iterable[Key], *, batch_size: int = 500) -> list[SlotStatus]:
        """See ``Deduplicator.status_many``."""
        return await self._run(self._status_many_flow(keys, batch_size))

    async def is_running(self, key: Key) -> bool:
        return (await self.status(key)).has_running_job

    async def is_scheduled(self, key: Key) -> bool:
        return (await self.status(key)).has_scheduled_job

    async def is_queued(self, key: Key) -> bool:
        return (await self.status(key)).has_queued_job

    async def has_pending(self, key: Key) -> bool:
        return (await self.status(key)).pending

    async def stats(self) -> dict[str, int]:
        """See ``Deduplicator.stats``."""
        return await self._run(self._stats_flow())

    # -- cancelling ----------------------------------------------------------------

    async def cancel(self, key: Key, *, stop_running: bool = False) -> bool:
        """See ``Deduplicator.cancel``."""
        return await self._run(self._cancel_flow(key, stop_running))


__all__ = ["AsyncDeduplicator"]

"""The scheduler's leader lease: one Redis key that one replica holds at a time.

SET NX PX takes it; lease_renew.lua and lease_release.lua renew and give it up only if
this replica's token is still the value, so a replica whose lease expired cannot extend
or delete the next leader's.
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass

import redis

from . import protocol, scripts


def scheduler_lease_key(namespace: str, queue_name: str, name: str) -> str:
    """The Redis key of a scheduler's leader lease (see lua/lease_renew.lua)."""
    return f"{namespace}:scheduler:{queue_name}:{name}:leader"


@dataclass(frozen=True)
class _LeaseKeys:
    lease: str


class Lease:
    """A leader lease on ``key`` for this process (``token``: host, pid and a random part)."""

    def __init__(self, connection: redis.Redis, key: str) -> None:
        self.connection = connection
        self.key = key
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._keys = _LeaseKeys(key)
        self._scripts = scripts.Scripts(connection, protocol.LEASE_SCRIPTS)

    def _call(self, contract: protocol.Contract, **values: object) -> bool:
        return protocol.lease_answer(self._scripts.call(contract, contract.key_list(self._keys),
                                                        contract.arg_list(self._keys, values)))

    def renew(self, ttl_ms: int) -> bool:
        """Extend the lease to ``ttl_ms`` from now if this replica holds it."""
        return self._call(protocol.LEASE_RENEW, token=self.token, lease_ms=ttl_ms)

    def take(self, ttl_ms: int) -> bool:
        """Take the lease if nobody holds it (SET NX PX)."""
        with scripts.redis_errors():
            return bool(self.connection.set(self.key, self.token, nx=True, px=ttl_ms))

    def release(self) -> bool:
        """Give the lease up if this replica holds it."""
        return self._call(protocol.LEASE_RELEASE, token=self.token)

"""The demo's rq worker class when Redis is the embedded fakeredis server.

RQ 3's Worker asks the server ``CLIENT INFO`` at start for its address; redis-py cannot
parse fakeredis's reply (ValueError), and the worker would die before its first job.
This class reads the address as RQ does and falls back to 'unknown', as RQ itself does
for a server without CLIENT SETNAME. Nothing else changes. A real redis-server needs none
of this: the demo uses RQ's own Worker there.
"""

from __future__ import annotations

from typing import Any

from rq import Worker


class EmbeddedWorker(Worker):
    def _set_ip_address(self, connection: Any) -> None:
        try:
            super()._set_ip_address(connection)
        except ValueError:
            self.ip_address = "unknown"

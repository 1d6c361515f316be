"""Redis connections from RQ's own settings: ``REDIS_URL``, or a ``SENTINEL`` dict.

The same settings module works for ``rq worker -c settings``, ``dedupkit ... -c settings``
and the example app, so every process of a deployment finds the current primary the same
way. With ``SENTINEL`` the connection is redis-py's ``Sentinel(...).master_for(name)``
(what RQ builds): after a failover its next command asks the sentinels for the new
primary, and a write refused by the demoted one (READONLY) drops the connection.

    SENTINEL = {
        "INSTANCES": [("10.0.0.1", 26379), ("10.0.0.2", 26379), ("10.0.0.3", 26379)],
        "MASTER_NAME": "mymaster",   # default "mymaster"
        "SOCKET_TIMEOUT": 3,         # seconds; also DB, USERNAME, PASSWORD, SSL,
        "CONNECTION_KWARGS": {},     # and SENTINEL_KWARGS (for the sentinels themselves)
    }
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import redis
from rq.cli.helpers import get_redis_from_config

from .errors import InvalidRequestError

__all__ = ["load_settings", "redis_from_settings"]

_SENTINEL_KEYS = frozenset({"INSTANCES", "MASTER_NAME", "SOCKET_TIMEOUT", "DB", "USERNAME", "PASSWORD", "SSL",
                            "CONNECTION_KWARGS", "SENTINEL_KWARGS"})


def load_settings(module: str) -> dict[str, Any]:
    """The UPPERCASE names of a settings module, as ``rq worker -c module`` reads them."""
    try:
        settings = importlib.import_module(module)
    except ImportError as exc:
        raise InvalidRequestError(f"cannot import the settings module {module!r}: {exc}") from exc
    return {name: value for name, value in vars(settings).items() if name.isupper()}


def _check_sentinel(sentinel: object) -> None:
    if not isinstance(sentinel, Mapping):
        raise InvalidRequestError(f"SENTINEL must be a dict, not {type(sentinel).__name__}")
    unknown = set(sentinel) - _SENTINEL_KEYS
    if unknown:
        raise InvalidRequestError(f"SENTINEL has unknown settings {sorted(unknown)}; known: {sorted(_SENTINEL_KEYS)}")
    instances = sentinel.get("INSTANCES", [("localhost", 26379)])
    if (not isinstance(instances, (list, tuple)) or not instances
            or not all(isinstance(i, (list, tuple)) and len(i) == 2 and isinstance(i[0], str)
                       and isinstance(i[1], int) and not isinstance(i[1], bool) for i in instances)):
        raise InvalidRequestError(f"SENTINEL['INSTANCES'] must be a non-empty list of (host, port) pairs, "
                                  f"got {instances!r}")
    name = sentinel.get("MASTER_NAME", "mymaster")
    if not isinstance(name, str) or not name:
        raise InvalidRequestError(f"SENTINEL['MASTER_NAME'] must be a non-empty string, got {name!r}")
    for key in ("CONNECTION_KWARGS", "SENTINEL_KWARGS"):
        if not isinstance(sentinel.get(key, {}), Mapping):
            raise InvalidRequestError(f"SENTINEL[{key!r}] must be a dict")


def redis_from_settings(settings: Mapping[str, Any]) -> redis.Redis:
    """A Redis client from RQ-style settings, built by RQ's own ``get_redis_from_config``.

    ``REDIS_URL`` wins (as in RQ), then ``SENTINEL`` (a dict, see the module docstring),
    then ``REDIS_HOST``/``REDIS_PORT``/``REDIS_DB``/``REDIS_PASSWORD``. Malformed settings
    raise InvalidRequestError before anything connects.
    """
    if not isinstance(settings, Mapping):
        raise InvalidRequestError(f"settings must be a mapping, not {type(settings).__name__}")
    url = settings.get("REDIS_URL")
    if url is not None and not isinstance(url, str):
        raise InvalidRequestError(f"REDIS_URL must be a string, not {type(url).__name__}")
    if url is None and settings.get("SENTINEL") is not None:
        _check_sentinel(settings["SENTINEL"])
    try:
        return get_redis_from_config(dict(settings))  # type: ignore[no-any-return,no-untyped-call]
    except ValueError as exc:  # a malformed URL or REDIS_SSL
        raise InvalidRequestError(str(exc)) from exc

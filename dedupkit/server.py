"""What dedupkit reads about the Redis server itself (not about jobs or slots)."""

from __future__ import annotations

import logging

import redis

from . import scripts

logger = logging.getLogger("dedupkit")

SAFE_POLICY = "noeviction"


def eviction_policy(connection: redis.Redis) -> str | None:
    """The server's ``maxmemory-policy``, read from ``INFO memory``; None if it cannot be read.

    INFO rather than CONFIG GET: managed Redis services usually allow the first and not
    the second. None when the server has no INFO (fakeredis) or refuses it (an ACL): the
    caller cannot check, and says so. Raises RedisUnavailableError when Redis is unreachable
    or refuses to serve.
    """
    try:
        with scripts.redis_errors():
            info = connection.info("memory")
    except redis.exceptions.ResponseError as exc:  # no INFO here (fakeredis), or not allowed
        logger.debug("INFO memory failed: %s", exc)
        return None
    return policy_of(info)


def policy_of(info: object) -> str | None:
    """``maxmemory-policy`` from a parsed ``INFO memory`` reply, None if absent."""
    policy = info.get("maxmemory_policy") if isinstance(info, dict) else None
    return str(policy) if policy is not None else None

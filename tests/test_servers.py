"""The server matrix's own pieces (tests/servers.py) and what a server older than RESP3
does to a client: Redis 5.0, the oldest Redis that RQ allows, from `make servers`."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import redis
from rq import Queue

from dedupkit import Deduplicator, RedisUnavailableError
from dedupkit.scripts import redis_errors

from .servers import SERVER_WHEELS, ServerNotFoundError, server_binary, server_version
from .support import RedisServer

TASK = "tests.tasks.work"


def test_a_server_without_hello_is_a_typed_error_that_says_protocol_2() -> None:
    with pytest.raises(RedisUnavailableError, match=r"protocol=2"), redis_errors():
        raise redis.exceptions.ResponseError("unknown command `HELLO`, with args beginning with: `3`, ")
    with pytest.raises(redis.exceptions.ResponseError), redis_errors():  # other errors stay what they are
        raise redis.exceptions.ResponseError("unknown command `FOO`, with args beginning with: ")


def test_server_choice_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="use redis, valkey"):
        server_binary("keydb")
    with pytest.raises(ServerNotFoundError, match="not an executable"):
        server_binary("/nonexistent/redis-server")
    monkeypatch.setenv("DEDUPKIT_SERVER", "redis")
    assert server_version(server_binary()).startswith("redis ")


@pytest.fixture(scope="module")
def redis5() -> Iterator[RedisServer]:
    try:
        binary = server_binary("redis5.0")
    except ServerNotFoundError as exc:
        if os.environ.get("DEDUPKIT_REQUIRE_REAL") == "1":
            pytest.fail(f"{exc} (make test installs it first)")
        pytest.skip(str(exc))
    assert server_version(binary).startswith("redis 5."), SERVER_WHEELS["redis5.0"]
    server = RedisServer(binary=binary)
    yield server
    server.close()


def test_on_redis_5_a_resp3_client_gets_the_protocol_2_advice_and_a_resp2_one_works(redis5: RedisServer) -> None:
    assert redis5.url.endswith("?protocol=2")
    resp3 = redis.Redis(port=redis5.port)  # redis-py's default: HELLO 3 on connect
    with pytest.raises(RedisUnavailableError, match=r"protocol=2"):
        Deduplicator(Queue("test", connection=resp3)).enqueue("u", TASK, "x")
    resp3.close()
    conn = redis.Redis.from_url(redis5.url)
    conn.flushall()
    dedup = Deduplicator(Queue("test", connection=conn))
    first = dedup.enqueue("u", TASK, "x")
    assert first.admitted and not dedup.enqueue("u", TASK, "y").admitted
    assert dedup.cancel("u") and dedup.enqueue("u", TASK, "z").admitted  # cancel reads the intermediate list: no LPOS
    conn.close()

"""Fixtures: fakeredis (the fast path) and a real redis-server (the truth), real rq workers.

Set DEDUPKIT_REQUIRE_REAL=1 (the README's test command does) to turn a missing
redis-server into a failure, and any skipped real-Redis test into a failed run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import fakeredis
import pytest
import redis
from hypothesis import Phase, settings
from rq import Queue

from dedupkit import Deduplicator

from .servers import server_binary, server_version
from .support import RedisServer, RQWorker

REQUIRE_REAL = os.environ.get("DEDUPKIT_REQUIRE_REAL") == "1"
# `make mutate` (tests/mutate.py) only asks whether a test fails: no shrinking of a failing
# example (minutes under a mutant that breaks the model), no example database.
settings.register_profile("mutate", phases=[Phase.explicit, Phase.reuse, Phase.generate], database=None)
_skipped_real: list[str] = []


def pytest_report_header() -> str:
    # Which server the real-Redis tests run on (DEDUPKIT_SERVER; the matrix reads this line).
    try:
        binary = server_binary()
    except (FileNotFoundError, ValueError) as exc:
        return f"dedupkit real server: none ({exc})"
    return f"dedupkit real server: {server_version(binary)} ({binary})"


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # A test for one RQ major version skipped on the other (marker rq_version) is not a missing redis-server,
    # nor is an expected failure (a strict xfail that failed as expected is reported as skipped).
    if (report.skipped and "real" in report.keywords and "rq_version" not in report.keywords
            and not hasattr(report, "wasxfail")):
        _skipped_real.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if REQUIRE_REAL and _skipped_real:
        print(f"\nDEDUPKIT_REQUIRE_REAL=1 but {len(_skipped_real)} real-Redis tests were skipped:")
        for nodeid in _skipped_real[:20]:
            print("  ", nodeid)
        session.exitstatus = 1


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "real_server" in getattr(item, "fixturenames", ()) or "[real]" in item.nodeid:
            item.add_marker(pytest.mark.real)
    # The long Sentinel/Cluster runs (minutes each) belong to `make test-topology`; `make
    # test` keeps a representative one of each. Deselected, not skipped: not a missing server.
    if os.environ.get("DEDUPKIT_TOPOLOGY_FULL") != "1":
        long_runs = [item for item in items if "topology_full" in item.keywords]
        if long_runs:
            config.hook.pytest_deselected(items=long_runs)
            items[:] = [item for item in items if "topology_full" not in item.keywords]


@pytest.fixture(scope="session")
def real_server() -> Iterator[RedisServer]:
    try:
        server = RedisServer()
    except FileNotFoundError as exc:
        if REQUIRE_REAL:
            pytest.fail(str(exc))
        pytest.skip(str(exc))
    yield server
    server.close()


def _clean(conn: redis.Redis) -> redis.Redis:
    conn.flushall()
    conn.script_flush()  # so every test exercises the NOSCRIPT -> load path
    return conn


@pytest.fixture
def real_redis(real_server: RedisServer) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(real_server.url)
    yield _clean(conn)
    conn.close()


@pytest.fixture
def fake_redis() -> Iterator[redis.Redis]:
    conn = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    yield _clean(conn)
    conn.close()


@pytest.fixture(params=["fake", "real"])
def conn(request: pytest.FixtureRequest) -> redis.Redis:
    name = "fake_redis" if request.param == "fake" else "real_redis"
    return request.getfixturevalue(name)  # type: ignore[no-any-return]


@pytest.fixture
def queue(conn: redis.Redis) -> Queue:
    return Queue("test", connection=conn)


@pytest.fixture
def dedup(queue: Queue) -> Deduplicator:
    return Deduplicator(queue)


@pytest.fixture
def workers(real_server: RedisServer) -> Iterator[Callable[..., RQWorker]]:
    started: list[RQWorker] = []

    def start(queue: str = "test", **kwargs: object) -> RQWorker:
        worker = RQWorker(real_server.url, queue, **kwargs)  # type: ignore[arg-type]
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()

"""Job templates (admission.JobTemplate) against RQ's own job building.

A request whose shape (function, plain RQ options, mode) has a template gets its job by
copying the template and filling in id, arguments and times. Over the option matrix, the
hash it writes must equal, pair for pair and in order, what RQ's ``create_job`` +
``Job.to_dict`` build from scratch for the same request (dedupkit's path before templates
and for every request that does not fit one), and the returned Job must say the same.
Runs on whichever RQ the venv has: `make test` (RQ 3) and `make test-rq2` (RQ 2.10).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import redis
import rq.job
import rq.utils
from rq import Queue
from rq.job import Job, Retry

from dedupkit import Deduplicator, EnqueueRequest, InvalidRequestError
from dedupkit import admission as adm
from dedupkit.models import OnConflict

from .tasks import work

FROZEN = datetime(2026, 11, 29, 10, 11, 12, 345678, tzinfo=timezone.utc)

FUNCS: list[Any] = [work, "tests.tasks.work"]
OPTIONS: list[dict[str, Any]] = [
    {},
    {"job_timeout": 30},
    {"job_timeout": "1h"},
    {"job_timeout": 2.5},
    {"result_ttl": 0},
    {"result_ttl": -1},
    {"ttl": 600},
    {"failure_ttl": 100},
    {"description": "a fixed description"},
    {"description": ""},
    {"job_timeout": 30, "result_ttl": 500, "ttl": 900, "failure_ttl": 60, "description": "all of them"},
    # Not template-shaped: built from scratch every time; must still agree.
    {"meta": {"a": 1}},
    {"retry": Retry(max=2, interval=[1, 5])},
]
MODES: list[tuple[timedelta | None, bool, OnConflict]] = [
    (None, False, OnConflict.REJECT),
    (None, True, OnConflict.REJECT),
    (None, True, OnConflict.FOLLOW_UP),
    (None, False, OnConflict.REPLACE),
    (timedelta(hours=1), False, OnConflict.REJECT),
    (timedelta(hours=1), True, OnConflict.REPLACE),
]
# (args, kwargs) of the second request, the one that gets a filled-in copy.
CALLS: list[tuple[tuple[Any, ...], dict[str, Any]]] = [
    ((), {}),
    (("b",), {}),
    (("b", 0.25), {}),
    (("é" * 100,), {}),  # past RQ's 75-character description limit
    (("b",), {"seconds": 1}),
    ((), {"args": ("b",), "kwargs": {"seconds": 2}}),
]


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(rq.job, "now", lambda: FROZEN)
    monkeypatch.setattr(adm, "rq_now", lambda: FROZEN)
    yield


def _from_scratch(dedup: Deduplicator, request: EnqueueRequest, job_id: str) -> tuple[Job, list[Any]]:
    """The job and hash RQ's create_job and Job.to_dict build for ``request``, no template."""
    parsed = Queue.parse_args(request.func, *request.args, **request.kwargs)
    policy = adm.policy_of(request.on_conflict)
    job = adm._create_job(dedup.queue, parsed, job_id, request.at is not None, None, policy)
    return job, adm.flatten(job)


@pytest.mark.parametrize("func", FUNCS, ids=["function", "dotted"])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(o) or "none")
def test_template_hash_equals_rq_job_to_dict(fake_redis: redis.Redis, frozen: None, func: Any,
                                             options: dict[str, Any]) -> None:
    dedup = Deduplicator(Queue("tpl", connection=fake_redis))
    shaped = not ({"meta", "retry"} & set(options))
    for (at, at_front, policy), (args, kwargs) in itertools.product(MODES, CALLS):
        extra = {"at_front": True} if at_front else {}
        first = EnqueueRequest("first", func, ("a",), {**options, **extra}, at=at, on_conflict=policy)
        dedup._prepare(first)  # builds the template of this shape
        request = EnqueueRequest("second", func, args, {**options, **extra, **kwargs}, at=at, on_conflict=policy)
        prepared = dedup._prepare(request)
        job, pairs = _from_scratch(dedup, request, prepared.job.id)
        where = f"at={at} at_front={at_front} policy={policy.value} args={args} kwargs={kwargs}"
        assert prepared.pairs == pairs, where
        assert adm.flatten(prepared.job) == pairs, where  # the Job handed back says the same
        assert prepared.job.id == job.id and prepared.job.args == job.args and prepared.job.kwargs == job.kwargs
        shape = adm.shape_of(Queue.parse_args(func, *args, **{**options, **extra, **kwargs}), at is not None,
                             None, policy)
        assert (shape is not None) == shaped, where
        if shaped:
            assert dedup.templates.get(shape) is not None, where


def test_copies_do_not_share_containers(fake_redis: redis.Redis) -> None:
    """Each job gets its own meta dict (and other containers), not the template's."""
    dedup = Deduplicator(Queue("tpl", connection=fake_redis))
    one = dedup._prepare(EnqueueRequest("one", work, ("a",))).job
    prepared = dedup._prepare(EnqueueRequest("two", work, ("b",)))
    two = prepared.job
    assert adm.flatten(two) == prepared.pairs  # its own times, not the template's
    one.meta["mine"] = 1
    assert two.meta == {}
    assert one.description == "tests.tasks.work('a')" and two.description == "tests.tasks.work('b')"
    assert one.created_at is not None and one.id != two.id


def test_a_bad_request_still_gets_its_typed_error(fake_redis: redis.Redis) -> None:
    """A shape with a template already built still checks what varies per request."""
    dedup = Deduplicator(Queue("tpl", connection=fake_redis))
    dedup._prepare(EnqueueRequest("one", work, ("a",), {"job_timeout": 30}))
    with pytest.raises(InvalidRequestError):
        dedup._prepare(EnqueueRequest("two", work, ("a",), {"job_timeout": 30, "bogus_option": object(),
                                                              "args": ("x",)}))


def test_template_cache_is_bounded(fake_redis: redis.Redis) -> None:
    dedup = Deduplicator(Queue("tpl", connection=fake_redis))
    dedup.templates.size = 4
    for i in range(10):
        dedup._prepare(EnqueueRequest(f"k{i}", work, ("a",), {"description": f"d{i}"}))
    assert 1 <= len(dedup.templates._by_shape) <= 4


def test_admitted_template_job_is_what_rq_fetches(fake_redis: redis.Redis) -> None:
    """Through the script: the hash written for a filled-in job loads with RQ's Job.fetch."""
    queue = Queue("tpl", connection=fake_redis)
    dedup = Deduplicator(queue)
    dedup.enqueue("one", work, "a", job_timeout=30)
    admission = dedup.enqueue("two", work, "b", seconds=1, job_timeout=30)
    job = Job.fetch(admission.job_id, connection=fake_redis)
    assert (job.func_name, job.args, job.kwargs, job.timeout) == ("tests.tasks.work", ("b",), {"seconds": 1}, 30)
    assert job.description == "tests.tasks.work('b', seconds=1)"
    assert job.get_status() == "queued" and job.origin == "tpl"
    assert queue.job_ids[-1] == admission.job_id


@pytest.mark.parametrize("at", [FROZEN, FROZEN.replace(microsecond=0), datetime(999, 1, 2, 3, 4, 5, 6),
                                datetime(2026, 3, 4, 5, 6, 7, 8, tzinfo=timezone(timedelta(hours=2))),
                                datetime.now(timezone.utc)])
def test_timestamp_is_rq_utcformat(at: datetime) -> None:
    assert adm.rq_timestamp(at) == rq.utils.utcformat(at)

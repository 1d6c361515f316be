"""The bad-input corpus: every odd key either works in its own slot or is refused with a
message naming the problem; no input leaves a half-written job, a dangling slot or a
queue entry without a job hash."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import redis
from rq import Queue
from rq.job import Job, JobStatus

from dedupkit import Deduplicator, InvalidKeyError, InvalidRequestError, NaiveDatetimeError, encode_key
from dedupkit.keys import normalize_key

from . import rqstate

TASK = "tests.tasks.work"

GOOD_KEYS: list[object] = [
    0, -1, 10**30, "0", " x ", "x" * 512, "a:b", "a_b", "a/b", "a-b", "a-5fb", "{tag}", "*", "?", "[a]",
    "\x00", "\t\tindent", "😀", "👩‍👩‍👧", "שלום", "مرحبا", "é", "e\u0301",
    "]] redis.call('FLUSHALL') --", "'); DROP TABLE users; --", "rq:job:x", "rq:queue:test", "dedupkit:slots:test",
    "%s%n", "${HOME}",
]
BAD_KEYS: list[tuple[object, str]] = [
    (None, "None"), ("", "empty"), (" ", "whitespace"), ("\n", "whitespace"), ("\n\t ", "whitespace"),
    (True, "bool"), (False, "bool"),
    (b"bytes", "bytes"), (1.0, "float"), (["a"], "list"), ("x" * 513, "512-byte"), ("😀" * 129, "512-byte"),
    ("\udcff", "surrogate"),
]


def _db_is_consistent(conn: redis.Redis, dedup: Deduplicator) -> None:
    """Every slot names an existing job, every queued/scheduled id has a hash, and no key
    outside RQ's and dedupkit's own names exists."""
    k = dedup.keys
    for field, job_id in conn.hgetall(k.slots).items():
        assert conn.exists(f"rq:job:{job_id.decode()}"), f"slot {field!r} points at nothing"
        assert job_id.decode().split("_")[1] == field.decode()
    for job_id in conn.lrange(k.queue, 0, -1) + conn.zrange(k.scheduled, 0, -1):
        data = conn.hgetall(f"rq:job:{job_id.decode()}")
        assert data.get(b"status") and data.get(b"origin") and data.get(b"data"), f"half-written {job_id!r}"
    allowed = {k.slots, k.gc, k.stats, k.queue, k.queues, k.scheduled}
    for name in conn.keys("*"):
        text = name.decode()
        assert text in allowed or text.startswith("rq:job:"), f"unexpected key {text!r}"


def test_good_keys_each_get_their_own_slot(conn: redis.Redis) -> None:
    dedup = Deduplicator(Queue("test", connection=conn))
    expected = {}
    for key in GOOD_KEYS:
        adm = dedup.enqueue(key, TASK, "x")
        norm = normalize_key(key)
        if norm in expected:
            assert not adm.admitted and adm.job_id == expected[norm]
        else:
            assert adm.admitted, key
            expected[norm] = adm.job_id
    assert conn.hlen(dedup.keys.slots) == len(expected)
    for norm, job_id in expected.items():
        status = dedup.status(norm)
        assert status.job_id == job_id and status.key == norm
        assert Job.fetch(job_id, connection=conn).args == ("x",)
    _db_is_consistent(conn, dedup)


@pytest.mark.parametrize(("key", "reason"), BAD_KEYS, ids=[repr(k)[:20] for k, _ in BAD_KEYS])
def test_bad_keys_are_refused_by_every_call(fake_redis: redis.Redis, key: object, reason: str) -> None:
    dedup = Deduplicator(Queue("test", connection=fake_redis))
    calls = [lambda: dedup.enqueue(key, TASK), lambda: dedup.enqueue_in(timedelta(1), key, TASK),  # type: ignore[arg-type]
             lambda: dedup.status(key), lambda: dedup.cancel(key), lambda: dedup.has_pending(key)]  # type: ignore[arg-type]
    for call in calls:
        with pytest.raises(InvalidKeyError, match=reason):
            call()
    assert fake_redis.dbsize() == 0


def test_a_key_that_equals_another_keys_encoding(conn: redis.Redis) -> None:
    dedup = Deduplicator(Queue("test", connection=conn))
    first = dedup.enqueue("a_b", TASK)
    lookalike = dedup.enqueue(encode_key("a_b"), TASK)  # the text "a-5fb"
    assert first.admitted and lookalike.admitted and first.job_id != lookalike.job_id


def test_function_that_cannot_be_imported_fails_in_the_worker_and_frees_the_slot(conn: redis.Redis) -> None:
    queue = Queue("test", connection=conn)
    dedup = Deduplicator(queue)
    adm = dedup.enqueue("u", "no_such_module.no_such_function")
    assert adm.admitted  # as RQ: a dotted path is resolved by the worker, which may see other modules
    rqstate.run_all(queue)
    assert Job.fetch(adm.job_id, connection=conn).get_status() == JobStatus.FAILED
    assert not dedup.has_pending("u")


@pytest.mark.parametrize("func", [42, None, object()])
def test_non_callable_function_is_refused(fake_redis: redis.Redis, func: object) -> None:
    dedup = Deduplicator(Queue("test", connection=fake_redis))
    with pytest.raises(InvalidRequestError, match="callable"):
        dedup.enqueue("u", func)
    assert fake_redis.dbsize() == 0


def test_huge_arguments(conn: redis.Redis) -> None:
    queue = Queue("test", connection=conn)
    dedup = Deduplicator(queue)
    blob = "x" * (10 * 1024 * 1024)
    adm = dedup.enqueue("u", "builtins.len", blob)
    assert adm.admitted
    assert Job.fetch(adm.job_id, connection=conn).args == (blob,)
    assert not dedup.enqueue("u", "builtins.len", blob).admitted
    _db_is_consistent(conn, dedup)


def test_naive_times_refused_aware_times_kept(fake_redis: redis.Redis) -> None:
    dedup = Deduplicator(Queue("test", connection=fake_redis))
    naive_local = datetime.now() + timedelta(hours=1)  # RQ and Python read this an hour apart in winter
    aware = datetime.now(timezone.utc) + timedelta(hours=1)
    with pytest.raises(NaiveDatetimeError, match="replace\\(tzinfo="):
        dedup.enqueue_at(naive_local, "naive", TASK)
    assert fake_redis.dbsize() == 0
    b = dedup.enqueue_at(aware, "aware", TASK)
    assert b.status.scheduled_for is not None
    assert abs((b.status.scheduled_for - aware).total_seconds()) < 1


def test_naive_times_refused_in_enqueue_many(fake_redis: redis.Redis) -> None:
    from dedupkit import EnqueueRequest

    dedup = Deduplicator(Queue("test", connection=fake_redis))
    naive = EnqueueRequest("naive", TASK, at=datetime.now() + timedelta(hours=1))
    with pytest.raises(NaiveDatetimeError):
        dedup.enqueue_many([EnqueueRequest("ok", TASK), naive])
    assert fake_redis.dbsize() == 0  # a bad request raises before anything is written
    ok, refused = dedup.enqueue_many([EnqueueRequest("ok", TASK), naive], raise_errors=False)
    assert ok.admitted and isinstance(refused.error, NaiveDatetimeError) and not dedup.has_pending("naive")
    assert isinstance(refused.error, InvalidRequestError) and refused.error.value == naive.at


@pytest.mark.parametrize(("kwargs", "ok"), [({"job_timeout": -1}, True), ({"job_timeout": 0}, False),
                                            ({"job_timeout": "10m"}, True), ({"job_timeout": "soon"}, False),
                                            ({"job_id": "mine"}, False), ({"result_ttl": 0}, True)])
def test_job_options(fake_redis: redis.Redis, kwargs: dict[str, object], ok: bool) -> None:
    dedup = Deduplicator(Queue("test", connection=fake_redis))
    if ok:
        assert dedup.enqueue("u", TASK, **kwargs).admitted
    else:
        with pytest.raises(InvalidRequestError):
            dedup.enqueue("u", TASK, **kwargs)
        assert fake_redis.dbsize() == 0


def test_bad_constructor_arguments(fake_redis: redis.Redis) -> None:
    with pytest.raises(InvalidRequestError):
        Deduplicator("not a queue")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequestError):
        Deduplicator(Queue("q", connection=fake_redis), job_id_prefix="bad prefix")
    with pytest.raises(InvalidRequestError):
        Deduplicator(Queue("q", connection=fake_redis), namespace="")


def _make_nested() -> object:
    def nested() -> None:
        pass
    return nested


class _Local:
    @staticmethod
    def module_level_static() -> None:
        pass


@pytest.mark.parametrize(("func", "words"), [
    (lambda: None, "is a lambda"),
    (_make_nested(), "is defined inside a function"),
])
def test_lambda_or_nested_function_is_refused_at_the_call(fake_redis: redis.Redis, func: object,
                                                           words: str) -> None:
    """RQ accepts them and only its worker finds out (it imports by dotted path); dedupkit
    refuses them before anything is written or any key is held."""
    from dedupkit import EnqueueRequest

    dedup = Deduplicator(Queue("test", connection=fake_redis))
    for call in (lambda: dedup.enqueue("u", func), lambda: dedup.enqueue_in(timedelta(1), "u", func),
                 lambda: dedup.enqueue_many([EnqueueRequest("u", func)])):
        with pytest.raises(InvalidRequestError, match=words):
            call()
    assert fake_redis.dbsize() == 0 and not dedup.has_pending("u")


def test_importable_callables_are_admitted(fake_redis: redis.Redis) -> None:
    from tests import tasks

    dedup = Deduplicator(Queue("test", connection=fake_redis))
    assert dedup.enqueue("a", tasks.work, "x").admitted
    assert dedup.enqueue("b", _Local.module_level_static).admitted
    assert dedup.enqueue("c", "workers_only.tasks.process").admitted, "a dotted path stays unimported"
    assert dedup.enqueue("d", print).admitted

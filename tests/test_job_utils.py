"""The drop-in functional API."""

from __future__ import annotations

import logging
import re
from datetime import timedelta

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from rq import Queue

from dedupkit import Deduplicator, InvalidKeyError, job_utils

from . import rqstate
from .support import free_port


def test_functions_follow_the_slot(conn: redis.Redis) -> None:
    q = "emails"
    dedup = Deduplicator(Queue(q, connection=conn), job_id_prefix=job_utils.JOB_ID_PREFIX)
    assert not job_utils.has_user_job_pending(conn, 7, q)
    assert job_utils.get_user_job_status(conn, 7, q)["state"] is None
    adm = dedup.enqueue(7, "tests.tasks.work", "x")
    assert adm.job_id.startswith("email_process_7_")
    assert job_utils.is_user_job_queued(conn, "7", q) and job_utils.has_user_job_pending(conn, 7, q)
    assert not job_utils.is_user_job_running(conn, 7, q) and not job_utils.is_user_job_scheduled(conn, 7, q)
    rqstate.start(conn, Queue(q, connection=conn), adm.job_id)
    assert job_utils.is_user_job_running(conn, 7, q)
    status = job_utils.get_user_job_status(conn, 7, q)
    assert status["user_id"] == 7 and status["has_running_job"] and status["job_id"] == adm.job_id
    assert status["state"] == "running" and not status["has_queued_job"]
    dedup.enqueue_in(timedelta(hours=1), 8, "tests.tasks.work")
    assert job_utils.is_user_job_scheduled(conn, 8, q)
    assert not job_utils.has_user_job_pending(conn, 7, "default"), "queues are separate"


def test_generate_job_id_keeps_the_seed_shape() -> None:
    assert re.fullmatch(r"email_process_123_\d+", job_utils.generate_job_id(123))
    assert job_utils.generate_job_id("123", 1.5) == job_utils.generate_job_id(123, 1.5)


def test_redis_down_logs_and_answers_false(caplog: pytest.LogCaptureFixture) -> None:
    conn = redis.Redis(port=free_port(), socket_connect_timeout=0.3, retry=Retry(NoBackoff(), 0))
    with caplog.at_level(logging.ERROR, logger="dedupkit.job_utils"):
        assert job_utils.has_user_job_pending(conn, 1) is False
        assert job_utils.is_user_job_running(conn, 1) is False
        status = job_utils.get_user_job_status(conn, 1)
    assert status["error"] and status["has_running_job"] is False and status["user_id"] == 1
    assert "Could not read the job status of user 1" in caplog.text


def test_bad_user_id_still_raises(fake_redis: redis.Redis) -> None:
    with pytest.raises(InvalidKeyError):
        job_utils.has_user_job_pending(fake_redis, None)  # type: ignore[arg-type]

"""The worker task: an ordinary RQ job function, run by ``rq worker --with-scheduler``.

It simulates fetching and processing a user's mailbox (no network): it sleeps for the
configured duration in small steps, then records the run and the user's new
``last_check_time`` in the app's SQLite database.
"""

from __future__ import annotations

import logging
import os
import random
import time
from typing import Any

from rq import get_current_job

from . import db

logger = logging.getLogger(__name__)

DEFAULT_DB = os.path.join(os.path.dirname(__file__), "instance", "app.sqlite3")


def default_db_path() -> str:
    return os.environ.get("EMAIL_APP_DATABASE", DEFAULT_DB)


def default_job_seconds() -> float:
    return float(os.environ.get("EMAIL_JOB_SECONDS", "5"))


def process_user_emails_standalone(user_id: int, *, db_path: str | None = None,
                                   seconds: float | None = None) -> dict[str, Any]:
    """Process ``user_id``'s mailbox. ``db_path`` and ``seconds`` default to the
    EMAIL_APP_DATABASE and EMAIL_JOB_SECONDS environment variables."""
    path = db_path or default_db_path()
    duration = default_job_seconds() if seconds is None else float(seconds)
    job = get_current_job()
    job_id = job.id if job else None
    started = db.utcnow()
    messages = random.Random(f"{user_id}:{started.isoformat()}").randint(0, 12)
    logger.info("Processing mailbox of user %s (job %s): %d new messages", user_id, job_id, messages)
    steps = max(1, messages)
    for _ in range(steps):  # "fetch" and "process" one message per step
        time.sleep(duration / steps)
    db.record_run(path, user_id, job_id, started, messages)
    return {"user_id": user_id, "messages": messages, "job_id": job_id}

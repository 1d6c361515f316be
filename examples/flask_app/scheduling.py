"""The example's schedule: one entry per user with automation enabled, from SQLite.

``make_scheduler`` is the factory the CLI takes:

    dedupkit scheduler --app examples.flask_app.scheduling:make_scheduler --interval 60
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import redis

from dedupkit.scheduler import ScheduleEntry, Scheduler

from . import db
from .app import make_deduplicator, redis_from_config, sentinel_from_env
from .tasks import default_db_path, default_job_seconds, process_user_emails_standalone


def schedule_entries(db_path: str, *, seconds: float | None = None) -> Iterator[ScheduleEntry]:
    """Each enabled user's next check: last_check_time + interval (now if never checked)."""
    duration = default_job_seconds() if seconds is None else seconds
    conn = db.connect(db_path)
    try:
        for config in db.enabled_configurations(conn):
            yield ScheduleEntry(
                config.user_id, config.next_run, process_user_emails_standalone, (config.user_id,),
                {"db_path": db_path, "seconds": duration,
                 "description": f"Scheduled email processing for user {config.user_id}",
                 "job_timeout": max(60, int(duration * 4))},
            )
    finally:
        conn.close()


def make_scheduler(redis_url: str | None = None, *, db_path: str | None = None, interval: float = 60.0,
                   seconds: float | None = None, connection: redis.Redis | None = None) -> Scheduler:
    """The example's Scheduler: ``connection``, else the SENTINEL settings of
    EMAIL_APP_RQ_CONFIG, else ``redis_url``/REDIS_URL; EMAIL_APP_DATABASE unless given."""
    url = redis_url or os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    path = db_path or default_db_path()
    db.init_db(path)
    dedup = make_deduplicator(connection or redis_from_config(url, None if redis_url else sentinel_from_env()))
    return Scheduler(dedup, lambda: schedule_entries(path, seconds=seconds), interval=interval, subject="user")

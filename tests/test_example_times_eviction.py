"""The example app under issue 9's rules: its schedule never hands dedupkit a naive time,
and it passes allow_eviction through (EMAIL_APP_ALLOW_EVICTION)."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from examples.flask_app import db
from examples.flask_app.app import make_deduplicator
from examples.flask_app.scheduling import schedule_entries


def test_a_time_stored_without_offset_is_read_as_utc(tmp_path: Path) -> None:
    path = tmp_path / "app.sqlite3"
    db.init_db(path)
    db.seed_demo_users(path, "pw", hash_method="pbkdf2:sha256:1000")
    with db.connect(path) as conn:  # as an older version (or a hand edit) might have stored it
        conn.execute("UPDATE email_configurations SET last_check_time = '2024-01-15T08:00:00'")
    entries = list(schedule_entries(str(path), seconds=1))
    assert entries and all(e.next_run is not None and e.next_run.utcoffset() is not None for e in entries)


def test_allow_eviction_comes_from_the_environment(fake_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> None:
    assert make_deduplicator(fake_redis).allow_eviction is False
    monkeypatch.setenv("EMAIL_APP_ALLOW_EVICTION", "1")
    assert make_deduplicator(fake_redis).allow_eviction is True
    assert make_deduplicator(fake_redis, allow_eviction=False).allow_eviction is False

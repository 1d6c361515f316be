"""The example's SQLite database: users, their email-automation settings, processing runs.

Standard library sqlite3 only. Times are stored as ISO-8601 UTC text. The web app, the
scheduler and the worker task each open their own connection to the same file.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from werkzeug.security import generate_password_hash

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id            INTEGER PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    email         TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    is_admin      INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS email_configurations (
    user_id          INTEGER PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    enabled          INTEGER NOT NULL DEFAULT 1,
    interval_minutes INTEGER NOT NULL DEFAULT 60 CHECK (interval_minutes > 0),
    last_check_time  TEXT
);
CREATE TABLE IF NOT EXISTS processing_runs (
    id          INTEGER PRIMARY KEY,
    user_id     INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    job_id      TEXT,
    started_at  TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    messages    INTEGER NOT NULL
);
"""

# username, email, automation enabled, interval (minutes), minutes since the last check
# (None: never checked, so the scheduler finds it overdue at once).
DEMO_USERS = [
    ("alice", "alice@example.com", True, 60, 0),
    ("bob", "bob@example.com", True, 2, None),
    ("carol", "carol@example.com", False, 30, None),
]
# The demo's one admin (the /admin page, /metrics): same password, no automation of its own.
DEMO_ADMIN = ("admin", "admin@example.com")


@dataclass(frozen=True)
class User:
    id: int
    username: str
    email: str
    password_hash: str
    is_admin: bool = False


@dataclass(frozen=True)
class EmailConfiguration:
    user_id: int
    enabled: bool
    interval_minutes: int
    last_check_time: datetime | None

    @property
    def next_run(self) -> datetime | None:
        """When the next check is due; None when it never ran (due now)."""
        if self.last_check_time is None:
            return None
        return self.last_check_time + timedelta(minutes=self.interval_minutes)

    def to_dict(self) -> dict[str, object]:
        nxt = self.next_run
        return {"enabled": self.enabled, "interval_minutes": self.interval_minutes,
                "last_check_time": self.last_check_time.isoformat() if self.last_check_time else None,
                "next_run": nxt.isoformat() if nxt else None}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _parse(text: str | None) -> datetime | None:
    """A stored time; the app writes UTC, so a time stored without an offset is UTC
    (dedupkit refuses naive run times rather than guess)."""
    if not text:
        return None
    when = datetime.fromisoformat(text)
    return when if when.tzinfo is not None else when.replace(tzinfo=timezone.utc)


def connect(path: str | Path) -> sqlite3.Connection:
    """A connection with foreign keys on and WAL, so the worker writes while the app reads."""
    conn = sqlite3.connect(str(path), timeout=10)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA journal_mode = WAL")
    return conn


def init_db(path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with connect(path) as conn:
        conn.executescript(SCHEMA)
        # Databases made before the admin role: add the column (everyone starts non-admin).
        columns = {row["name"] for row in conn.execute("PRAGMA table_info(users)")}
        if "is_admin" not in columns:
            conn.execute("ALTER TABLE users ADD COLUMN is_admin INTEGER NOT NULL DEFAULT 0")
    conn.close()


def seed_demo_users(path: str | Path, password: str, *, hash_method: str = "scrypt") -> None:
    """Create (or reset) the demo users and the demo admin, all with ``password``."""
    now = utcnow()
    with connect(path) as conn:
        for username, email, enabled, interval, ago in DEMO_USERS:
            pw = generate_password_hash(password, method=hash_method)
            uid = _upsert_user(conn, username, email, pw, admin=False)
            last = (now - timedelta(minutes=ago)).isoformat() if ago is not None else None
            conn.execute(
                "INSERT INTO email_configurations (user_id, enabled, interval_minutes, last_check_time) "
                "VALUES (?, ?, ?, ?) ON CONFLICT(user_id) DO UPDATE SET enabled = excluded.enabled, "
                "interval_minutes = excluded.interval_minutes, last_check_time = excluded.last_check_time",
                (uid, int(enabled), interval, last))
        _upsert_user(conn, *DEMO_ADMIN, generate_password_hash(password, method=hash_method), admin=True)
    conn.close()


def _upsert_user(conn: sqlite3.Connection, username: str, email: str, password_hash: str, *, admin: bool) -> int:
    conn.execute(
        "INSERT INTO users (username, email, password_hash, is_admin) VALUES (?, ?, ?, ?) "
        "ON CONFLICT(username) DO UPDATE SET email = excluded.email, password_hash = excluded.password_hash, "
        "is_admin = excluded.is_admin",
        (username, email, password_hash, int(admin)))
    (uid,) = conn.execute("SELECT id FROM users WHERE username = ?", (username,)).fetchone()
    return int(uid)


def _user(row: sqlite3.Row | None) -> User | None:
    return User(row["id"], row["username"], row["email"], row["password_hash"], bool(row["is_admin"])) if row else None


def user_by_name(conn: sqlite3.Connection, username: str) -> User | None:
    return _user(conn.execute("SELECT * FROM users WHERE username = ?", (username,)).fetchone())


def user_by_id(conn: sqlite3.Connection, user_id: int) -> User | None:
    return _user(conn.execute("SELECT * FROM users WHERE id = ?", (user_id,)).fetchone())


def users_by_ids(conn: sqlite3.Connection, ids: list[int]) -> dict[int, User]:
    """The users with these ids (one query; unknown ids are left out)."""
    if not ids:
        return {}
    marks = ",".join("?" * len(ids))
    rows = conn.execute(f"SELECT * FROM users WHERE id IN ({marks})", ids).fetchall()
    return {user.id: user for user in map(_user, rows) if user}


def _config(row: sqlite3.Row) -> EmailConfiguration:
    return EmailConfiguration(row["user_id"], bool(row["enabled"]), row["interval_minutes"],
                              _parse(row["last_check_time"]))


def configuration(conn: sqlite3.Connection, user_id: int) -> EmailConfiguration | None:
    row = conn.execute("SELECT * FROM email_configurations WHERE user_id = ?", (user_id,)).fetchone()
    return _config(row) if row else None


def enabled_configurations(conn: sqlite3.Connection) -> Iterator[EmailConfiguration]:
    """Every enabled configuration, streamed from one query."""
    for row in conn.execute("SELECT * FROM email_configurations WHERE enabled = 1 ORDER BY user_id"):
        yield _config(row)


def record_run(path: str | Path, user_id: int, job_id: str | None, started: datetime, messages: int) -> None:
    """The worker's write at the end of a run: the run itself and the new last_check_time."""
    finished = utcnow()
    with connect(path) as conn:
        conn.execute("INSERT INTO processing_runs (user_id, job_id, started_at, finished_at, messages) "
                     "VALUES (?, ?, ?, ?, ?)", (user_id, job_id, started.isoformat(), finished.isoformat(), messages))
        conn.execute("UPDATE email_configurations SET last_check_time = ? WHERE user_id = ?",
                     (finished.isoformat(), user_id))
    conn.close()


def runs(path: str | Path, user_id: int | None = None) -> list[sqlite3.Row]:
    with connect(path) as conn:
        if user_id is None:
            rows = conn.execute("SELECT * FROM processing_runs ORDER BY id").fetchall()
        else:
            rows = conn.execute("SELECT * FROM processing_runs WHERE user_id = ? ORDER BY id", (user_id,)).fetchall()
    conn.close()
    return rows

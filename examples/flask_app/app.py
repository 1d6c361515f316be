"""The Flask app: sign-in, the "Email Automation" page and its JSON API, on dedupkit.

    app = create_app({"DATABASE": "/tmp/app.sqlite3", "REDIS_URL": "redis://127.0.0.1:6379/0"})

Configuration (``config`` overrides the environment):
  SECRET_KEY    EMAIL_APP_SECRET_KEY; when unset, a random key per process (sessions end
                on restart) and a warning.
  DATABASE      EMAIL_APP_DATABASE, default examples/flask_app/instance/app.sqlite3
  REDIS_URL     REDIS_URL, default redis://127.0.0.1:6379/0; or REDIS, a redis.Redis
  QUEUE_NAME    "email_processing"
  JOB_SECONDS   EMAIL_JOB_SECONDS, how long a simulated run takes (default 5)
  SEED_DEMO_USERS / DEMO_PASSWORD (EMAIL_APP_DEMO_PASSWORD): create alice, bob, carol.

Authorization comes from the signed session only: no endpoint reads a user id from the
request. Every POST needs the session's CSRF token (form field ``csrf_token`` or header
``X-CSRF-Token``).
"""

from __future__ import annotations

import functools
import hmac
import logging
import os
import secrets
import sqlite3
from collections.abc import Callable
from typing import Any

import redis
from flask import Flask, Response, abort, g, jsonify, redirect, render_template, request, session, url_for
from rq import Queue
from werkzeug.security import check_password_hash

from dedupkit import DedupkitError, Deduplicator, RedisUnavailableError

from . import db
from .tasks import DEFAULT_DB, process_user_emails_standalone

logger = logging.getLogger(__name__)

QUEUE_NAME = "email_processing"
JOB_ID_PREFIX = "email_process"
CONFLICT_ERROR = "Email processing job already pending for this user"
UNAVAILABLE_ERROR = "The job queue is unavailable (Redis cannot be reached). Please try again shortly."
DEFAULT_DEMO_PASSWORD = "dedupkit-demo"


def make_deduplicator(connection: redis.Redis, queue_name: str = QUEUE_NAME) -> Deduplicator:
    """The Deduplicator the app, the scheduler and the tests share: same queue, same prefix."""
    return Deduplicator(Queue(queue_name, connection=connection), job_id_prefix=JOB_ID_PREFIX)


def redis_from_url(url: str) -> redis.Redis:
    # Short timeouts: an outage becomes a quick 503, not a hung request.
    return redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=3)


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    secret = os.environ.get("EMAIL_APP_SECRET_KEY")
    app.config.update(
        SECRET_KEY=secret,
        DATABASE=os.environ.get("EMAIL_APP_DATABASE", DEFAULT_DB),
        REDIS_URL=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        REDIS=None,
        QUEUE_NAME=QUEUE_NAME,
        JOB_SECONDS=float(os.environ.get("EMAIL_JOB_SECONDS", "5")),
        SEED_DEMO_USERS=False,
        DEMO_PASSWORD=os.environ.get("EMAIL_APP_DEMO_PASSWORD", DEFAULT_DEMO_PASSWORD),
        PASSWORD_HASH_METHOD="scrypt",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
    )
    app.config.update(config or {})
    if not app.config["SECRET_KEY"]:
        logger.warning("EMAIL_APP_SECRET_KEY is not set; using a random key (sessions end when the app stops)")
        app.config["SECRET_KEY"] = secrets.token_hex(32)

    db.init_db(app.config["DATABASE"])
    if app.config["SEED_DEMO_USERS"]:
        db.seed_demo_users(app.config["DATABASE"], app.config["DEMO_PASSWORD"],
                           hash_method=app.config["PASSWORD_HASH_METHOD"])
    connection = app.config["REDIS"] or redis_from_url(app.config["REDIS_URL"])
    dedup = make_deduplicator(connection, app.config["QUEUE_NAME"])
    app.extensions["dedupkit"] = dedup

    _register(app, dedup)
    return app


def _register(app: Flask, dedup: Deduplicator) -> None:
    def get_db() -> sqlite3.Connection:
        if "db" not in g:
            g.db = db.connect(app.config["DATABASE"])
        return g.db  # type: ignore[no-any-return]

    @app.teardown_appcontext
    def close_db(_exc: BaseException | None) -> None:
        conn = g.pop("db", None)
        if conn is not None:
            conn.close()

    def csrf_token() -> str:
        if "csrf_token" not in session:
            session["csrf_token"] = secrets.token_urlsafe(32)
        return str(session["csrf_token"])

    app.jinja_env.globals["csrf_token"] = csrf_token

    def csrf_ok() -> bool:
        sent = request.headers.get("X-CSRF-Token") or request.form.get("csrf_token") or ""
        expected = session.get("csrf_token")
        return bool(expected) and hmac.compare_digest(sent.encode(), str(expected).encode())

    def error(status: int, message: str, **extra: Any) -> tuple[Response, int]:
        return jsonify({"success": False, "error": message, **extra}), status

    @app.before_request
    def load_user() -> None:
        uid = session.get("user_id")
        g.user = db.user_by_id(get_db(), uid) if isinstance(uid, int) else None

    def api_login_required(view: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if g.user is None:
                return error(401, "Authentication required")
            if request.method == "POST" and not csrf_ok():
                return error(403, "Missing or invalid CSRF token")
            return view(*args, **kwargs)
        return wrapped

    @app.errorhandler(RedisUnavailableError)
    def redis_down(exc: RedisUnavailableError) -> tuple[Response, int]:
        logger.error("Redis unavailable: %s", exc)
        return error(503, UNAVAILABLE_ERROR)

    @app.errorhandler(DedupkitError)
    def dedupkit_failed(exc: DedupkitError) -> tuple[Response, int]:
        logger.exception("dedupkit failed: %s", exc)
        return error(500, "The job could not be queued because of a server error.")

    # -- pages ---------------------------------------------------------------------

    @app.get("/")
    def index() -> Any:
        if g.user is None:
            return redirect(url_for("login"))
        return render_template("index.html", user=g.user)

    @app.route("/login", methods=["GET", "POST"])
    def login() -> Any:
        if request.method == "GET":
            return render_template("login.html", error=None)
        if not csrf_ok():
            return render_template("login.html", error="Your session expired; please try again."), 403
        user = db.user_by_name(get_db(), request.form.get("username", ""))
        if user is None or not check_password_hash(user.password_hash, request.form.get("password", "")):
            return render_template("login.html", error="Wrong username or password."), 401
        session.clear()  # no session fixation: a fresh session and CSRF token per sign-in
        session["user_id"] = user.id
        csrf_token()
        return redirect(url_for("index"))

    @app.post("/logout")
    def logout() -> Any:
        if not csrf_ok():
            abort(403)
        session.clear()
        return redirect(url_for("login"))

    @app.get("/healthz")
    def healthz() -> Any:
        return {"ok": True}

    # -- API -----------------------------------------------------------------------

    @app.post("/api/email-automation/trigger")
    @api_login_required
    def trigger() -> Any:
        user = g.user
        admission = dedup.enqueue(
            user.id, process_user_emails_standalone, user.id,
            db_path=app.config["DATABASE"], seconds=app.config["JOB_SECONDS"],
            description=f"Manual email processing for user {user.id}",
            job_timeout=max(60, int(app.config["JOB_SECONDS"] * 4)),
        )
        if admission.admitted:
            logger.info("User %s triggered job %s", user.id, admission.job_id)
            return jsonify({"success": True, "job_id": admission.job_id,
                            "job_status": admission.status.to_dict()}), 202
        logger.info("User %s trigger refused: job %s is %s", user.id, admission.job_id,
                    admission.status.state and admission.status.state.value)
        return error(409, CONFLICT_ERROR, job_status=admission.status.to_dict())

    @app.get("/api/email-automation/status")
    @api_login_required
    def status() -> Any:
        user = g.user
        config = db.configuration(get_db(), user.id)
        return jsonify({"success": True, "username": user.username, "job_status": dedup.status(user.id).to_dict(),
                        "automation": config.to_dict() if config else None})

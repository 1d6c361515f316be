"""The Flask app: sign-in, the "Email Automation" page and its JSON API, on dedupkit.

    app = create_app({"DATABASE": "/tmp/app.sqlite3", "REDIS_URL": "redis://127.0.0.1:6379/0"})

Configuration (``config`` overrides the environment):
  SECRET_KEY    EMAIL_APP_SECRET_KEY; when unset, a random key per process (sessions end
                on restart) and a warning.
  DATABASE      EMAIL_APP_DATABASE, default examples/flask_app/instance/app.sqlite3
  REDIS_URL     REDIS_URL, default redis://127.0.0.1:6379/0; or REDIS, a redis.Redis
  SENTINEL      RQ's SENTINEL dict (INSTANCES, MASTER_NAME, SOCKET_TIMEOUT, ...): connect to
                the primary the sentinels name; from the env, the SENTINEL of the RQ settings
                module named by EMAIL_APP_RQ_CONFIG (the one ``rq worker -c`` reads).
  QUEUE_NAME    "email_processing"
  JOB_SECONDS   EMAIL_JOB_SECONDS, how long a simulated run takes (default 5)
  SEED_DEMO_USERS / DEMO_PASSWORD (EMAIL_APP_DEMO_PASSWORD): create alice, bob, carol and
                the admin ``admin``.
  ADMIN_PAGE_SIZE  slots per /admin page (HSCAN COUNT hint), default 50
  METRICS_TOKEN EMAIL_APP_METRICS_TOKEN: a bearer token that may read /metrics (admins
                signed in may read it too); unset: admins only.
  ALLOW_EVICTION  EMAIL_APP_ALLOW_EVICTION=1: admit even on a Redis that may evict keys.
  COOLDOWN_SECONDS EMAIL_APP_COOLDOWN_SECONDS (default 0, none): after a user's run ends,
                  the next one may start only this many seconds later; a trigger within
                  it answers 429 with a Retry-After header, a follow-up is scheduled for then.

Authorization comes from the signed session only: no endpoint reads a user id from the
request. Every POST needs the session's CSRF token (form field ``csrf_token`` or header
``X-CSRF-Token``). /admin and /metrics are for users with ``is_admin``.
"""

from __future__ import annotations

import functools
import hmac
import logging
import math
import os
import secrets
import sqlite3
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import redis
from flask import (
    Flask,
    Response,
    abort,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from rq import Queue
from werkzeug.exceptions import HTTPException
from werkzeug.security import check_password_hash

from dedupkit import (
    Admission,
    DedupkitError,
    Deduplicator,
    InvalidKeyError,
    RedisUnavailableError,
    SlotStatus,
    job_utils,
)
from dedupkit.connection import load_settings, redis_from_settings

from . import db
from .tasks import DEFAULT_DB, process_user_emails_standalone

logger = logging.getLogger(__name__)

QUEUE_NAME = "email_processing"
JOB_ID_PREFIX = "email_process"
CONFLICT_ERROR = "Email processing job already pending for this user"
UNAVAILABLE_ERROR = "The job queue is unavailable (Redis cannot be reached). Please try again shortly."
FOLLOW_UP_WAITING_ERROR = "A follow-up run is already waiting"
FOLLOW_UP_WHEN = "it will start when the current job ends"
FOLLOW_UP_NOT_RUNNING_ERROR = ("Your job has not started yet, so it will process all new mail when it runs: "
                               "no follow-up run is needed")
COOLDOWN_ERROR = "Email processing ran a moment ago; the next run is possible at {when}"
DEFAULT_DEMO_PASSWORD = "dedupkit-demo"
# What /metrics answers with: the Prometheus text format generate_latest() writes.
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# The counters the admin page always shows (0 until the first such decision).
DECISIONS = ("admitted", "conflict", "replaced", "follow_up", "recovered", "dead", "cancelled", "swept")


def make_deduplicator(connection: redis.Redis, queue_name: str = QUEUE_NAME, *,
                      allow_eviction: bool | None = None, cooldown_seconds: float | None = None) -> Deduplicator:
    """The Deduplicator the app, the scheduler and the tests share: same queue, same prefix.

    ``allow_eviction`` defaults to EMAIL_APP_ALLOW_EVICTION=1: admit on a Redis whose
    maxmemory-policy may evict keys (refused otherwise, see dedupkit's README).
    ``cooldown_seconds`` defaults to EMAIL_APP_COOLDOWN_SECONDS (0: no cooldown).
    """
    if allow_eviction is None:
        allow_eviction = os.environ.get("EMAIL_APP_ALLOW_EVICTION") == "1"
    if cooldown_seconds is None:
        cooldown_seconds = float(os.environ.get("EMAIL_APP_COOLDOWN_SECONDS", "0"))
    return Deduplicator(Queue(queue_name, connection=connection), job_id_prefix=JOB_ID_PREFIX,
                        allow_eviction=allow_eviction, cooldown=timedelta(seconds=cooldown_seconds))


def redis_from_url(url: str) -> redis.Redis:
    # Short timeouts: an outage becomes a quick 503, not a hung request.
    return redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=3)


def sentinel_from_env() -> dict[str, Any] | None:
    """The SENTINEL dict of the RQ settings module named by EMAIL_APP_RQ_CONFIG (the module
    ``rq worker -c`` reads), or None."""
    module = os.environ.get("EMAIL_APP_RQ_CONFIG")
    return load_settings(module).get("SENTINEL") if module else None


def redis_from_config(url: str, sentinel: dict[str, Any] | None) -> redis.Redis:
    """RQ's ``SENTINEL`` settings when given (the current primary, found through the
    sentinels), else the URL; short timeouts either way unless the settings say otherwise."""
    if sentinel is None:
        return redis_from_url(url)
    settings = {"SOCKET_TIMEOUT": 3, **sentinel,
                "CONNECTION_KWARGS": {"socket_connect_timeout": 1, **sentinel.get("CONNECTION_KWARGS", {})}}
    return redis_from_settings({"SENTINEL": settings})


def create_app(config: dict[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    secret = os.environ.get("EMAIL_APP_SECRET_KEY")
    app.config.update(
        SECRET_KEY=secret,
        DATABASE=os.environ.get("EMAIL_APP_DATABASE", DEFAULT_DB),
        REDIS_URL=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"),
        REDIS=None,
        SENTINEL=sentinel_from_env(),
        QUEUE_NAME=QUEUE_NAME,
        JOB_SECONDS=float(os.environ.get("EMAIL_JOB_SECONDS", "5")),
        SEED_DEMO_USERS=False,
        DEMO_PASSWORD=os.environ.get("EMAIL_APP_DEMO_PASSWORD", DEFAULT_DEMO_PASSWORD),
        PASSWORD_HASH_METHOD="scrypt",
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        ADMIN_PAGE_SIZE=50,
        METRICS_TOKEN=os.environ.get("EMAIL_APP_METRICS_TOKEN") or None,
        ALLOW_EVICTION=os.environ.get("EMAIL_APP_ALLOW_EVICTION") == "1",
        COOLDOWN_SECONDS=float(os.environ.get("EMAIL_APP_COOLDOWN_SECONDS", "0")),
    )
    app.config.update(config or {})
    # The app's job ids are the seed's (email_process_<user>_<µs>): dedupkit's functional API
    # uses the prefix it is given once, here; the library hard-wires none.
    job_utils.configure(job_id_prefix=JOB_ID_PREFIX)
    if not app.config["SECRET_KEY"]:
        logger.warning("EMAIL_APP_SECRET_KEY is not set; using a random key (sessions end when the app stops)")
        app.config["SECRET_KEY"] = secrets.token_hex(32)

    db.init_db(app.config["DATABASE"])
    if app.config["SEED_DEMO_USERS"]:
        db.seed_demo_users(app.config["DATABASE"], app.config["DEMO_PASSWORD"],
                           hash_method=app.config["PASSWORD_HASH_METHOD"])
    connection = app.config["REDIS"] or redis_from_config(app.config["REDIS_URL"], app.config["SENTINEL"])
    dedup = make_deduplicator(connection, app.config["QUEUE_NAME"], allow_eviction=app.config["ALLOW_EVICTION"],
                              cooldown_seconds=app.config["COOLDOWN_SECONDS"])
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

    def cooling_down(admission: Admission) -> tuple[Response, int]:
        """429 Too Many Requests: the user's last run ended less than the cooldown ago.
        Retry-After (whole seconds, RFC 9110) and the JSON say when the next run is possible."""
        assert admission.retry_after is not None
        wait = max(1, math.ceil((admission.retry_after - datetime.now(timezone.utc)).total_seconds()))
        response, code = error(429, COOLDOWN_ERROR.format(when=admission.retry_after.strftime("%H:%M:%S UTC")),
                               reason="cooldown", retry_after=admission.retry_after.isoformat(),
                               retry_after_seconds=wait, job_status=admission.status.to_dict())
        response.headers["Retry-After"] = str(wait)
        return response, code

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

    def admin_required(view: Callable[..., Any]) -> Callable[..., Any]:
        """Pages for admins: anonymous -> the sign-in page (like /), signed in but not an
        admin -> 403, a POST without the session's CSRF token -> 403."""
        @functools.wraps(view)
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if g.user is None:
                return redirect(url_for("login"))
            if not g.user.is_admin:
                abort(403, description=f"This page is for administrators; you are signed in as {g.user.username}.")
            if request.method == "POST" and not csrf_ok():
                abort(403, description="The form had expired. Go back, reload the page and try again.")
            return view(*args, **kwargs)
        return wrapped

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[str, int]:
        """Pages (not the JSON API, which answers with ``error()``) in the app's own look."""
        titles = {403: "Not allowed", 404: "Page not found", 400: "Bad request"}
        return render_template("error.html", code=exc.code, title=titles.get(exc.code or 0, exc.name),
                               description=exc.description), exc.code or 500

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
        # An admin's page is /admin: their account has no mailbox automation of its own.
        return redirect(url_for("admin" if user.is_admin else "index"))

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

    def enqueue_for(user: db.User, on_conflict: str, description: str) -> Admission:
        return dedup.enqueue(
            user.id, process_user_emails_standalone, user.id,
            on_conflict=on_conflict,
            db_path=app.config["DATABASE"], seconds=app.config["JOB_SECONDS"],
            description=description,
            job_timeout=max(60, int(app.config["JOB_SECONDS"] * 4)),
        )

    @app.post("/api/email-automation/trigger")
    @api_login_required
    def trigger() -> Any:
        user = g.user
        admission = enqueue_for(user, "reject", f"Manual email processing for user {user.id}")
        if admission.admitted:
            logger.info("User %s triggered job %s", user.id, admission.job_id)
            return jsonify({"success": True, "job_id": admission.job_id,
                            "job_status": admission.status.to_dict()}), 202
        if admission.reason == "cooldown":
            logger.info("User %s trigger refused: cooling down after job %s until %s", user.id, admission.job_id,
                        admission.retry_after)
            return cooling_down(admission)
        logger.info("User %s trigger refused: job %s is %s", user.id, admission.job_id,
                    admission.status.state and admission.status.state.value)
        # The conflict's status says whether a follow-up already waits (follow_up_job_id):
        # the page offers "Run again after the current job" only when none does, and
        # says what waits when one does.
        waiting = admission.status.follow_up_job_id
        if waiting:
            return error(409, f"{CONFLICT_ERROR}. {FOLLOW_UP_WAITING_ERROR}: {FOLLOW_UP_WHEN}.",
                         reason="follow_up_waiting", follow_up_job_id=waiting, job_status=admission.status.to_dict())
        return error(409, CONFLICT_ERROR, job_status=admission.status.to_dict())

    @app.post("/api/email-automation/follow-up")
    @api_login_required
    def follow_up() -> Any:
        """"Run again after the current job": one follow-up run after the running job
        (on_conflict="follow_up"). The scheduler keeps "reject": only a person asks for this."""
        user = g.user
        admission = enqueue_for(user, "follow_up", f"Follow-up email processing for user {user.id}")
        if admission.admitted:
            # follow_up_of is None when the job had ended meanwhile: then this is a plain run now.
            logger.info("User %s requested job %s after %s", user.id, admission.job_id, admission.follow_up_of)
            # retry_after is set when the run waits out the cooldown (scheduled for then).
            return jsonify({"success": True, "job_id": admission.job_id, "follow_up_of": admission.follow_up_of,
                            "retry_after": admission.retry_after.isoformat() if admission.retry_after else None,
                            "job_status": admission.status.to_dict()}), 202
        logger.info("User %s follow-up refused (%s): job %s", user.id, admission.reason, admission.job_id)
        if admission.reason == "coalesced":
            return error(409, FOLLOW_UP_WAITING_ERROR, reason="coalesced", follow_up_job_id=admission.job_id,
                         job_status=admission.status.to_dict())
        if admission.reason == "not_running":
            return error(409, FOLLOW_UP_NOT_RUNNING_ERROR, reason="not_running",
                         job_status=admission.status.to_dict())
        return error(409, CONFLICT_ERROR, reason=admission.reason, job_status=admission.status.to_dict())

    @app.get("/api/email-automation/status")
    @api_login_required
    def status() -> Any:
        user = g.user
        config = db.configuration(get_db(), user.id)
        return jsonify({"success": True, "username": user.username, "job_status": dedup.status(user.id).to_dict(),
                        "automation": config.to_dict() if config else None})

    # -- admin ---------------------------------------------------------------------

    def users_for(keys: list[str]) -> dict[str, str]:
        """Slot key -> username (keys are user ids; any other key is shown as it is)."""
        ids = {k: int(k) for k in keys if k.isascii() and k.isdigit() and len(k) <= 18}  # SQLite INTEGER range
        users = db.users_by_ids(get_db(), sorted(set(ids.values())))
        return {k: users[i].username for k, i in ids.items() if i in users}

    @app.get("/admin")
    @admin_required
    def admin() -> Any:
        try:
            cursor = int(request.args.get("cursor", "0"))
        except ValueError:
            abort(400)
        if cursor < 0:
            abort(400)
        next_cursor, page = dedup.slots(cursor, count=int(app.config["ADMIN_PAGE_SIZE"]))
        names = users_for([key for key, _, _ in page])
        now = datetime.now(timezone.utc)
        rows = [slot_row(key, job_id, status, names.get(key), now) for key, job_id, status in page]
        stats = dedup.stats()
        counters = {name: stats.get(name, 0) for name in DECISIONS}
        counters.update(sorted(stats.items()))
        return render_template("admin.html", rows=rows, counters=counters, cursor=cursor, next_cursor=next_cursor,
                               queue=dedup.queue.name)

    @app.post("/admin/cancel")
    @admin_required
    def admin_cancel() -> Any:
        key = request.form.get("key", "")
        back = redirect(url_for("admin", cursor=request.form.get("cursor") or None))
        try:
            before = dedup.status(key)
        except InvalidKeyError:
            flash(f"Not a valid key: {key!r}.", "error")
            return back
        label = users_for([before.key]).get(before.key) or f"key {before.key}"
        done = dedup.cancel(key)
        logger.info("Admin %s cancelled %s: %s", g.user.username, before.key, done)
        if done:
            if before.has_running_job and before.follow_up_job_id:
                message = (f"Cancelled the follow-up run {before.follow_up_job_id} waiting for {label}'s "
                           f"running job; the running job goes on.")
            else:
                message = f"Cancelled {label}'s job {before.job_id} ({before.state and before.state.value})."
            flash(message, "success")
            return back
        after = dedup.status(key)
        if not after.pending:
            message = f"Nothing to cancel: {label} has no pending job."
        elif after.has_running_job:
            message = f"Not cancelled: {label}'s job {after.job_id} is running (running jobs are left alone)."
        elif after.has_scheduled_job:
            message = (f"Not cancelled: {label}'s job {after.job_id} is due within {dedup.due_margin:g} s, "
                       "and RQ's scheduler may already be starting it.")
        else:
            message = f"Not cancelled: a worker has just taken {label}'s job {after.job_id}."
        flash(message, "conflict")
        return back

    @app.get("/metrics")
    def metrics() -> Any:
        """Prometheus text: for a bearer token equal to METRICS_TOKEN, or a signed-in admin."""
        token = app.config["METRICS_TOKEN"]
        sent = request.headers.get("Authorization", "")
        by_token = bool(token) and sent.startswith("Bearer ") and hmac.compare_digest(
            sent[len("Bearer "):].encode(), str(token).encode())
        if not by_token:
            if g.user is None:
                return Response("Authentication required\n", 401, {"WWW-Authenticate": 'Bearer realm="metrics"'},
                                mimetype="text/plain")
            if not g.user.is_admin:
                return Response("Admins only\n", 403, mimetype="text/plain")
        from dedupkit.metrics import prometheus_text  # needs prometheus_client (the 'example' extra)

        return Response(prometheus_text([dedup]), content_type=METRICS_CONTENT_TYPE)


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


def slot_row(key: str, slot_job_id: str, status: SlotStatus, username: str | None, now: datetime) -> dict[str, Any]:
    """One line of the admin page: who, which job, its state and how long it has been so."""
    if not status.pending:
        age = "job ended; the slot is collected later"
    elif status.started_at and status.has_running_job:
        age = "running for " + _duration((now - status.started_at).total_seconds())
    elif status.scheduled_for and status.has_scheduled_job:
        delta = (status.scheduled_for - now).total_seconds()
        age = ("due in " + _duration(delta)) if delta > 0 else ("due " + _duration(-delta) + " ago")
    elif status.enqueued_at:
        age = "waiting for " + _duration((now - status.enqueued_at).total_seconds())
    else:
        age = ""
    return {"key": key, "username": username, "job_id": status.job_id or slot_job_id,
            "state": status.state.value if status.state else "ended", "age": age,
            "follow_up_job_id": status.follow_up_job_id, "pending": status.pending}

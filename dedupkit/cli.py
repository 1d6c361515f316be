"""The ``dedupkit`` command. One subcommand per operator task, modelled on ``rq info``.

    dedupkit scheduler --app myapp.schedule:make_scheduler --interval 60 [--url redis://...]
    dedupkit status QUEUE [KEY]      one key's slot, or the queue's counters and sizes
    dedupkit list QUEUE              every occupied slot: key, job id, state, age (HSCAN pages)
    dedupkit cancel QUEUE KEY        cancel the key's queued/scheduled/deferred job
    dedupkit stats QUEUE             the decision counters
    dedupkit sweep QUEUE             delete slots of ended jobs, in small batches
    dedupkit adopt QUEUE --id-pattern 'email_process_{key}_*'   one-off migration
    dedupkit requeue QUEUE [JOB_ID ...] [--all]   failed jobs back through admission
    dedupkit cron QUEUE              ticks of dedupkit.cron jobs admitted and skipped, per cron job

Every command but ``scheduler`` takes ``--url`` (default ``$REDIS_URL``, then
redis://127.0.0.1:6379/0), ``--namespace`` and ``--json``. Every command takes
``-c/--config MODULE``: RQ's settings module (the one ``rq worker -c MODULE`` reads), whose
``REDIS_URL`` or ``SENTINEL`` dict names the server (see dedupkit.connection); an explicit
``--url`` wins over it, as in RQ.

``--app module:factory`` names a callable returning a ``dedupkit.scheduler.Scheduler``.
It is called with ``redis_url=`` (the ``--url`` value, or None) when its signature takes
that parameter, and with no arguments otherwise; with ``--config`` it is called with
``connection=`` (the Redis client those settings build) and must take that parameter.
``--interval`` and ``--batch-size`` override what it built. Add a subcommand by writing a ``_add_<name>`` function that
registers its parser and sets ``handler``.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

from redis.exceptions import RedisError

from .connection import load_settings, redis_from_settings
from .deduplicator import Deduplicator
from .errors import DedupkitError
from .keys import normalize_key
from .models import SlotStatus
from .scheduler import Scheduler
from .scripts import redis_errors
from .sizes import queue_sizes

Handler = Callable[[argparse.Namespace], int]


class CliError(Exception):
    """A usage problem reported as one line on stderr, exit status 2."""


def load_factory(spec: str) -> Callable[..., Any]:
    """Import ``module:attribute`` (attribute may be dotted) and return it."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CliError(f"--app must look like module:factory, got {spec!r}")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise CliError(f"cannot import {module_name!r}: {exc}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise CliError(f"{module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise CliError(f"{spec} is not callable")
    return obj  # type: ignore[no-any-return]


def build_scheduler(factory: Callable[..., Any], redis_url: str | None, connection: Any = None) -> Scheduler:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    any_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    takes_url = "redis_url" in params or any_kw
    if connection is not None:
        if "connection" not in params and not any_kw:
            raise CliError("--config was given but the factory takes no connection parameter")
        result = factory(connection=connection)
    else:
        if redis_url is not None and not takes_url:
            raise CliError("--url was given but the factory takes no redis_url parameter")
        result = factory(redis_url=redis_url) if takes_url else factory()
    if not isinstance(result, Scheduler):
        raise CliError(f"the factory returned {type(result).__name__}, not a dedupkit.scheduler.Scheduler")
    return result


def _configured(args: argparse.Namespace) -> Any:
    """The client of the ``--config`` settings (an explicit ``--url`` wins, as in RQ), or None."""
    if args.config is None:
        return None
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `rq worker --path .` does
    settings = load_settings(args.config)
    if args.url is not None:
        settings["REDIS_URL"] = args.url
    return redis_from_settings(settings)


def _run_scheduler(args: argparse.Namespace) -> int:
    if args.path:
        sys.path.insert(0, os.path.abspath(args.path))
    connection = _configured(args)
    url = None if connection is not None else args.url or os.environ.get("REDIS_URL")
    scheduler = build_scheduler(load_factory(args.app), url, connection)
    if args.interval is not None:
        if args.interval <= 0:
            raise CliError("--interval must be positive")
        scheduler.interval = args.interval
    if args.batch_size is not None:
        if args.batch_size < 1:
            raise CliError("--batch-size must be at least 1")
        scheduler.batch_size = args.batch_size
    if args.no_lease:
        scheduler.leader_lease = False
    scheduler.run(max_ticks=args.max_ticks)
    return 0


def _add_scheduler(sub: Any) -> None:
    p = sub.add_parser("scheduler", help="run a periodic per-key scheduler",
                       description="Tick every --interval seconds: admit each key's next run through dedupkit.")
    p.add_argument("--app", required=True, metavar="MODULE:FACTORY",
                   help="callable returning a dedupkit.scheduler.Scheduler")
    p.add_argument("--interval", type=float, default=None, help="seconds between ticks (default: the factory's)")
    p.add_argument("--url", default=None,
                   help="Redis URL passed to the factory as redis_url (default $REDIS_URL, unless --config)")
    _config_option(p)
    p.add_argument("--batch-size", type=int, default=None, help="requests per script call")
    p.add_argument("--max-ticks", type=int, default=None, help="stop after this many ticks (default: until signalled)")
    p.add_argument("--no-lease", action="store_true", help="tick on every replica (no leader election)")
    p.add_argument("--path", default=".", help="directory to import the app from (default: the current one)")
    p.set_defaults(handler=_run_scheduler)


def _dedup(args: argparse.Namespace) -> Deduplicator:
    from redis import Redis
    from rq import Queue

    connection = _configured(args)
    if connection is None:
        url = args.url or os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
        connection = Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
    return Deduplicator(Queue(args.queue, connection=connection), namespace=args.namespace,
                        job_id_prefix=args.prefix, allow_eviction=getattr(args, "allow_eviction", False))


def _emit(args: argparse.Namespace, data: Any, lines: Sequence[str]) -> None:
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True, default=str))
    else:
        for line in lines:
            print(line)


def _age(status: SlotStatus) -> str:
    since = status.started_at or status.enqueued_at
    if since is None:
        return "-"
    seconds = int((datetime.now(timezone.utc) - since).total_seconds())
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m{seconds % 60:02d}s" if seconds >= 3600 else (
        f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s")


def _describe(status: SlotStatus) -> str:
    if not status.pending:
        return "free"
    when = f", scheduled for {status.scheduled_for:%Y-%m-%d %H:%M:%S} UTC" if status.scheduled_for else ""
    follow = f", follow-up {status.follow_up_job_id} waiting" if status.follow_up_job_id else ""
    return f"{status.state.value if status.state else ''} {status.job_id} (age {_age(status)}{when}{follow})"


def _known_queue(dedup: Deduplicator) -> Deduplicator:
    """The Deduplicator, once RQ knows its queue (``rq:queues``); else a CliError naming the known ones."""
    conn, k = dedup.connection, dedup.keys
    with redis_errors():
        if conn.sismember(k.queues, k.queue) or conn.exists(k.slots, k.stats):
            return dedup
        known = sorted(q.name for q in type(dedup.queue).all(connection=conn))
    raise CliError(f"queue {dedup.queue.name!r} is unknown to RQ (no job was ever enqueued on it); "
                   f"known queues: {', '.join(known) or 'none'}")


def _run_status(args: argparse.Namespace) -> int:
    if args.key is not None:
        normalize_key(args.key)  # a bad key is the caller's error, whatever the server's state
    dedup = _known_queue(_dedup(args))
    if args.key is not None:
        status = dedup.status(args.key)
        _emit(args, status.to_dict(), [f"{args.queue} {status.key}: {_describe(status)}"])
        return 0
    sizes, stats = queue_sizes([dedup])[0], dedup.stats()
    _emit(args, {"queue": args.queue, "sizes": sizes, "stats": stats},
          [f"queue {args.queue}", *(f"  {name:<11} {value}" for name, value in sizes.items()),
           "decisions", *(f"  {name:<11} {value}" for name, value in sorted(stats.items()))])
    return 0


def _run_list(args: argparse.Namespace) -> int:
    dedup = _known_queue(_dedup(args))
    cursor, rows = args.cursor, []
    while True:
        cursor, page = dedup.slots(cursor, count=args.count)
        rows += page
        if cursor == 0 or not args.all:
            break
    data = {"cursor": cursor, "slots": [dict(s.to_dict(), slot_job_id=job_id) for _, job_id, s in rows]}
    lines = [f"{'KEY':<32} {'JOB ID':<48} {'STATE':<10} AGE"]
    lines += [f"{key[:32]:<32} {job_id[:48]:<48} {(s.state.value if s.state else 'ended'):<10} {_age(s)}"
              for key, job_id, s in rows]
    lines.append(f"{len(rows)} slots" + (f"; more: --cursor {cursor}" if cursor else ""))
    _emit(args, data, lines)
    return 0


def _run_cancel(args: argparse.Namespace) -> int:
    dedup = _dedup(args)
    before = dedup.status(args.key)
    done = dedup.cancel(args.key, stop_running=args.stop_running)
    after = dedup.status(args.key)
    verdict = "cancelled" if done else "not cancelled"
    _emit(args, {"cancelled": done, "before": before.to_dict(), "after": after.to_dict()},
          [f"{args.queue} {before.key}: {verdict}; was {_describe(before)}; now {_describe(after)}"])
    return 0 if done else 1


def _run_stats(args: argparse.Namespace) -> int:
    stats = _dedup(args).stats()
    _emit(args, stats, [f"{name:<11} {value}" for name, value in sorted(stats.items())] or ["no decisions yet"])
    return 0


def _run_sweep(args: argparse.Namespace) -> int:
    deleted = _dedup(args).sweep(batch_size=args.batch_size)
    _emit(args, {"deleted": deleted}, [f"deleted {deleted} stale slots"])
    return 0


def _run_adopt(args: argparse.Namespace) -> int:
    counts = _dedup(args).adopt(args.id_pattern)
    _emit(args, counts, [f"{name:<11} {value}" for name, value in counts.items()])
    return 0


def _run_requeue(args: argparse.Namespace) -> int:
    if bool(args.job_ids) == bool(args.all):
        raise CliError("name the failed jobs to requeue, or pass --all (not both)")
    results = _dedup(args).requeue(args.job_ids or None)
    lines = [f"{r.job_id}: {r.outcome}" + (f" as {r.new_job_id}" if r.new_job_id else "")
             + (f" (pending: {r.holder_job_id}; left in the failed registry)" if r.holder_job_id else "")
             + (f" ({r.reason})" if r.reason else "") for r in results]
    counts = {o: sum(r.outcome == o for r in results) for o in ("admitted", "conflict", "skipped")}
    lines.append(", ".join(f"{n} {o}" for o, n in counts.items()))
    _emit(args, {"results": [r.to_dict() for r in results], "counts": counts}, lines)
    return 0 if counts["admitted"] == len(results) else 1


def _run_cron(args: argparse.Namespace) -> int:
    from .cron import counts  # imports rq.cron (croniter) only for this command

    table = counts(_dedup(args).queue, namespace=args.namespace)
    lines = [f"{'CRON JOB':<48} {'ADMITTED':>9} {'SKIPPED':>8}"]
    lines += [f"{name[:48]:<48} {c['admitted']:>9} {c['skipped']:>8}" for name, c in table.items()]
    _emit(args, table, lines if table else ["no dedupkit.cron ticks on this queue yet"])
    return 0


def _config_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("-c", "--config", default=None, metavar="MODULE",
                   help="RQ settings module (as `rq worker -c`): REDIS_URL, or a SENTINEL dict")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("queue", metavar="QUEUE", help="RQ queue name")
    p.add_argument("--url", default=None,
                   help="Redis URL (default: the --config settings, else $REDIS_URL, else redis://127.0.0.1:6379/0)")
    _config_option(p)
    p.add_argument("--namespace", default="dedupkit", help="dedupkit key namespace (default dedupkit)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--prefix", default="job", help="job id prefix of the Deduplicator (default job)")


def _add_operator_commands(sub: Any) -> None:
    p = sub.add_parser("status", help="a key's slot, or the queue's sizes and counters")
    _common(p)
    p.add_argument("key", nargs="?", metavar="KEY")
    p.set_defaults(handler=_run_status)

    p = sub.add_parser("list", help="occupied slots, one HSCAN page at a time")
    _common(p)
    p.add_argument("--cursor", type=int, default=0, help="continue from this cursor")
    p.add_argument("--count", type=int, default=100, help="slots per page (HSCAN COUNT hint)")
    p.add_argument("--all", action="store_true", help="follow every page")
    p.set_defaults(handler=_run_list)

    p = sub.add_parser("cancel", help="cancel a key's queued/scheduled/deferred job (exit 1 if not)")
    _common(p)
    p.add_argument("key", metavar="KEY")
    p.add_argument("--stop-running", action="store_true", help="send RQ's stop command to a running job")
    p.set_defaults(handler=_run_cancel)

    p = sub.add_parser("stats", help="decision counters")
    _common(p)
    p.set_defaults(handler=_run_stats)

    p = sub.add_parser("sweep", help="delete slots whose job has ended, in small batches")
    _common(p)
    p.add_argument("--batch-size", type=int, default=100)
    p.set_defaults(handler=_run_sweep)

    p = sub.add_parser("adopt", help="give pending jobs from before dedupkit their key's slot")
    _common(p)
    p.add_argument("--id-pattern", required=True, help="old job ids, e.g. 'email_process_{key}_*'")
    p.set_defaults(handler=_run_adopt)

    p = sub.add_parser("requeue", help="failed jobs back through admission, never beside a pending job (exit 1 "
                       "unless every one was admitted)")
    _common(p)
    p.add_argument("job_ids", nargs="*", metavar="JOB_ID", help="failed jobs to requeue")
    p.add_argument("--all", action="store_true", help="every job in the queue's FailedJobRegistry")
    p.add_argument("--allow-eviction", action="store_true",
                   help="admit even if Redis's maxmemory-policy may evict keys")
    p.set_defaults(handler=_run_requeue)

    p = sub.add_parser("cron", help="ticks of dedupkit.cron jobs admitted and skipped (a pending run), per cron job")
    _common(p)
    p.set_defaults(handler=_run_cron)


SUBCOMMANDS: tuple[Callable[[Any], None], ...] = (_add_scheduler, _add_operator_commands)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dedupkit", description="At most one pending RQ job per key.")
    p.add_argument("--log-level", default=os.environ.get("DEDUPKIT_LOG_LEVEL", "INFO"),
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"], type=str.upper)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    handler: Handler = args.handler
    try:
        return handler(args)
    except (CliError, DedupkitError) as exc:
        print(f"dedupkit {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except RedisError as exc:  # one the library does not wrap (e.g. NOAUTH): still one line, never a traceback
        print(f"dedupkit {args.command}: error: Redis answered {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

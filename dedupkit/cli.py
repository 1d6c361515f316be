"""The ``dedupkit`` command. One subcommand per operator task; today: ``scheduler``.

    dedupkit scheduler --app myapp.schedule:make_scheduler --interval 60 [--url redis://...]

``--app module:factory`` names a callable returning a ``dedupkit.scheduler.Scheduler``.
It is called with ``redis_url=`` (the ``--url`` value, or None) when its signature takes
that parameter, and with no arguments otherwise; ``--interval`` and ``--batch-size``
override what it built. Add a subcommand by writing a ``_add_<name>`` function that
registers its parser and sets ``handler``.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from .scheduler import Scheduler

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


def build_scheduler(factory: Callable[..., Any], redis_url: str | None) -> Scheduler:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    takes_url = "redis_url" in params or any(p.kind is p.VAR_KEYWORD for p in params.values())
    if redis_url is not None and not takes_url:
        raise CliError("--url was given but the factory takes no redis_url parameter")
    result = factory(redis_url=redis_url) if takes_url else factory()
    if not isinstance(result, Scheduler):
        raise CliError(f"the factory returned {type(result).__name__}, not a dedupkit.scheduler.Scheduler")
    return result


def _run_scheduler(args: argparse.Namespace) -> int:
    if args.path:
        sys.path.insert(0, os.path.abspath(args.path))
    scheduler = build_scheduler(load_factory(args.app), args.url)
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
    p.add_argument("--url", default=os.environ.get("REDIS_URL"),
                   help="Redis URL passed to the factory as redis_url (default $REDIS_URL)")
    p.add_argument("--batch-size", type=int, default=None, help="requests per script call")
    p.add_argument("--max-ticks", type=int, default=None, help="stop after this many ticks (default: until signalled)")
    p.add_argument("--no-lease", action="store_true", help="tick on every replica (no leader election)")
    p.add_argument("--path", default=".", help="directory to import the app from (default: the current one)")
    p.set_defaults(handler=_run_scheduler)


SUBCOMMANDS: tuple[Callable[[Any], None], ...] = (_add_scheduler,)


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
    except CliError as exc:
        print(f"dedupkit {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

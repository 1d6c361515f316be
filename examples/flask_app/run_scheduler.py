"""Run the example's scheduler: ``python -m examples.flask_app.run_scheduler --interval 60``.

Every interval it admits each enabled user's next check (see scheduling.py); replicas
may run side by side (one leads through a Redis lease). SIGTERM or Ctrl-C stops it after
the current batch. Same as ``dedupkit scheduler --app examples.flask_app.scheduling:make_scheduler``.
"""

from __future__ import annotations

import argparse
import logging
import sys

from .scheduling import make_scheduler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="run_scheduler", description=__doc__.splitlines()[0])
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between ticks (default 60)")
    parser.add_argument("--url", default=None,
                        help="Redis URL (default: the SENTINEL of EMAIL_APP_RQ_CONFIG if set, else $REDIS_URL)")
    parser.add_argument("--db", default=None, help="SQLite path (default $EMAIL_APP_DATABASE)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s scheduler %(levelname)s %(message)s")
    make_scheduler(args.url, db_path=args.db, interval=args.interval).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())

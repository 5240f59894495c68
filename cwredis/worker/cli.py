"""``cw-worker`` / ``python -m cwredis.worker [REDIS_URL] [--concurrency N] [--queue NAME]... [--insecure]``.

A worker without a signing secret refuses to start (exit 1, one line on
stderr saying how to set one) unless ``--insecure``/``$CWREDIS_INSECURE=1``:
it would otherwise run whatever anyone who can write to Redis queues.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from .. import config, heap
from ..cli import version_line
from ..connection import setup_logging
from ..errors import ConfigError
from .supervisor import Worker


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cw-worker", description="Run cwredis jobs: block-pop job ids from Redis queues and run them.")
    parser.add_argument("url", nargs="?", default=None,
                        help="Redis URL (default: $CWREDIS_URL, then $CWREDIS_HOME/url, then redis://localhost:6379/0)")
    parser.add_argument("--version", action="version", version=version_line("cw-worker"))
    parser.add_argument("--concurrency", "-c", type=int, default=1, metavar="N",
                        help="run up to N jobs at once, each in its own child process (default 1)")
    parser.add_argument("--queue", "-q", action="append", metavar="NAME",
                        help="queue to serve; repeat for several, earlier names first "
                             "(default: $CWREDIS_QUEUES, comma-separated, else default)")
    parser.add_argument("--insecure", action="store_true",
                        help="run without a signing secret if none is set (also $CWREDIS_INSECURE=1): anyone "
                             "who can write to Redis can then run code as you")
    parser.add_argument("--burst", action="store_true", help="exit once the queues are empty and nothing runs")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.concurrency < 1:
        parser.error("--concurrency must be at least 1")
    setup_logging(args.log_level)
    heap.keep_freed_memory()  # a worker moves large payloads between Redis and its job processes
    try:
        url = config.resolve_url(args.url)
        secret = config.require_secret(args.insecure)
        worker = Worker(url, queues=args.queue or config.default_queues(), concurrency=args.concurrency,
                        burst=args.burst, secret=secret, secret_source=config.secret_source())
        return worker.run()
    except ConfigError as exc:
        print(f"cw-worker: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())

"""``cw-admin dashboard [--bind ADDR] [--port PORT] [--metrics-only]``: the web dashboard and /metrics.

The web stack is an extra (``pip install "cwredis[dashboard]"``), imported
only when this command runs, so cw-admin works without it and says how to
get it when it is missing.
"""

from __future__ import annotations

import argparse
from typing import Any

from .admin_sessions import UserError

#: What to install when the extra is missing.
INSTALL_HINT = 'the dashboard needs the "dashboard" extra: pip install "cwredis[dashboard]"'


def cmd_dashboard(inspector: Any, args: argparse.Namespace) -> int:
    try:
        from .dashboard.serve import serve
    except ImportError as exc:
        raise UserError(f"{INSTALL_HINT} ({exc.name or exc} is not installed)") from None
    try:
        return serve(inspector, bind=args.bind, port=args.port, metrics_only=args.metrics_only)
    except OSError as exc:
        raise UserError(f"cannot listen on {args.bind}:{args.port}: {exc.strerror or exc}") from None


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """The ``dashboard`` subcommand, on cw-admin's parser."""
    dash = sub.add_parser("dashboard", parents=[common], help="a live web dashboard and Prometheus /metrics")
    dash.add_argument("--bind", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this host "
                      "only); every request needs the printed token whatever the address")
    dash.add_argument("--port", type=int, default=0, help="port (default: any free one)")
    dash.add_argument("--url", default=argparse.SUPPRESS, help="Redis URL (as cw-admin's own --url)")
    dash.add_argument("--metrics-only", action="store_true", help="serve only /metrics, for a Prometheus scraper")
    dash.set_defaults(run=cmd_dashboard)

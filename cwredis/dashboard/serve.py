"""What ``cw-admin dashboard`` runs: bind, print the address with its token, serve until Ctrl-C.

The socket is bound here (not by uvicorn) so that ``--port 0`` -- any free
port -- is known before the address is printed and the cookie is named. The
access log is off: a logged ``?token=`` would hand the dashboard to whoever
reads the log.
"""

from __future__ import annotations

import signal
import socket
import threading
from typing import Any

import uvicorn

from .. import config
from ..inspector import Inspector
from .app import build_app
from .auth import Guard, load_token
from .sampler import Sampler
from .sessions import SessionTallies
from .views import Views


def _listen(bind: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((bind, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def address(bind: str, port: int, token: str, metrics_only: bool) -> str:
    """The URL to open (``/metrics`` for a scraper), with the token."""
    host = socket.getfqdn() if bind in ("0.0.0.0", "::") else bind
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}/{'metrics' if metrics_only else ''}?token={token}"


def serve(inspector: Inspector, *, bind: str, port: int, metrics_only: bool, announce: Any = print) -> int:
    """Serve the dashboard (or only /metrics) until SIGINT/SIGTERM; 0 when stopped."""
    token = load_token(config.cwredis_home())
    sock = _listen(bind, port)
    port = sock.getsockname()[1]
    guard = Guard(token, port)
    views = Views(inspector)
    stop = threading.Event()
    sampler = None
    if not metrics_only:
        sampler = Sampler(views, SessionTallies(inspector.redis, inspector.keys), stop)
        sampler.start()
    app = build_app(views, guard, sampler, metrics_only=metrics_only)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                           server_header=False))
    announce(f"cw-admin dashboard: open {address(bind, port, token, metrics_only)}  (Ctrl-C stops it)",
             flush=True)

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again for the old handler.
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        stop.set()
        sock.close()
    return 0

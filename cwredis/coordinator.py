"""The coordinator: ``cw-coordinator [REDIS_URL] [--lease-timeout S] [--data-dir DIR] [--bind ADDR] [--port PORT]``.

It holds no state. Each sweep it requeues the jobs of workers whose lease
expired (or fails them ``lost`` after max_attempts) and promotes delayed jobs
whose time has come -- each an idempotent Lua script, so two coordinators at
once do no harm and a coordinator killed mid-sweep loses nothing. Its cost
depends on the number of expired workers and due jobs, never on queue length.

Without a URL (and no ``$CWREDIS_URL``) it starts, supervises and stops the
embedded server (:mod:`cwredis.server`), restarting it if it dies.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading
from pathlib import Path
from typing import Any, Sequence

import redis

from .cli import version_line
from . import config
from .connection import connect, describe, is_server_full, is_transient, setup_logging
from .reachability import Reconnector, check_connection_budget
from .errors import LOST_ERROR, LOST_TRACEBACK, ConfigError
from .keys import DEFAULT_KEYS, Keys
from .scripts import Scripts
from .sentinel import PrimaryWatch
from .safefiles import ensure_private_dir, write_private
from .server import EmbeddedServer
from .signing import LOST_OUTCOME

log = logging.getLogger("cwredis.coordinator")

#: A worker whose lease expired this many lease timeouts ago (its jobs recovered by then) is forgotten:
#: soon, so that after a rack dies the sweeps do not keep visiting hundreds of dead workers (a worker
#: that was only frozen re-registers with its next claim).
FORGET_AFTER_LEASES = 1
#: Expired workers read per ZRANGEBYSCORE call; a sweep reads them all, page by page.
SWEEP_PAGE = 100

class Coordinator:
    """Sweeps one Redis; ``run`` loops until ``stop`` is set."""

    def __init__(self, url: str, *, lease_s: float = config.DEFAULT_LEASE_S, sweep_interval_s: float | None = None,
                 keys: Keys = DEFAULT_KEYS) -> None:
        if lease_s <= 0:
            raise ValueError("lease timeout must be positive")
        self.url = url
        self.lease_ms = int(lease_s * 1000)
        self.sweep_interval_s = sweep_interval_s or min(
            config.MAX_SWEEP_S, max(config.MIN_SWEEP_S, lease_s * config.SWEEP_FRACTION))
        self._keys = keys
        self._redis = connect(url, "coordinator")
        self._scripts = Scripts(self._redis, keys)
        self._failing: dict[str, str] = {}  # expired workers the last sweep could not recover -> error
        # After a failover the promoted replica may lack the workers' last lease renewals (they are
        # not waited for): give every worker one lease to renew there before declaring it dead.
        self._primary = PrimaryWatch(self._redis, hold_s=lease_s)

    def publish_settings(self) -> bool:
        """Tell workers the lease timeout (they renew every third of it); False if the server is full.

        A plain HSET is refused while the server is over its maxmemory; the
        sweeps must go on then (they are what drains it), so the caller tries
        again at the next pass, and workers keep the lease timeout they have.
        """
        try:
            self._redis.hset(self._keys.config, "lease_ms", str(self.lease_ms))
        except redis.ResponseError as exc:
            if not is_server_full(exc):
                raise
            log.warning("coordinator: cannot publish the lease timeout yet: %s", describe(exc))
            return False
        return True

    def sweep(self, now_ms: int | None = None) -> tuple[int, int, int]:
        """One pass: (jobs requeued, jobs failed as lost, delayed jobs promoted).

        Each expired worker is recovered on its own: an error for one (a kind
        of poison the scripts do not expect) is logged with its id and the
        pass goes on to the next and to promote; that worker stays expired and
        is tried again next pass. Only a transient error (Redis away) ends a
        pass early, for :meth:`run` to ride out.
        """
        if now_ms is None:
            seconds, micros = self._redis.time()
            now_ms = seconds * 1000 + micros // 1000
        requeued = lost = 0
        failing: dict[str, str] = {}
        expired = [] if self._primary.holding() else self._expired_workers(now_ms)
        for worker_id in expired:
            try:
                recovered = self._scripts.requeue_expired(
                    self._redis, worker_id=worker_id, forget_after_ms=FORGET_AFTER_LEASES * self.lease_ms,
                    result_ttl_ms=config.RESULT_TTL_S * 1000, lost_body=LOST_OUTCOME, lost_error=LOST_ERROR,
                    lost_traceback=LOST_TRACEBACK, now_ms=now_ms)
            except Exception as exc:
                if is_transient(exc):
                    raise
                failing[worker_id] = describe(exc)
                if self._failing.get(worker_id) != failing[worker_id]:  # once per worker and error, not every pass
                    log.error("cannot recover the jobs of expired worker %s (tried again every sweep): %s",
                              worker_id, failing[worker_id])
                continue
            if recovered.requeued or recovered.lost:
                log.warning("worker %s stopped renewing its lease: requeued %d job(s), failed %d as lost",
                            worker_id, recovered.requeued, recovered.lost)
            if recovered.dropped:
                log.warning("worker %s: dropped %d in-flight entry(ies) naming no job record (a key of another "
                            "type)", worker_id, recovered.dropped)
            requeued, lost = requeued + recovered.requeued, lost + recovered.lost
        self._failing = failing
        promoted = self._scripts.promote(self._redis, now_ms=now_ms)
        return requeued, lost, promoted

    def _expired_workers(self, now_ms: int) -> list[str]:
        """Every worker whose lease ran out by ``now_ms``, oldest first, read page by page.

        All of them, not a first page: workers the sweep cannot recover stay
        expired, and must not crowd out the others. (A lease renewed between
        two pages may shift one id past this pass; the next pass finds it.)
        """
        ids: list[str] = []
        while True:
            page: list[bytes] = self._redis.zrangebyscore(  # type: ignore[assignment]
                self._keys.workers, "-inf", now_ms, start=len(ids), num=SWEEP_PAGE)
            ids += [raw.decode(errors="replace") for raw in page]
            if len(page) < SWEEP_PAGE:
                return ids

    def run(self, stop: threading.Event, server: EmbeddedServer | None = None) -> None:
        reconnector = Reconnector(self.url, "coordinator", stop)
        log.info("coordinator: Redis %s, lease timeout %.1fs, sweeping every %.2fs",
                 config.mask_url(self.url), self.lease_ms / 1000, self.sweep_interval_s)
        check_connection_budget(self._redis, "coordinator")
        published = False
        while not stop.is_set():
            if server is not None and not server.alive():
                log.error("the embedded server died (exit code %s); restarting it", server.exit_code)
                try:
                    server.start()
                except ConfigError as exc:
                    log.error("cannot restart the server: %s", exc)
                    stop.wait(1.0)
                    continue
            try:
                if not published:
                    published = self.publish_settings()
                self.sweep()
                if reconnector.succeeded():
                    published = False  # a restarted server may have lost the setting
            except Exception as exc:
                if not is_transient(exc):
                    log.error("sweep failed: %s", describe(exc))
                    stop.wait(1.0)
                    continue
                published = False
                self._primary.failed()
                reconnector.failed(exc)
                continue
            stop.wait(self.sweep_interval_s)
        self._redis.close()


def publish_urls(server: EmbeddedServer) -> None:
    """Write ``$CWREDIS_HOME/url`` (mode 0600), after ``url.local`` (the Unix socket, for this host's roles).

    ``url.local`` first: it names the URL it stands for, so a role reading
    both in between uses it only once ``url`` matches (see
    :func:`cwredis.config.url_from_file`).
    """
    if server.socket_url:
        write_private(config.local_url_file(), json.dumps(
            {"host": socket.gethostname(), "url": server.url, "socket_url": server.socket_url}))
    else:
        config.local_url_file().unlink(missing_ok=True)
    write_private(config.url_file(), server.url + "\n")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cw-coordinator",
        description="Requeue the jobs of dead workers and promote delayed jobs. Without a URL, also run "
                    "the embedded server.")
    parser.add_argument("url", nargs="?", default=None, help="Redis URL (default: $CWREDIS_URL, else embedded server)")
    parser.add_argument("--version", action="version", version=version_line("cw-coordinator"))
    parser.add_argument("--lease-timeout", type=float, default=config.DEFAULT_LEASE_S, metavar="SECONDS",
                        help="requeue a worker's jobs when it has not renewed its lease for this long (default 30)")
    parser.add_argument("--sweep-interval", type=float, default=None, metavar="SECONDS",
                        help="seconds between sweeps (default: a tenth of the lease, 0.05..1)")
    parser.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                        help="embedded server: where it persists (default $CWREDIS_HOME, i.e. ~/.cwredis)")
    parser.add_argument("--bind", default="127.0.0.1", metavar="ADDR", help="embedded server: listen address")
    parser.add_argument("--port", type=int, default=None, metavar="PORT",
                        help="embedded server: port (default: the saved one if free, else a free one)")
    parser.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.lease_timeout <= 0:
        parser.error("--lease-timeout must be positive")
    setup_logging(args.log_level)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        log.info("coordinator: signal %d, stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    url = args.url or os.environ.get("CWREDIS_URL")
    server: EmbeddedServer | None = None
    try:
        # With any URL: workers and clients sharing this home are then signed with no setup.
        secret = config.ensure_secret()
        if not url:
            home = ensure_private_dir(config.cwredis_home(), "$CWREDIS_HOME")
            server = EmbeddedServer(args.data_dir or home, bind=args.bind, port=args.port)
            server.start()
            publish_urls(server)
            log.info("wrote %s (signing secret from %s)", config.url_file(), secret.source)
            url = server.local_url
        Coordinator(url, lease_s=args.lease_timeout, sweep_interval_s=args.sweep_interval).run(stop, server)
    except ConfigError as exc:
        print(f"cw-coordinator: {exc}", file=sys.stderr)
        return 1
    finally:
        if server is not None:
            server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

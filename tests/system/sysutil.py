"""Small helpers for the system tests in this folder (not fixtures, not job functions)."""

from __future__ import annotations

import importlib
import os
import socket
import threading
import uuid
from typing import Any

import redis

from harness import cw_admin, free_port, server_pids  # noqa: F401 (tests import them from here)


def unique(prefix: str) -> str:
    """A queue (or other) name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (free a moment ago)."""
    return free_port()


def port_is_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def assert_one_line_user_error(stderr: str, *, secret: str | None = None) -> None:
    """A user-facing error: exactly one non-empty line, no traceback, no password."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected a one-line message on stderr, got {len(lines)} lines:\n{stderr}"
    assert "Traceback" not in stderr, stderr
    if secret:
        assert secret not in stderr, f"password leaked on stderr: {stderr!r}"


class Outcomes:
    """Collects ClientThread callbacks, checking they run one at a time on one thread."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.results: dict[str, Any] = {}
        self.errors: dict[str, Any] = {}
        self.calls: list[tuple[str, str]] = []
        self.threads: set[threading.Thread] = set()
        self.max_active = 0
        self._active = 0
        self._lock = threading.Lock()
        self.changed = threading.Condition()

    def _enter(self) -> None:
        with self._lock:
            self._active += 1
            self.max_active = max(self.max_active, self._active)
            self.threads.add(threading.current_thread())
        if self.delay_s:
            import time

            time.sleep(self.delay_s)

    def _leave(self) -> None:
        with self._lock:
            self._active -= 1
        with self.changed:
            self.changed.notify_all()

    def on_result(self, jobid: str, result: Any) -> None:
        self._record("result", self.results, jobid, result)

    def on_error(self, jobid: str, error: Any) -> None:
        self._record("error", self.errors, jobid, error)

    def _record(self, kind: str, table: dict[str, Any], jobid: str, value: Any) -> None:
        self._enter()
        try:
            self.calls.append((kind, jobid))
            table[jobid] = value
        finally:
            self._leave()

    def outcome_count(self, jobid: str) -> int:
        return sum(1 for _, j in self.calls if j == jobid)

    def wait_for(self, jobid: str, timeout: float = 30) -> None:
        """Block until ``jobid`` has an outcome (result or error)."""
        import time

        deadline = time.monotonic() + timeout
        with self.changed:
            while jobid not in self.results and jobid not in self.errors:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no callback for job {jobid} within {timeout}s")
                self.changed.wait(min(left, 0.2))


def pings(url: str) -> bool:
    """Does the server at ``url`` answer PING (2 s timeouts)?"""
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


class UserModule:
    """A module of the user's own (outside site-packages), imported from ``tmp_path/code`` -- the working
    directory, as for a script run there -- and edited as a user fixes a bug (the fresh-code tests)."""

    def __init__(self, tmp_path: Any, monkeypatch: Any, name: str, source: str) -> None:
        code = tmp_path / "code"
        code.mkdir()
        self.path = code / f"{name}.py"
        self.path.write_text(source)
        monkeypatch.chdir(code)
        monkeypatch.syspath_prepend(str(code))
        self.mod = importlib.import_module(name)

    def edit(self, source: str) -> None:
        """Rewrite it a clock tick later, whatever the filesystem's timestamp resolution, and reload it here."""
        self.path.write_text(source)
        st = self.path.stat()
        os.utime(self.path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        importlib.reload(self.mod)

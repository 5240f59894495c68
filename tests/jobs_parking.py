"""Job functions for tests/system/test_child_parking.py (importable by the worker: tests/ is on the
client's sys.path, which the worker replays)."""

from __future__ import annotations

import os
import signal
import time


def _mark(path: str) -> int:
    """Append this process's pid to ``path``; how many lines it holds now."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{os.getpid()}\n".encode())
    finally:
        os.close(fd)
    with open(path) as f:
        return len(f.read().split())


def pid_of(path: str) -> int:
    """Note the process, return its pid."""
    _mark(path)
    return os.getpid()


def die_on_first_run(path: str) -> str:
    """SIGKILL the job process on the first run (noted in ``path``), return on the next."""
    if _mark(path) == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return "second run"


def mark_then_sleep(path: str, seconds: float) -> int:
    _mark(path)
    time.sleep(seconds)
    return os.getpid()

"""Job functions for the worker fault tests (``tests/system/test_worker_faults.py``).

Module-level functions of an importable module, so cloudpickle sends them by
reference; the worker finds this module through the client's ``sys.path``
(which holds ``tests/``). Marker files get one line per run, appended with
O_APPEND: ``pid ppid time [extra...]``.
"""

from __future__ import annotations

import os
import signal
import time

#: How long a forked grandchild holds its inherited pipes (far beyond any test's bound).
GRANDCHILD_SLEEP_S = 60


def _append_line(path, *extra: object) -> None:
    fd = os.open(os.fspath(path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        fields = [str(os.getpid()), str(os.getppid()), f"{time.time():.3f}", *map(str, extra)]
        os.write(fd, (" ".join(fields) + "\n").encode())
    finally:
        os.close(fd)


def echo(x):
    """Return ``x``: a function of its own, so a worker must load its record before running it."""
    return x


def _fork_sleeper(how: str) -> int:
    """Start a process that inherits every descriptor of this job process and sleeps; return its PID."""
    if how == "multiprocessing":
        import multiprocessing

        proc = multiprocessing.get_context("fork").Process(target=time.sleep, args=(GRANDCHILD_SLEEP_S,),
                                                          daemon=False)
        proc.start()
        return proc.pid
    pid = os.fork()
    if pid == 0:  # the grandchild: hold the inherited pipes, touch nothing else
        try:
            time.sleep(GRANDCHILD_SLEEP_S)
        finally:
            os._exit(0)
    return pid


def fork_then_die(path, how):
    """Fork a grandchild that keeps this process's pipes open, append a line ending
    with the grandchild's PID to ``path``, then die abruptly (every run).

    ``how``: ``"fork-sigkill"`` (``os.fork()``, then SIGKILL to itself) or
    ``"multiprocessing-segfault"`` (a fork-based ``multiprocessing.Process``,
    then a real segmentation fault).
    """
    grandchild = _fork_sleeper("multiprocessing" if how.startswith("multiprocessing") else "fork")
    _append_line(path, grandchild)
    if how.endswith("segfault"):
        import ctypes

        ctypes.string_at(0)  # SIGSEGV
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(GRANDCHILD_SLEEP_S)  # not reached

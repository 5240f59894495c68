"""Job functions for the failure-UX tests (importable by workers: tests/ is on the client's sys.path)."""

from __future__ import annotations

import builtins
import os
import time


class NeedsArgs(Exception):
    """An exception whose __init__ takes two arguments (RemoteError must not call it with its own)."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(f"code {code}: {detail}")
        self.code = code
        self.detail = detail


class Unpicklable(Exception):
    """An exception that cannot travel: pickling it raises."""

    def __reduce__(self):
        raise TypeError("this exception refuses to be pickled")


def raise_value_error(msg):
    raise ValueError(msg)


def raise_needs_args(code):
    raise NeedsArgs(code, "detail")


def raise_unpicklable():
    raise Unpicklable("stays remote")


def fail_if_odd(x):
    if x % 2:
        raise ValueError(f"odd {x}")
    return x * 10


def flaky(marker_path, failures, exc_name="ConnectionResetError"):
    """Raise ``exc_name`` on the first ``failures`` runs (counted in ``marker_path``), then return the run count."""
    with open(marker_path, "a") as f:
        f.write(f"{time.time()}\n")
    with open(marker_path) as f:
        runs = len(f.read().splitlines())
    if runs <= failures:
        raise getattr(builtins, exc_name)(f"run {runs}")
    return runs


def sleep_for(seconds):
    time.sleep(seconds)
    return os.getpid()


def report_then_sleep(seconds):
    """Report half-way progress at once, then sleep: a job that looks hung."""
    import cwredis

    cwredis.progress(0.5, "half way")
    time.sleep(seconds)
    return seconds

"""Job functions for the progress and output tests (importable by workers through the replayed sys.path)."""

from __future__ import annotations

import sys
import time

import cwredis


def report_then_sleep(seconds: float) -> str:
    cwredis.progress(0.5, "half way")
    time.sleep(seconds)
    return cwredis.current_job_id() or ""


def chatty(x: int) -> int:
    print(f"computing {x}")
    print(f"warning about {x}", file=sys.stderr)
    return x * 2


def chatty_failure() -> None:
    print("last words before failing")
    raise RuntimeError("kaput")


def slow_failure(seconds: float) -> None:
    time.sleep(seconds)
    raise RuntimeError("slow kaput")

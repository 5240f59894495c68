"""Job functions for the cwredis benchmarks.

They live at module level in an importable module (not ``__main__``) so that
cloudpickle sends them *by reference* (``jobs.noop``): workers import this
module through the client's ``sys.path``, which cwredis replays on the worker.
The payload per job is therefore just a name plus the arguments, which is what
a real user's job usually looks like.
"""

from __future__ import annotations

import time


def noop(x=None):
    """Do nothing; return the argument (so results can be checked)."""
    return x


def sleep(seconds: float = 0.05) -> float:
    """Sleep ``seconds`` (the fan-out benchmark's unit of work)."""
    time.sleep(seconds)
    return seconds


def size_of(payload: bytes) -> int:
    """The length of ``payload`` (the large-arguments benchmark: 1 MiB in, a number out)."""
    return len(payload)


def make_bytes(i: int, size: int = 1 << 20) -> bytes:
    """``size`` bytes distinct per ``i`` (the large-results benchmark: a number in, 1 MiB out)."""
    return i.to_bytes(8, "little") * (size // 8)

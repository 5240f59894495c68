"""Job functions used by the system tests under tests/system/.

Like ``helpers``, this module sits in ``tests/`` at module level, so
cloudpickle sends its functions by reference (``jobs_api.getcwd``) and the
worker imports it through the client's replayed ``sys.path``.
"""

from __future__ import annotations

import hashlib
import os
import random
import threading
import time


def getcwd():
    """The directory the job runs in."""
    return os.getcwd()


def getenv(name):
    """The job's value of environment variable ``name`` (None if unset)."""
    return os.environ.get(name)


def describe_call(*args, **kwargs):
    """Echo positional and keyword arguments back, as plain data."""
    return {"args": list(args), "kwargs": dict(kwargs)}


def measure(blob):
    """Length and SHA-256 of a (large) argument."""
    return len(blob), hashlib.sha256(blob).hexdigest()


def make_bytes(n, seed):
    """``n`` deterministic pseudo-random bytes: a large result the client can recompute."""
    return random.Random(seed).randbytes(n)


def append_line(path, text):
    """Append ``text`` as one line to ``path`` (O_APPEND: atomic for short lines); return it."""
    fd = os.open(os.fspath(path), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, f"{text}\n".encode())
    finally:
        os.close(fd)
    return text


def read_lines(path):
    try:
        with open(path) as f:
            return [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        return []


def touch_then(path, x):
    """Create ``path`` (proof the job ran), then return ``x``."""
    with open(path, "a"):
        pass
    return x


def return_lock():
    """A result that cannot be pickled."""
    return threading.Lock()


def identity(x):
    return x


def square_unless(x, bad):
    """``x * x``, except ``ValueError: boom`` for ``x == bad``."""
    if x == bad:
        raise ValueError("boom")
    return x * x


def sleep_square(x, unit=0.05):
    """``x * x`` after a sleep that shrinks as ``x`` grows: completions arrive out of order."""
    time.sleep(max(0.0, (5 - x % 5) * unit))
    return x * x


def fail_unless_exists(path):
    """``ValueError: boom`` until ``path`` exists; then ``"fixed"``."""
    if not os.path.exists(path):
        raise ValueError("boom")
    return "fixed"


class Nested:
    """Gives a job function a dotted qualname (``Nested.boom``)."""

    @staticmethod
    def boom():
        raise ValueError("boom")


def print_then_raise(output, message):
    """Print ``output``, then raise ValueError(``message``): both may carry terminal escapes."""
    print(output)
    raise ValueError(message)

"""What every command-line entry point shares: ``--version`` text and a quiet exit on a closed pipe.

``cw-admin failed | head`` closes our stdout early; Python then raises
BrokenPipeError on the next write (or on the final flush at exit) and
prints a traceback. A command-line tool should just stop, as ``cat`` does.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import sys
from typing import Iterator


def version_line(prog: str) -> str:
    """``cw-admin 1.0.0 (Python 3.11.2)``: the installed distribution's version, as pip reports it."""
    try:
        version = importlib.metadata.version("cwredis")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that is not installed
        from . import __version__ as version
    return f"{prog} {version} (Python {platform.python_version()})"


@contextlib.contextmanager
def quiet_broken_pipe() -> Iterator[None]:
    """Swallow BrokenPipeError on stdout: point fd 1 at /dev/null so the exit-time flush cannot raise again."""
    try:
        try:
            yield
        finally:
            sys.stdout.flush()  # a closed pipe shows here (--help included), not at interpreter exit
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)

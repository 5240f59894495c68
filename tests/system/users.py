"""Two unprivileged users for the trust-boundary tests: a victim and an attacker.

The tests run as root; ``setpriv --reuid/--regid --clear-groups`` runs a
command as a bare uid (no passwd entry needed). Each user gets its own HOME;
``CWREDIS_*`` variables of the test process are not passed on unless given.
Shared places live in :func:`scratch_dir`, a fresh world-writable sticky
directory under /tmp (like a cluster's scratch space), removed afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import pytest

#: Environment variables a user's process keeps from the test process.
KEPT_ENV = ("PATH", "PYTHONPATH", "LANG", "LC_ALL", "TZ")


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    home: Path  # $HOME

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run as this user."""
        return ["setpriv", f"--reuid={self.uid}", f"--regid={self.uid}", "--clear-groups", *map(str, argv)]

    def env(self, **extra: str) -> dict[str, str]:
        """A clean environment for this user: HOME, the test's PATH/PYTHONPATH, and ``extra``."""
        env = {name: os.environ[name] for name in KEPT_ENV if name in os.environ}
        env.update(HOME=str(self.home), PYTHONUNBUFFERED="1")
        env.update(extra)
        return env

    def run(self, argv: Sequence[str], timeout: float = 60, **extra_env: str) -> subprocess.CompletedProcess:
        """Run ``argv`` as this user to completion (output captured as text)."""
        return subprocess.run(self.argv(argv), env=self.env(**extra_env), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def owns(self, path: Path, mode: int) -> Path:
        """chown ``path`` to this user and chmod it ``mode``."""
        os.chown(path, self.uid, self.uid)
        os.chmod(path, mode)
        return path


def python_main(module: str, *args: str, umask: int | None = None, first: str = "") -> list[str]:
    """argv running ``python -m module args`` in this very process after ``os.umask(umask)`` and the
    Python statements ``first`` (which may use ``os.getpid()``: the role keeps that PID). The
    working directory is not put on sys.path (``-P``), as with a console script."""
    code = "; ".join([
        "import os, runpy, sys",
        *([f"os.umask({umask:#o})"] if umask is not None else []),
        *([first] if first else []),
        f"sys.argv = {[module, *args]!r}",
        f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)",
    ])
    return [sys.executable, "-P", "-c", code]


def require_root_and_setpriv() -> None:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("acting as two users needs root and setpriv")


def scratch_dir() -> Iterator[Path]:
    """A fresh /tmp directory, mode 1777, that both users can reach; removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="cw-scratch-", dir="/tmp"))
    path.chmod(0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def make_user(name: str, uid: int, scratch: Path) -> User:
    """A user whose HOME is a 0700 directory of its own in ``scratch``."""
    home = scratch / f"home-{name}"
    home.mkdir()
    user = User(name, uid, home)
    user.owns(home, 0o700)
    return user

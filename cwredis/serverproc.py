"""Knowing a server process again after our own restart, and one coordinator per data dir.

A coordinator killed with SIGKILL leaves its embedded server running (it runs
in a session of its own, so a Ctrl-C reaches only the coordinator). The next
coordinator on that data dir must not start a second server on the same
files: it finds the old one by the PID recorded in the data dir's state and
either adopts it or stops it. A PID alone could have been recycled for an
unrelated process, so the kernel's start time of the process (field 22 of
``/proc/PID/stat``, in clock ticks since boot) is recorded with it: the pair
names one process for the life of the machine.

:class:`DataDirLock` keeps a second coordinator off a data dir in use: a
``flock`` on ``coordinator.lock`` there, held as long as the coordinator runs
and dropped by the kernel when it dies however it dies. (The lock is the
coordinator's, not the server's: valkey-server is not ours to change, and an
orphaned server must not keep its next coordinator out.)
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import ConfigError

#: How often a stopping process not our child is looked at.
POLL_S = 0.05


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), or None if it is gone, a zombie, or /proc is absent."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat[stat.rfind(")") + 2:].split()  # the command name may hold spaces and ")"
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])  # field 22 of the whole line: starttime


@dataclass(frozen=True)
class ProcessId:
    """One process for the life of the machine: its PID and its start time."""

    pid: int
    ticks: int

    @classmethod
    def of(cls, pid: int) -> ProcessId | None:
        ticks = start_ticks(pid)
        return None if ticks is None else cls(pid, ticks)

    def is_alive(self) -> bool:
        """True while this very process runs (not a zombie; its PID not reused by another)."""
        return start_ticks(self.pid) == self.ticks

    def terminate(self, timeout_s: float) -> bool:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL; True if it stopped before the SIGKILL.

        For a process that is not our child (we cannot wait for it): its end
        is seen in /proc. Its new parent reaps it.
        """
        for sig, wait_s in ((signal.SIGTERM, timeout_s), (signal.SIGKILL, timeout_s)):
            if self.is_alive():
                try:
                    os.kill(self.pid, sig)
                except ProcessLookupError:
                    return True
            deadline = time.monotonic() + wait_s
            while self.is_alive() and time.monotonic() < deadline:
                time.sleep(POLL_S)
            if not self.is_alive():
                return sig == signal.SIGTERM
        raise ConfigError(f"process {self.pid} did not stop, even after SIGKILL")


class DataDirLock:
    """An exclusive ``flock`` on ``DATA_DIR/coordinator.lock``, which also holds the holder's PID."""

    def __init__(self, data_dir: Path) -> None:
        self.path = Path(data_dir) / "coordinator.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise ConfigError naming the coordinator that holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise ConfigError(f"another coordinator (pid {holder}) runs the server in {self.path.parent}; "
                                  "stop it first, or give this one another --data-dir") from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the flock
            self._fd = None

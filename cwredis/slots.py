"""A worker's child processes: one slot per unit of ``--concurrency``.

Each slot owns a long-lived ``python -m cwredis.child`` process and two pipes,
and runs one job at a time. For short jobs the worker writes a few more jobs
ahead into the child's pipe (``sent`` holds them, the running one first), so
the child goes on to the next the moment it finishes one -- no wait for the
worker's loop or its round trips to Redis. If the running job turns out long,
the worker asks for the ones ahead back ("unsend") and gives them to idle
children: a short job never waits behind a long one while a child is free.

The slot remembers which functions and which environment its child already
holds, so those are sent once per child, not once per job; if the child says
it lacks one (it evicted it, or failed to load it), the job is sent again in
full.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

from .job import Spec
from .scripts import Claimed


@dataclass
class Running:
    """An attempt assigned to a slot, with its verified payload; ``started`` once it heads the slot."""

    claimed: Claimed
    spec: Spec
    args: bytes = b""
    function: bytes = b""
    env: bytes = b""
    started: float = field(default_factory=time.monotonic)
    prefetched: bool = False  # claimed ahead: its start must be recorded (start.lua)
    direct: bool = False  # the child records the outcome itself (cwredis.outcomes)
    repark: bool = False  # ...and gives the worker's parking its room back

    def message(self, slot: "Slot") -> tuple[Any, ...]:
        """The child's "run" message; function and environment only if the child lacks them."""
        fn_digest, env_digest = self.claimed.function, self.spec.env
        direct = (self.claimed.token, self.spec.client, self.repark) if self.direct else None
        message = ("run", self.claimed.id, fn_digest, None if fn_digest in slot.functions else self.function,
                   self.args, env_digest, None if slot.env == env_digest else self.env, self.spec.forward_output,
                   direct)
        slot.functions.add(fn_digest)
        slot.env = env_digest
        return message

    @property
    def deadline(self) -> float | None:
        return None if self.spec.timeout_s is None else self.started + self.spec.timeout_s


#: A job is written ahead into a child's pipe only if its arguments are this
#: small: a full pipe (64 KiB) would block the worker's loop.
MAX_SEND_AHEAD_BYTES = 4096


class Slot:
    """One child process and the attempts written to it (``sent``: the running one first)."""

    def __init__(self, index: int, setup: tuple[Any, ...]) -> None:
        self.index = index
        self.setup = setup  # the child's first message: how to record outcomes itself
        self.sent: deque[Running] = deque()
        self.asked_back: set[str] = set()  # ids of jobs ahead we asked the child to give back
        self.proc: subprocess.Popen[bytes] | None = None
        self.inbox: Connection | None = None  # we write jobs here
        self.outbox: Connection | None = None  # we read outcomes here
        self.control: Connection | None = None  # we ask for jobs back here ("unsend")
        self.functions: set[str] = set()
        self.env: str | None = None
        self.spawn()

    def spawn(self) -> None:
        """Start a fresh child (after a kill, or at start), in a process group of its own.

        Its own group, so that killing it (a timeout, a second stop signal)
        also kills whatever processes the job started.
        """
        job_r, job_w = os.pipe()
        out_r, out_w = os.pipe()
        ctl_r, ctl_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cwredis.child", str(job_r), str(out_w), str(ctl_r)],
                pass_fds=(job_r, out_w, ctl_r), stdin=subprocess.DEVNULL, process_group=0)
        finally:
            os.close(job_r)
            os.close(out_w)
            os.close(ctl_r)
        self.inbox = Connection(job_w, readable=False)
        self.outbox = Connection(out_r, writable=False)
        self.control = Connection(ctl_w, readable=False)
        self.functions = set()
        self.env = None
        try:
            self.send(self.setup)
        except OSError:
            pass  # it died at once: the worker's loop sees its pipe close

    @property
    def job(self) -> Running | None:
        """The attempt the child is running, if any."""
        return self.sent[0] if self.sent else None

    def start(self, running: Running) -> None:
        """Write ``running`` to the child; its timeout counts from when it heads the slot."""
        self.sent.append(running)
        running.started = time.monotonic()
        self.resend(running)

    def resend(self, running: Running) -> None:
        try:
            self.send(running.message(self))
        except (OSError, ValueError, AssertionError):
            pass  # the child died: the worker's loop sees its pipe close and handles its jobs

    def take(self, job_id: str) -> Running | None:
        """Remove and return the sent attempt ``job_id`` (the next one then runs, from now)."""
        for index, running in enumerate(self.sent):
            if running.claimed.id == job_id:
                del self.sent[index]
                if index == 0 and self.sent:
                    self.sent[0].started = time.monotonic()
                return running
        return None

    def find(self, job_id: str) -> Running | None:
        return next((r for r in self.sent if r.claimed.id == job_id), None)

    def forget_cache(self) -> None:
        """The child lacks something we thought it held: send everything next time."""
        self.functions = set()
        self.env = None

    def send(self, message: tuple[Any, ...]) -> None:
        assert self.inbox is not None
        self.inbox.send(message)

    def ask_back(self, job_id: str) -> None:
        """Ask the child to give back ``job_id`` if it has not started it; it answers ("unsent", id, given_back)."""
        assert self.control is not None
        self.control.send(("unsend", job_id))

    def kill(self) -> int | None:
        """SIGKILL the child's process group (the job's own subprocesses too) and reap it; returns its exit code."""
        if self.proc is None:
            return None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        code = self.proc.wait()
        self.close_pipes()
        return code

    def exit_code(self) -> int | None:
        """The child's exit code after its pipe closed (waits briefly for it to be reaped)."""
        if self.proc is None:
            return None
        try:
            return self.proc.wait(timeout=1.0)
        except subprocess.TimeoutExpired:
            return self.kill()

    def close_pipes(self) -> None:
        for conn in (self.inbox, self.outbox, self.control):
            if conn is not None:
                try:
                    conn.close()
                except OSError:
                    pass
        self.inbox = self.outbox = self.control = None

    def shutdown(self, grace_s: float = 2.0) -> None:
        """Close the child's input so it exits between jobs; kill it if it lingers."""
        if self.inbox is not None:
            try:
                self.inbox.close()
            except OSError:
                pass
            self.inbox = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                self.kill()
        self.close_pipes()

"""One job process of a worker (a :class:`Slot`), and an attempt it holds (:class:`Running`).

Each slot owns a long-lived ``python -m cwredis.worker.child`` process,
its three pipes, and a pidfd. It runs one job at a time; for short jobs the
worker writes a few more ahead into the child's pipe (``sent`` holds them,
the running one first), so the child goes on to the next the moment it
finishes one. If the running job turns out long, the worker asks for the
ones ahead back (:class:`~cwredis.worker.protocol.Unsend`) and gives them to
idle children: a short job never waits behind a long one while a child is
free.

A child's death is seen on its **pidfd**, not only as end-of-file on its
pipe: a process the job forked may hold the pipe open for ever, but the
pidfd becomes readable the moment the child itself exits. (On a kernel
without pidfds, before Linux 5.3, the loop polls the process instead, at
least twice a second.) Killing a slot
kills its whole process group, so whatever the job started goes too.

The slot remembers which functions and which environment its child holds,
so those are sent once per child, not once per job; if the child says it
lacks one, the job is sent again in full.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field

from .. import config, job
from ..job import Spec
from ..script_types import Claimed
from .protocol import Direct, MessagePipe, Run, Setup, Unsend, write_all


@dataclass
class Running:
    """An attempt held by this worker, with its verified payload; ``started`` once it heads a slot."""

    claimed: Claimed
    spec: Spec
    args: bytes | memoryview = b""  # verified (a view into the claimed envelope), or job.STAGED_ARGS (staged)
    blobs: dict[str, bytes] = field(default_factory=dict)  # the argument blobs ``args`` names
    function: bytes = b""
    env: bytes = b""
    started: float = field(default_factory=time.monotonic)
    prefetched: bool = False  # claimed ahead: its start must be recorded (start.lua)
    direct: bool = False  # the child records the outcome itself (cwredis.worker.direct)
    repark: bool = False  # ...and gives the worker's parking its room back
    #: A large result may be recorded by the child even when not ``direct`` (protocol.Direct.only_large);
    #: never where outcomes must wait for a replica (a Sentinel URL: only the worker's recording WAITs).
    record_large: bool = True
    #: Taken by a parked child from its own inbox (cwredis.worker.parking): its payload stayed there.
    taken: bool = False

    @property
    def id(self) -> str:
        return self.claimed.id

    @property
    def staged(self) -> bool:
        """Its arguments are still the marker of arguments staged beside the job: its child reads and
        verifies them (:mod:`cwredis.worker.staged`)."""
        return self.args == job.STAGED_ARGS

    @property
    def payload_bytes(self) -> int:
        """What writing the job to a child sends: its arguments and the argument blobs they name."""
        return len(self.args) + sum(map(len, self.blobs.values()))

    @property
    def deadline(self) -> float | None:
        return None if self.spec.timeout_s is None else self.started + self.spec.timeout_s


#: Arguments at least this large are written to a child as raw bytes after their Run (Run.args_follow).
SEPARATE_ARGS_BYTES = 64 * 1024

#: The capacity asked for the pipes that carry jobs and results (Linux's default is 64 KiB): a 1 MiB
#: argument or result then crosses in one write and one read, instead of 16 of each with a switch
#: between the processes after every one.
PIPE_BYTES = 1 << 20


def _widen(fd: int) -> None:
    """Ask for a PIPE_BYTES pipe; where the system refuses (a lower ``/proc/sys/fs/pipe-max-size``,
    not Linux) the pipe keeps its size, which only costs speed."""
    try:
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_BYTES)
    except OSError:
        pass


class Slot:
    """One child process and the attempts written to it (``sent``: the running one first)."""

    def __init__(self, index: int, setup: Setup) -> None:
        self.index = index
        self.setup = setup._replace(slot=index)  # the child's first message: how to record outcomes, and park
        self.sent: deque[Running] = deque()
        self.asked_back: set[str] = set()  # ids of jobs ahead we asked the child to give back
        self.proc: subprocess.Popen[bytes] | None = None
        self.pidfd: int | None = None  # readable once the child has exited
        self.jobs: MessagePipe | None = None  # we write jobs here
        self.out: MessagePipe | None = None  # we read the child's messages here
        self.control: MessagePipe | None = None  # we ask for jobs back here
        self.functions: set[str] = set()
        self.env: str | None = None
        #: Functions whose result came back through this slot's pipe at DIRECT_RECORD_BYTES or more: from
        #: then on the child records their large results itself (a small job's Run carries no Direct).
        self.large_results: set[str] = set()
        self.spawn()

    def spawn(self) -> None:
        """Start a fresh child in a process group of its own (so a kill takes what the job started)."""
        job_r, job_w = os.pipe()
        out_r, out_w = os.pipe()
        ctl_r, ctl_w = os.pipe()
        for fd in (job_w, out_w):
            _widen(fd)
        attention = (self.setup.attention,) if self.setup.attention >= 0 else ()  # cwredis.worker.parking
        try:
            self.proc = subprocess.Popen(
                # -P: the child's own imports (cloudpickle...) never come from the worker's working
                # directory; child.py adds the client's cwd and sys.path for the job afterwards.
                [sys.executable, "-P", "-m", "cwredis.worker.child", str(job_r), str(out_w), str(ctl_r)],
                pass_fds=(job_r, out_w, ctl_r, *attention), stdin=subprocess.DEVNULL, process_group=0)
        finally:
            os.close(job_r)
            os.close(out_w)
            os.close(ctl_r)
        self.jobs = MessagePipe(job_w, readable=False)
        self.out = MessagePipe(out_r, writable=False)
        self.control = MessagePipe(ctl_w, readable=False)
        try:
            self.pidfd = os.pidfd_open(self.proc.pid)
        except (AttributeError, OSError):  # Linux before 5.3: Pool.exited polls the process instead
            self.pidfd = None
        self.functions = set()
        self.env = None
        self._send(self.setup)

    @property
    def job(self) -> Running | None:
        """The attempt the child is running, if any."""
        return self.sent[0] if self.sent else None

    @property
    def alive(self) -> bool:
        return self.out is not None

    def start(self, running: Running) -> None:
        """Write ``running`` to the child; its timeout counts from when it heads the slot."""
        self.sent.append(running)
        running.started = time.monotonic()
        self.resend(running)

    def resend(self, running: Running) -> None:
        """(Re)write a job, leaving out the function and environment the child already holds."""
        fn_digest, env_digest = running.claimed.function, running.spec.env
        # Not asked to record it: still, a large outcome of a function known to return them is recorded by the
        # child itself (protocol.Direct); the first one crosses the pipe and teaches us (Pool.read).
        returns_large = running.record_large and fn_digest in self.large_results
        direct = (Direct(running.claimed.token, running.claimed.generation, running.spec.client, running.repark,
                         only_large=not running.direct) if running.direct or returns_large else None)
        # Large arguments go as they are, after the message: never copied into a pickle (Run.args_follow).
        large = len(running.args) >= SEPARATE_ARGS_BYTES
        self._send(Run(running.id, fn_digest, None if fn_digest in self.functions else running.function,
                       b"" if large else bytes(running.args), env_digest,
                       None if self.env == env_digest else running.env, running.spec.forward_output, direct,
                       running.spec.retry_on, running.blobs or None, len(running.args) if large else 0,
                       running.claimed.spec if running.staged else ""))
        if large:
            self._write(running.args)
        self.functions.add(fn_digest)
        self.env = env_digest

    @property
    def may_park(self) -> bool:
        """The child may park on its own inbox once its running job ends (the job re-parks the worker,
        ``Running.repark``): its connection then waits in a blocking read, which a job written behind
        must not find (:mod:`cwredis.worker.parking`), so nothing is written ahead of such a job."""
        return any(running.repark for running in self.sent)

    def take(self, job_id: str) -> Running | None:
        """Remove and return the sent attempt ``job_id`` (the next one then runs, from now)."""
        for index, running in enumerate(self.sent):
            if running.id == job_id:
                del self.sent[index]
                if index == 0 and self.sent:
                    self.sent[0].started = time.monotonic()
                return running
        return None

    def find(self, job_id: str) -> Running | None:
        return next((r for r in self.sent if r.id == job_id), None)

    def forget_cache(self) -> None:
        """The child lacks something we thought it held: send everything next time."""
        self.functions = set()
        self.env = None

    def _write(self, data: bytes | memoryview) -> None:
        try:
            if self.jobs is not None:
                write_all(self.jobs.fileno(), data)
        except (OSError, ValueError):
            pass  # the child died: its pidfd tells the worker's loop, which handles its jobs

    def _send(self, message: Setup | Run) -> None:
        try:
            if self.jobs is not None:
                self.jobs.send(message)
        except (OSError, ValueError):
            pass  # the child died: its pidfd tells the worker's loop, which handles its jobs

    def ask_back(self, job_id: str) -> None:
        """Ask the child to give back ``job_id`` if it has not started it; it answers with Unsent."""
        try:
            if self.control is not None:
                self.control.send(Unsend(job_id))
        except (OSError, ValueError):
            pass  # the child died: its jobs come back through the death

    def kill(self) -> int | None:
        """SIGKILL the child's process group (the job's own processes too), reap it; its exit code."""
        code = None
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            code = self.proc.wait()
        self.close()
        return code

    def close(self) -> None:
        """Close the pipes and the pidfd (the process is reaped or about to be)."""
        for conn in (self.jobs, self.out, self.control):
            if conn is not None:
                try:
                    conn.close()
                except OSError:
                    pass
        self.jobs = self.out = self.control = None
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None

    def shutdown(self, grace_s: float = config.CHILD_SHUTDOWN_GRACE_S) -> None:
        """Close the child's job pipe so it exits between jobs; kill it (and its group) if it lingers."""
        if self.jobs is not None:
            try:
                self.jobs.close()
            except OSError:
                pass
            self.jobs = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        self.kill()  # also takes any process the last job left behind in the group

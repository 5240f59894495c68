"""The job process's mailbox: the jobs its worker writes to it, and the worker's requests to give one back.

Split from :mod:`cwredis.worker.child` (the job process's main loop), which
takes its next message from here: a :class:`~cwredis.worker.protocol.Run` or
:class:`~cwredis.worker.protocol.Setup` from the job pipe, or -- while the
process is parked on its own inbox (:mod:`cwredis.worker.child_parking`) --
:data:`INBOX` when that inbox answered first.
"""

from __future__ import annotations

import collections
import os
import select
import threading
from typing import Callable

from .protocol import ChildMessage, MessagePipe, Run, Setup, Unsend, Unsent, read_exactly


class Mailbox:
    """Jobs written to us, and the "unsend" protocol, with no hand-off between threads per job.

    The main thread waits for the job pipe to be readable, then reads it
    under ``_lock``. Requests to give a job back come on a pipe of their own,
    which a watcher thread reads -- it wakes only for those, never per job --
    and answers, while the main thread runs a job: it reads whatever jobs are
    waiting (under ``_lock``) and takes the one asked for out of the queue.
    Neither thread holds ``_lock`` while it blocks; when the watcher has read
    jobs out of the pipe, it wakes the main thread's wait through a pipe of
    its own, so a job it queued is never left behind an empty job pipe.
    """

    def __init__(self, inbox: MessagePipe, control: MessagePipe, send: Callable[[ChildMessage], None]) -> None:
        self._inbox = inbox
        self._control = control
        self._send = send
        self._jobs: collections.deque[Run | Setup | None] = collections.deque()
        self._lock = threading.Lock()
        # select.poll, not Connection.poll: that builds a selector on every call. One poll
        # object per thread: a poll object must not be polled by two threads at once.
        self._waiter = select.poll()  # the main thread's blocking wait
        self._peeker = select.poll()  # zero-timeout peeks, under _lock, from either thread
        for poller in (self._waiter, self._peeker):
            poller.register(inbox.fileno(), select.POLLIN)
        # The watcher may read jobs out of the pipe after the main thread found none queued and
        # before it waits on that pipe (at start-up, an Unsend can come before the first wait):
        # it then wakes the main thread through this pipe, or the job would wait there unseen.
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._waiter.register(self._wake_r, select.POLLIN)
        threading.Thread(target=self._watch, name="cw-mailbox", daemon=True).start()

    def _read_waiting(self) -> None:
        """Queue every message waiting in the job pipe (call with _lock held); None once it closed."""
        while self._peeker.poll(0):
            try:
                message = self._inbox.recv()
                if isinstance(message, Run) and message.args_follow:  # the worker writes them right after
                    message = message._replace(args=read_exactly(self._inbox.fileno(), message.args_follow),
                                               args_follow=0)
                self._jobs.append(message)
            except (EOFError, OSError):
                self._jobs.append(None)  # the worker is gone or closed us
                return

    def _watch(self) -> None:
        while True:
            try:
                request: Unsend = self._control.recv()
            except (EOFError, OSError):
                return
            with self._lock:
                if self._jobs and self._jobs[-1] is None:
                    return
                self._read_waiting()
                waiting = next((m for m in self._jobs if isinstance(m, Run) and m.job_id == request.job_id), None)
                if waiting is not None:
                    self._jobs.remove(waiting)
            try:
                os.write(self._wake_w, b"w")
            except BlockingIOError:  # the pipe is full of wakes: the main thread wakes anyway
                pass
            self._send(Unsent(request.job_id, waiting is not None))

    def next(self, inbox_fd: int | None = None) -> Run | Setup | None | object:
        """The next message to act on; None once the worker closed us; INBOX when ``inbox_fd`` (a parked
        child's socket, see child_parking) is readable and no message waits."""
        while True:
            with self._lock:
                if self._jobs:
                    return self._jobs.popleft()
            if inbox_fd is not None:
                self._waiter.register(inbox_fd, select.POLLIN)
            try:
                fired = self._waiter.poll()
            finally:
                if inbox_fd is not None:
                    self._waiter.unregister(inbox_fd)
            if any(fd == self._wake_r for fd, _ in fired):
                try:  # (read only when woken: a failed read costs an exception on every job)
                    os.read(self._wake_r, 4096)  # before looking at _jobs again: a later wake wakes the next wait
                except BlockingIOError:
                    pass
            with self._lock:
                self._read_waiting()
                if not self._jobs and any(fd == inbox_fd for fd, _ in fired):
                    return INBOX


#: What Mailbox.next returns when a parked child's inbox answered.
INBOX = object()

"""The one object that says how far a worker is in stopping; every wait in every thread watches it.

Three steps, each implying the ones before:

* ``graceful`` (first SIGTERM/SIGINT, or burst mode running dry): take no new
  job, finish the running ones;
* ``hard`` (a second signal): stop running jobs now, give them back;
* ``finished`` (the supervisor's loop has ended): helper threads, the lease
  renewal included, exit.

Waits use :meth:`wait`, which returns as soon as the given step is reached,
so no thread sleeps through a stop -- in a reconnect back-off included. The
main loop sleeps in ``poll`` on many pipes; :attr:`wake_fd` joins that poll
and becomes readable at every step (and on :meth:`wake`).
"""

from __future__ import annotations

import os
import threading
from enum import IntEnum


class Step(IntEnum):
    RUNNING = 0
    GRACEFUL = 1
    HARD = 2
    FINISHED = 3


class StopRequest:
    """How far the worker is in stopping; see the module docstring."""

    def __init__(self) -> None:
        self._step = Step.RUNNING
        # Reentrant: on_signal runs in the main thread, possibly while it is inside wait().
        self._changed = threading.Condition(threading.RLock())
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)

    @property
    def step(self) -> Step:
        return self._step

    @property
    def graceful(self) -> bool:
        """Take no new job."""
        return self._step >= Step.GRACEFUL

    @property
    def hard(self) -> bool:
        """Stop running jobs now."""
        return self._step >= Step.HARD

    @property
    def finished(self) -> bool:
        return self._step >= Step.FINISHED

    def advance(self, step: Step) -> None:
        """Move to ``step`` (never back)."""
        with self._changed:
            if step > self._step:
                self._step = step
                self._changed.notify_all()
        self.wake()

    def on_signal(self) -> None:
        """SIGTERM/SIGINT: the first asks for a graceful stop, any later one for a hard stop.

        Safe in a signal handler: the condition is never held across a wait by
        the main thread (it only polls :attr:`wake_fd`).
        """
        self.advance(Step.HARD if self.graceful else Step.GRACEFUL)

    def wait(self, step: Step, timeout_s: float) -> bool:
        """Sleep up to ``timeout_s``, or until ``step`` is reached; True if it is."""
        with self._changed:
            if self._step < step:
                self._changed.wait_for(lambda: self._step >= step, timeout=max(0.0, timeout_s))
            return self._step >= step

    @property
    def wake_fd(self) -> int:
        """Readable after :meth:`wake`; drain it with :meth:`drain`."""
        return self._wake_r

    def wake(self) -> None:
        """Wake the main loop's poll."""
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass  # the pipe is full: a wake is pending anyway

    def drain(self) -> None:
        try:
            os.read(self._wake_r, 4096)
        except (BlockingIOError, OSError):
            pass

    def close(self) -> None:
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

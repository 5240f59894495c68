"""A worker's job processes: one :class:`~cwredis.worker.slot.Slot` per unit of ``--concurrency``,
and the jobs waiting for one.

:class:`Pool` holds the slots and the ``ready`` FIFO of claimed jobs no child
has yet, and turns what children say into :class:`Event`\\ s for the
supervisor. Its state is guarded by the supervisor's lock (``Pool.lock``).
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Iterator, Union

from .. import config
from ..script_types import Claimed
from .protocol import CannotOpen, Err, Ok, Output, Progress, Recorded, Resend, Setup, Stale, Took, Unparked, Unsent
from .slot import Running, Slot


@dataclass
class Ended:
    """A child answered a job: ``reply`` is Ok/Err to record, or Recorded (the child recorded it)."""

    slot: Slot
    running: Running
    reply: Ok | Err | Recorded


@dataclass
class Died:
    """A child died; ``running`` is the job it had started (None if idle). Jobs written ahead went to ready."""

    slot: Slot
    running: Running | None
    exit_code: int | None


@dataclass
class Reported:
    """A running job's progress report."""

    running: Running
    fraction: float
    message: str | None


@dataclass
class Printed:
    """What a running job printed since its last report."""

    running: Running
    text: str


@dataclass
class Outdated:
    """A child found a module it loaded changed on disk, and started nothing more: replace it."""

    slot: Slot
    path: str


@dataclass
class LeftParking:
    """A parked child answered: Took (``running``: the job it now runs, or None: the worker verifies and runs
    it) or Unparked (see cwredis.worker.parking)."""

    slot: Slot
    message: Took | Unparked
    running: Running | None


@dataclass
class Unopened:
    """A child could not open a job's staged arguments and ran nothing of it (protocol.CannotOpen): the
    worker opens it. The job no longer heads the slot."""

    slot: Slot
    running: Running


Event = Union[Ended, Died, Reported, Printed, Outdated, LeftParking, Unopened]


class Pool:
    """The slots and the ``ready`` FIFO; every method that touches them runs with ``lock`` held."""

    def __init__(self, size: int, setup: Setup, lock: threading.Condition, *, slot: type[Slot] = Slot) -> None:
        self.lock = lock
        self.slots = [slot(i, setup) for i in range(size)]
        self.ready: deque[Running] = deque()

    # -- counts, for pacing -------------------------------------------------------

    def idle_count(self) -> int:
        return sum(1 for s in self.slots if s.job is None)

    def in_children(self) -> int:
        return sum(len(s.sent) for s in self.slots)

    def held(self) -> int:
        return len(self.ready) + self.in_children()

    def running(self) -> Iterator[Running]:
        return (job for s in self.slots if (job := s.job) is not None)

    def starving(self) -> bool:
        """A child has nothing to do and nothing waits for one."""
        return not self.ready and any(s.job is None for s in self.slots)

    def owned_ids(self) -> list[str]:
        return [r.id for s in self.slots for r in s.sent] + [r.id for r in self.ready]

    # -- what children say -----------------------------------------------------------

    def read(self, slot: Slot) -> list[Event]:
        """Everything ``slot``'s child has said since the last read; the jobs it gave back go first in line."""
        events: list[Event] = []
        given_back: list[Running] = []
        while slot.out is not None:
            try:
                message = slot.out.recv()
            except (EOFError, OSError):
                events.append(self.died(slot))
                break
            with self.lock:
                if isinstance(message, Progress):
                    if (running := slot.find(message.job_id)) is not None:
                        events.append(Reported(running, message.fraction, message.message))
                elif isinstance(message, Output):
                    if (running := slot.find(message.job_id)) is not None:
                        events.append(Printed(running, message.text))
                elif isinstance(message, Unsent):
                    slot.asked_back.discard(message.job_id)
                    if message.given_back and (running := slot.take(message.job_id)) is not None:
                        given_back.append(running)
                elif isinstance(message, Stale):
                    events.append(Outdated(slot, message.path))
                    break  # what else it said is moot: it is replaced, its jobs start again elsewhere
                elif isinstance(message, (Took, Unparked)):
                    events.append(self._left_parking(slot, message))
                elif isinstance(message, CannotOpen):
                    if (running := slot.take(message.job_id)) is not None:
                        events.append(Unopened(slot, running))
                elif isinstance(message, Resend):
                    if (running := slot.find(message.job_id)) is not None:
                        slot.forget_cache()
                        slot.resend(running)
                elif (running := slot.take(message.job_id)) is not None:
                    if isinstance(message, Ok) and len(message.result) >= config.DIRECT_RECORD_BYTES:
                        slot.large_results.add(running.claimed.function)
                    events.append(Ended(slot, running, message))
            if not slot.out.poll():
                break
        if given_back:
            with self.lock:
                self.ready.extendleft(reversed(given_back))
        return events

    @staticmethod
    def _left_parking(slot: Slot, message: Took | Unparked) -> LeftParking:
        """A parked child answered (lock held): a job it took and runs heads the slot from now."""
        running = None
        if isinstance(message, Took) and message.spec is not None:
            claimed = Claimed(message.job_id, message.token, message.spec_digest, message.function_digest, b"",
                              message.attempts, message.generation)
            running = Running(claimed, message.spec, started=message.started, direct=True, repark=True, taken=True)
            slot.sent.append(running)
        return LeftParking(slot, message, running)

    def died(self, slot: Slot) -> Died:
        """The child is gone (pidfd or pipe): reap it, kill what it left in its group, start another.

        Its running job is returned (the caller ends the attempt); jobs
        written ahead never started and go back to the front of ``ready``.
        """
        code = slot.kill()
        with self.lock:  # the new child is in place before anyone can start a job on this slot again
            head = slot.sent.popleft() if slot.sent else None
            self.ready.extendleft(reversed(slot.sent))
            slot.sent.clear()
            slot.asked_back.clear()
            slot.spawn()
        return Died(slot, head, code)

    def exited(self) -> list[Slot]:
        """Children that exited, among those without a pidfd (old kernels): polled on every turn of the loop."""
        return [s for s in self.slots if s.pidfd is None and s.proc is not None and s.alive
                and s.proc.poll() is not None]

    def expired(self, now: float) -> list[Slot]:
        """Slots whose running job is past its timeout."""
        return [s for s in self.slots if (job := s.job) is not None and (d := job.deadline) is not None and now >= d]

    def ask_back_stuck(self, stuck_before: float) -> None:
        """Jobs written ahead wait behind one that started before ``stuck_before``: ask for them back."""
        with self.lock:
            for slot in self.slots:
                if len(slot.sent) > 1 and slot.sent[0].started < stuck_before:
                    for running in list(slot.sent)[1:]:
                        if running.id not in slot.asked_back:
                            slot.asked_back.add(running.id)
                            slot.ask_back(running.id)

    # -- stopping ------------------------------------------------------------------------

    def take_all_sent(self) -> list[Running]:
        """Kill every busy child now and return the jobs they held (a hard stop)."""
        taken: list[Running] = []
        for slot in self.slots:
            if slot.sent:
                slot.kill()
                with self.lock:
                    taken += slot.sent
                    slot.sent.clear()
        return taken

    def shutdown(self) -> None:
        """Stop every child: idle ones exit between jobs, busy ones are killed."""
        for slot in self.slots:
            if slot.job is None:
                slot.shutdown()
            else:
                slot.kill()

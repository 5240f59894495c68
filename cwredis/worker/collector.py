"""The wait-and-collect phase of a worker's loop: listening to the job processes, and acting on what they said.

The loop says how long it may sleep (the next deadline); the collector
waits that long at most on every child's pipe and pidfd, the stop request
and the parked children's attention pipe. Each child that spoke or died
yields typed events (:mod:`~cwredis.worker.pool`), and this is where each is
acted on: a job's end (recorded by us or by its child, and a parked child's
re-parking), a child's death, a progress report or output, stale code, a
parked child's answer (a job it took, or not). It is separate from the loop
because it is the worker's bookkeeping of its job processes: the loop
decides *when* to listen, this what each answer means.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from typing import Protocol

from ..script_types import Claimed
from . import pacing
from .attempts import Attempts
from .cutoffs import Cutoffs
from .intake import Intake
from .link import LinkDown
from .parking import Parking, has_words
from .pool import Died, Ended, Event, LeftParking, Outdated, Pool, Printed, Reported, Unopened
from .protocol import Err, Ok, Recorded, Took, Unparked
from .slot import Running, Slot
from .stop import StopRequest

log = logging.getLogger("cwredis.worker")


class Tally(Protocol):
    """What the collector keeps on the supervisor: the counts and the measured job length pacing reads."""

    worker_id: str
    jobs_done: int
    avg_job_s: float

    def mark_started(self, running: Running) -> None:
        """A job heads its child now; if it was claimed ahead, charge its attempt (lock held)."""


class Collector:
    """Acts on the pool's events for one worker; see the module docstring."""

    def __init__(self, pool: Pool, lock: threading.Condition, attempts: Attempts, parking: Parking,
                 cutoffs: Cutoffs, intake: Intake, stop: StopRequest, host: Tally) -> None:
        self._pool = pool
        self._lock = lock
        self._attempts = attempts
        self._parking = parking
        self._cutoffs = cutoffs
        self._intake = intake
        self._stop = stop
        self._host = host

    def wait_and_collect(self, sleep_s: float) -> None:
        """Sleep until a child speaks or dies, a deadline comes, or the stop request wakes us."""
        # A fresh poll object each time: cheaper than multiprocessing's wait(). Every child
        # is watched, idle ones too: the fetcher may start a job on one while we sleep here.
        poller = select.poll()
        watched: dict[int, tuple[Slot, bool] | None] = {self._stop.wake_fd: None, self._parking.attention_fd: None}
        for slot in self._pool.slots:
            if slot.out is not None and not self._parking.quiet(slot):
                watched[slot.out.fileno()] = (slot, False)
            if slot.pidfd is not None:
                watched[slot.pidfd] = (slot, True)
        for fd in watched:
            poller.register(fd, select.POLLIN)
        fired: dict[Slot, bool] = {}
        for fd, _ in poller.poll(sleep_s * 1000):
            if (target := watched[fd]) is None:
                self._stop.drain()
                self._parking.drain()
            else:
                fired[target[0]] = fired.get(target[0], False) or target[1]
        for slot in self._pool.exited():  # no pidfd (an old kernel): polled
            fired[slot] = True
        for slot in self._parking.spoke(self._pool.slots):  # not waited on (see parking): looked at every turn
            fired.setdefault(slot, False)
        for slot, exited in fired.items():
            # An exited child is handled as dead even if a process it forked holds its pipe open -- but a
            # parked one's last words are read first: a Took puts the job it took at the head of the slot.
            events = self._pool.read(slot) if exited and self._parking.holds(slot) and has_words(slot) else []
            if exited and not any(isinstance(e, Died) for e in events):
                events.append(self._pool.died(slot))
            for event in (events if exited else self._pool.read(slot)):
                self.handle(event)

    def handle(self, event: Event) -> None:
        """Act on what the pool saw: a job's end, a child's death, a progress report or output, stale code,
        a parked child's answer, a job a child could not open."""
        if isinstance(event, LeftParking):
            self._left_parking(event)
        elif isinstance(event, Unopened):
            with self._lock:
                self._next_in(event.slot)
            self._intake.open_staged(event.running)
        elif isinstance(event, Reported):
            self._attempts.report(event)
        elif isinstance(event, Printed):
            self._attempts.printed(event)
        elif isinstance(event, Outdated):
            log.info("worker %s: %s changed on disk; replacing the job process that loaded it", self._host.worker_id,
                     event.path)
            died = self._pool.died(event.slot)  # a new process; jobs written ahead go back first in line
            if died.running is not None and died.running.taken:  # its payload was the old child's: give it back
                self._attempts.give_back(died.running)
            elif died.running is not None:  # it never started: first in line, same attempt
                with self._lock:
                    self._pool.ready.appendleft(died.running)
        elif isinstance(event, Ended):
            with self._lock:
                if isinstance(event.reply, Recorded) and event.reply.parked:
                    self._parking.parked(event.slot)
                    if self._stop.graceful or self._intake.quarantined:
                        self._parking.want_all()
                self._next_in(event.slot)
            self._finish_attempt(event.running, event.reply)
        elif event.running is None:
            log.warning("worker %s: an idle child died (exit code %s); started another", self._host.worker_id,
                        event.exit_code)
            with self._lock:
                if self._parking.died(event.slot):  # it was parked: a job handed to it may wait unread
                    self._intake.needs_reconcile = True
        else:
            self._host.jobs_done += 1
            self._attempts.cut_short(event.running, "lost",
                                f"the process running the job died (exit code {event.exit_code})", 0)

    def _next_in(self, slot: Slot) -> None:
        """The slot's job is gone from it: the one written ahead starts now, or the child is idle (lock held)."""
        if (head := slot.job) is not None:
            self._host.mark_started(head)
        else:
            self._lock.notify_all()  # an idle child: the fetcher may wait on the queue for it

    def _left_parking(self, event: LeftParking) -> None:
        """A parked child answered: it took a job (runs it, or leaves it to us to verify), or it did not."""
        message = event.message
        with self._lock:
            failed = isinstance(message, Unparked) and (message.failed or message.garbled)
            self._parking.left(event.slot, listed=failed)
            if failed:  # a job handed to it may wait unread in our in-flight list
                self._intake.needs_reconcile = True
            if event.running is not None:
                self._intake.taken_by_child()  # (a job left to us counts when the intake takes it)
            self._lock.notify_all()  # an idle child again (Unparked), or our room changed
        if (running := event.running) is not None:  # it heads its slot now: timeouts and cancels see it
            with self._lock:
                if self._parking.cancelled(running.id):
                    self._cutoffs.cancel_taken(running.id)  # asked before its Took reached us
        elif isinstance(message, Took):
            claimed = Claimed(message.job_id, message.token, message.spec_digest, message.function_digest,
                              message.args, message.attempts, message.generation)
            try:
                self._intake.take_from_child(claimed)
            except LinkDown:  # its records could not be loaded: the reconciliation gives it back
                pass

    def _finish_attempt(self, running: Running, reply: Ok | Err | Recorded) -> None:
        """A child's reply ends an attempt: Ok/Err to record, or Recorded by the child itself."""
        ended = reply.ended if isinstance(reply, Recorded) and reply.ended else time.monotonic()  # read late?
        self._host.avg_job_s = pacing.average(self._host.avg_job_s, ended - running.started)
        self._host.jobs_done += 1
        if not isinstance(reply, Recorded):
            self._attempts.record(running, reply)
            return
        self._attempts.recorded(running)
        with self._lock:
            if running.repark and reply.room:
                self._intake.room = reply.room  # the child re-parked us: the fetcher waits on the inbox
                if self._stop.graceful:
                    self._intake.needs_reconcile = True  # re-parked as we stop: unpark
            else:
                self._intake.queues_empty = False  # not parked (a job was queued meanwhile?): claim
            self._lock.notify_all()
        if not reply.accepted:
            log.warning("job %s: outcome dropped: this attempt no longer owns the job (lease expired)", running.id)

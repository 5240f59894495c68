"""Jobs the worker cuts short: timeouts and cancellations, two phases of the supervisor's loop.

A timeout kills the job's whole process group (the slot gets a new child)
and ends the attempt ``timeout``, retried with back-off while attempts
remain. A cancellation (``x:<id>`` in the worker's inbox, put there by
cancel.lua) drops a job waiting in ``ready``, asks back one written ahead
into a child's pipe (it is looked at again once it returns or starts), or
kills a running one; each ends ``cancelled``. An id we do not hold has
finished already -- its outcome is the one delivered -- unless a parked job
process has just taken it and its ``Took`` has not reached us: parking keeps
such ids for a few seconds (:meth:`~cwredis.worker.parking.Parking.keep_cancels`).
"""

from __future__ import annotations

import threading
import time

from .attempts import Attempts, retry_delay_s
from .parking import Parking
from .pool import Died, Pool
from .stop import StopRequest


class Cutoffs:
    """Ends the attempts of jobs that ran out of time or were cancelled; the counts are jobs ended."""

    def __init__(self, pool: Pool, lock: threading.Condition, attempts: Attempts, parking: Parking,
                 stop: StopRequest) -> None:
        self._pool = pool
        self._lock = lock
        self._attempts = attempts
        self._parking = parking
        self._stop = stop
        self._cancels: set[str] = set()  # jobs to stop (cancel.lua asked, through our inbox)

    def cancel(self, job_ids: list[str]) -> None:
        """Stop these jobs if we hold them (from the fetcher or a claim reply); the loop acts at once."""
        with self._lock:
            self._cancels.update(job_ids)
        self._stop.wake()

    def cancel_taken(self, job_id: str) -> None:
        """A parked child took a job whose cancellation came before its Took (lock held)."""
        self._cancels.add(job_id)

    def enforce_timeouts(self) -> int:
        """Kill the jobs past their timeout; each attempt ends ``timeout`` (retried while attempts remain)."""
        ended = 0
        for slot in self._pool.expired(time.monotonic()):
            died: Died = self._pool.died(slot)  # kills the job's whole process group
            if (running := died.running) is None:
                continue
            ended += 1
            delay = retry_delay_s(running.claimed.attempts)
            self._attempts.cut_short(running, "timeout",
                                     f"the job ran longer than its timeout of {running.spec.timeout_s:g}s", delay)
        return ended

    def enforce_cancels(self) -> int:
        """Jobs whose cancellation was asked: a waiting one is dropped, a running one's process group killed;
        each ends ``cancelled``. One written ahead is asked back first (it ends when it returns or starts);
        an id we do not hold (finished already) is forgotten: its outcome is the one delivered."""
        if not self._cancels:
            return 0
        pool = self._pool
        with self._lock:
            ids, self._cancels = self._cancels, set()
            waiting = [r for r in pool.ready if r.id in ids]
            for running in waiting:
                pool.ready.remove(running)
            heads = [s for s in pool.slots if (j := s.job) is not None and j.id in ids]
            held = {r.id for s in pool.slots for r in s.sent} | {r.id for r in waiting}
            self._parking.keep_cancels(ids - held)  # one may name a job a parked child just took
            for slot in pool.slots:
                for running in list(slot.sent)[1:]:
                    if running.id in ids:
                        self._cancels.add(running.id)  # looked at again once back in ready, or started
                        if running.id not in slot.asked_back:
                            slot.asked_back.add(running.id)
                            slot.ask_back(running.id)
        for running in waiting:
            self._attempts.cancelled(running)
        ended = 0
        for slot in heads:
            died = pool.died(slot)  # the job's whole process group, as for a timeout
            if died.running is not None:
                ended += 1
                self._attempts.cancelled(died.running)
        return ended

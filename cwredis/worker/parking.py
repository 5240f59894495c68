"""The worker's side of child-level parking: which job processes wait on inboxes of their own.

A job process that recorded a job's outcome itself and re-parked its worker
parks on its own inbox (:mod:`cwredis.worker.child_parking`; park.lua lists
it in ``parked_children`` in the same step), and submit.lua hands the next
job for this worker to it directly. The worker still owns every job its
children run: the child tells it before the job starts
(:class:`~cwredis.worker.protocol.Took`), and the pool puts the job at the
head of that slot as if the worker had written it there -- so its lease,
timeout, cancellation, a death of its process, and reconciliation work as
for any job.

The loop does not wait on a parked child's pipe -- a wake-up of the worker
per job, while the job runs, competes with it for a core: waiting on the
pipe cost about 8 % of a lone job's latency on two cores -- but looks at it
on every turn, and a child that took a job the loop must see
at once -- one with a timeout, or one it leaves to the worker -- or sent an
outcome for the worker to record, writes a byte to the attention pipe the
loop does wait on. A job's timeout counts from when the child took it.
Otherwise the worker learns of a job within ``WORKER_IDLE_TICK_S``.

Until a parked child answers, the worker cannot know whether it holds a job,
so:

* a parked slot gets nothing through its pipe; when jobs wait and only
  parked children are idle, they are called back (unpark_children.lua
  unlists them and pushes "u" into their inboxes, in one step);
* a reconciliation (which gives back every in-flight job the worker does not
  hold), a graceful stop and a quarantine first call every parked child
  back and wait for the answers;
* a cancellation of a job the worker does not hold is kept a moment
  (``CANCEL_KEEP_S``) while children are parked: it may name a job a child
  just took, whose Took is on its way;
* a parked child that dies, or whose connection fails, may leave a handed
  job unread in the in-flight list: the worker reconciles (it goes back
  unrun, refunded), and unlists the child at the next unpark;
* a called-back child that has not answered within ``ANSWER_WITHIN_S`` is
  stuck: the worker replaces it and reconciles, so a job it held does not
  wait in the in-flight list of a live worker for ever.
"""

from __future__ import annotations

import os
import select
import time
from typing import Iterable

from .link import Link, LinkDown
from .slot import Slot

#: How long a cancellation of a job the worker does not hold is kept while children are parked.
CANCEL_KEEP_S = 5.0

#: A child inbox holding a stale "u" expires after this long (unpark_children.lua).
INBOX_TTL_MS = 3_600_000

#: A called-back child answers within a round trip; one silent this long is stuck and is replaced.
ANSWER_WITHIN_S = 30.0


class Parking:
    """The parked slots and the calls that bring them back; see the module docstring. Lock held by callers
    of every method but :meth:`unpark_due` and :meth:`unlist_all` (which make a round trip)."""

    def __init__(self, link: Link) -> None:
        self._link = link
        # Every child gets the write end (Setup.attention): a parked one that took a job the loop must see
        # now (a timeout to enforce, an outcome to record) writes a byte, which wakes the loop.
        self._attention_r, self.attention_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._parked: dict[int, bool] = {}  # slot index -> an unpark was sent to it
        self._called: dict[int, float] = {}  # slot index -> when the unpark was sent (time.monotonic())
        self._unlist: set[int] = set()  # children perhaps still listed but not reading: unlist at the next unpark
        self._wanted = 0  # parked children wanted back for jobs waiting (dispatch)
        self._all = False  # every parked child wanted back (reconcile, stop, quarantine)
        self._cancels: dict[str, float] = {}  # job id -> until when its cancellation is kept
        self._retry_at = 0.0

    # -- state ----------------------------------------------------------------------------

    def holds(self, slot: Slot) -> bool:
        """Is this slot's child parked on its inbox (or not yet answered an unpark)?"""
        return slot.index in self._parked

    def quiet(self, slot: Slot) -> bool:
        """Parked, and not called back: its pipe is looked at on every turn of the loop, not waited on."""
        return self._parked.get(slot.index) is False

    @property
    def attention_fd(self) -> int:
        """Readable when a parked child asked for the loop's attention; drain it with :meth:`drain`."""
        return self._attention_r

    def drain(self) -> None:
        try:
            os.read(self._attention_r, 4096)
        except BlockingIOError:
            pass

    def close(self) -> None:
        for fd in (self._attention_r, self.attention_w):
            os.close(fd)

    def spoke(self, slots: Iterable[Slot]) -> list[Slot]:
        """The quiet slots whose pipe holds something (one poll for them all, no wait)."""
        quiet = {slot.out.fileno(): slot for slot in slots if slot.out is not None and self.quiet(slot)}
        if not quiet:
            return []
        poller = select.poll()
        for fd in quiet:
            poller.register(fd, select.POLLIN)
        return [quiet[fd] for fd, _ in poller.poll(0)]

    def count(self) -> int:
        return len(self._parked)

    def parked(self, slot: Slot) -> None:
        """The child re-parked its worker and parked on its inbox (Recorded.parked)."""
        self._parked[slot.index] = False

    def left(self, slot: Slot, *, listed: bool) -> None:
        """The child answered (Took or Unparked); ``listed``: it may still be listed (its read failed)."""
        self._parked.pop(slot.index, None)
        self._called.pop(slot.index, None)
        if listed:
            self._unlist.add(slot.index)

    def died(self, slot: Slot) -> bool:
        """The slot's child died; True if it was parked (a job may wait unread: reconcile)."""
        self._called.pop(slot.index, None)
        if self._parked.pop(slot.index, None) is None:
            return False
        self._unlist.add(slot.index)
        return True

    # -- calling children back --------------------------------------------------------------

    def want(self, jobs: int) -> None:
        """Jobs wait and only parked children are idle: call that many back."""
        self._wanted = max(self._wanted, jobs)

    def want_all(self) -> None:
        self._all = True

    def unpark_due(self) -> None:
        """Send the unparks asked for (one round trip); on failure, try again a moment later."""
        now = time.monotonic()
        if now < self._retry_at:
            return
        waiting = [i for i, sent in self._parked.items() if not sent]
        chosen = waiting if self._all else waiting[:self._wanted]
        if not chosen and not self._unlist:
            self._wanted, self._all = 0, False
            return
        indices = sorted(set(chosen) | self._unlist)
        try:
            self._link.unpark_children(indices, INBOX_TTL_MS)
        except LinkDown as down:
            self._retry_at = now + self._link.failed(down)
            return
        for i in chosen:
            self._parked[i] = True
            self._called[i] = now
        self._unlist.difference_update(indices)
        self._wanted = max(0, self._wanted - len(chosen))
        self._all = False

    def silent(self, now: float) -> list[int]:
        """The slots called back more than ANSWER_WITHIN_S ago that have not answered: a healthy child's
        blocking read returns the moment its "u" is pushed, so such a child is stuck (the worker replaces
        it, and reconciles: a hand-off it may hold goes back to its queue)."""
        return [i for i, at in self._called.items() if now - at > ANSWER_WITHIN_S]

    def unlist_all(self) -> None:
        """Stopping, children gone: take any still listed off the parked list (best effort: we are leaving)."""
        indices = sorted(set(self._parked) | self._unlist)
        if not indices:
            return
        try:
            self._link.unpark_children(indices, INBOX_TTL_MS)
        except LinkDown:
            pass
        self._parked.clear()
        self._unlist.clear()

    # -- cancellations that may be on their way to a parked child's job ----------------------------

    def keep_cancels(self, job_ids: Iterable[str]) -> None:
        """Cancellations of jobs we do not hold: kept a moment if a parked child may have just taken one."""
        now = time.monotonic()
        self._cancels = {i: t for i, t in self._cancels.items() if t > now}
        if self._parked:
            self._cancels.update(dict.fromkeys(job_ids, now + CANCEL_KEEP_S))

    def cancelled(self, job_id: str) -> bool:
        """Was this job (just taken by a child) asked to be cancelled meanwhile?"""
        return self._cancels.pop(job_id, 0.0) > time.monotonic()


def has_words(slot: Slot) -> bool:
    """Does the slot's pipe hold something to read now? (For a parked child that died: its last words.)"""
    try:
        return slot.out is not None and slot.out.poll()
    except OSError:
        return False

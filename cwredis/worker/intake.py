"""How jobs come into a worker: claims, the inbox of hand-offs, and giving back what it cannot run.

The **fetcher** thread (:meth:`Intake.run`) works only while a child would
otherwise sit idle -- nothing ready, and the last claim came up short. It
claims; a claim that finds the queues empty *parks* the worker in the same
atomic step (claim.lua), and the fetcher then blocks on ``BLMPOP`` of the
worker's inbox, never polling. There ``submit.lua`` hands it new jobs already
claimed for it (charged an attempt, since they start at once on an idle
child), and other paths that queue a job push a "wake", which the fetcher
answers with a claim. The supervisor's loop claims too, in the same round
trip as it records outcomes (:meth:`accept_claimed` serves both).

Claims and reconciliations are serialised by ``claim_lock``, so jobs start in
the order they were taken and a reconciliation knows every job we hold. The
inbox is read outside it (a blocking read must not hold up the loop's claims):
a hand-off read across a reconciliation is confirmed with the server before it
runs, and a reconciliation, which unparks us, wakes the fetcher through the
inbox so it claims and parks afresh at once.

Whether a job taken may run -- verified, or failed as corrupt, or rejected
(and the quarantine of a worker with the wrong secret) -- is
:mod:`~cwredis.worker.admission`'s to say.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Protocol

from .. import config
from ..script_types import ClaimReply, Claimed
from ..signing import Signer
from .admission import Admission
from .ledger import Ledger
from .lease import Lease
from .link import Handed, Link, LinkDown
from .pool import Pool
from .slot import Running
from .protocol import Err
from .stop import Step, StopRequest

log = logging.getLogger("cwredis.worker")


class Host(Protocol):
    """What the intake sees of the supervisor."""

    def hunger(self) -> int:
        """How many more jobs to claim now (call with the lock held)."""

    def starting_now(self) -> int:
        """Of the jobs claimed now, how many go straight to an idle child (call with the lock held)."""

    def dispatch(self) -> None:
        """Start ready jobs on idle children."""

    def fail(self, running: Running, reply: Err) -> None:
        """End an attempt with a failure (queued for recording)."""

    def cancel(self, job_ids: list[str]) -> None:
        """Stop these jobs if we hold them (their cancellation was asked: cancel.lua)."""

    def link_ok(self) -> None:
        """A round trip worked (may end an outage)."""

    def parked_children(self) -> int:
        """How many job processes are parked on their own inboxes (cwredis.worker.parking; lock held)."""


class Intake:
    """Claims, hand-offs and reconciliation for one worker; see the module docstring."""

    def __init__(self, link: Link, lease: Lease, pool: Pool, ledger: Ledger, stop: StopRequest, signer: Signer,
                 host: Host, *, burst: bool, secret_source: str = "") -> None:
        self._link = link
        self._lease = lease
        self._pool = pool
        self._ledger = ledger
        self._stop = stop
        self._host = host
        self._burst = burst
        self.lock = pool.lock
        self.claim_lock = threading.Lock()
        self.queues_empty = False  # the last claim came up short
        self.room = 0  # jobs submit may still hand us (parked while > 0): the fetcher waits on the inbox
        # A hand-off took our last room (we are unparked) and no claim has run since: the job it
        # handed may still re-park us through its job process (park.lua looks at the queues itself).
        self.handed_last_room = False
        self.epoch = 0  # reconciliations so far: a hand-off read across one may be stale
        self.needs_reconcile = False
        self._lapses_confirmed = 0  # the lease's lapses up to which hand-offs were confirmed (_take_jobs)
        self._unheld: set[str] = set()  # in-flight ids we did not hold at the last stray check
        self.admission = Admission(link, ledger, stop, signer, host, unpark=self._unpark,
                                   secret_source=secret_source)

    @property
    def quarantined(self) -> bool:
        """Too many jobs in a row did not verify with our secret: we take no more (admission)."""
        return self.admission.quarantined

    def _unpark(self) -> None:
        """Reconcile soon, which unparks us (the admission quarantined us)."""
        self.needs_reconcile = True

    # -- the fetcher thread -------------------------------------------------------------

    def run(self) -> None:
        """Keep idle children fed: park, then wait on the inbox for hand-offs and wakes.

        While children are busy and none would sit idle, look at the inbox
        every CANCEL_POLL_S anyway: a cancellation of a running job comes there.
        """
        block_s = min(config.BLOCK_TIMEOUT_S, 0.1) if self._burst else config.BLOCK_TIMEOUT_S
        looked = time.monotonic()
        while True:
            with self.lock:
                # Wait until a child would sit idle: nothing ready, and the last claim came up short.
                while busy := not self._stop.graceful and (self.quarantined or not (
                        self.queues_empty and self._host.starting_now())):
                    if self._pool.in_children() and time.monotonic() - looked >= config.CANCEL_POLL_S:
                        break
                    self.lock.wait(0.5)
                if self._stop.graceful:
                    return
                epoch = self.epoch
            try:
                if busy:
                    looked = time.monotonic()
                    if (handed := self._link.poll_inbox()) is not None:
                        self._take_handed(handed, epoch, claim=False)  # a wake waits for a child to be free
                    continue
                if not self.room:
                    self.claim_now()  # parks us if the queues are empty
                    continue
                # Everything there in one read: a batch submit hands us a job per idle child.
                handed = self._link.read_inbox(block_s, self.room)
                self._host.link_ok()
                if handed is not None:
                    self._take_handed(handed, epoch)
                elif not self._burst and self._link.still_parked():
                    pass  # quiet, and nothing forgot us: an idle worker writes nothing (heartbeats aside)
                elif not self.claim_now() and self._burst and self._is_idle():
                    # Quiet for block_s: the claim renewed our parking (and would catch
                    # jobs queued with no wake, e.g. after a server restart forgot us).
                    log.info("worker %s: queues empty (burst mode); stopping", self._link.worker_id)
                    self._stop.advance(Step.GRACEFUL)
            except LinkDown as down:
                self.needs_reconcile = True
                self._stop.wait(Step.GRACEFUL, self._link.failed(down))
            except Exception:  # a bug must not stop the worker taking jobs for good
                log.exception("worker %s: fetcher error", self._link.worker_id)
                self._stop.wait(Step.GRACEFUL, 1.0)

    def _take_handed(self, handed: Handed, epoch: int, *, claim: bool = True) -> None:
        """Cancellations, then jobs submit.lua handed us (start them now), then the claim a wake asks for.

        One read may bring both: the jobs are ours already, so they are taken first.
        """
        if handed.cancels:
            self._host.cancel(handed.cancels)
        if handed.claimed or handed.garbled:
            self._take_jobs(handed.claimed, handed.garbled, epoch)
        if handed.wake and claim and not (self._stop.graceful or self.quarantined):
            self.claim_now()  # (a reconciliation as we stop or quarantine ourselves wakes us too: no claim then)

    def taken_by_child(self) -> None:
        """submit.lua handed a parked child of ours a job, which it runs: our room is one less (lock held)."""
        self._use_room(1)

    def _use_room(self, handed: int) -> None:
        """Hand-offs used ``handed`` of our room (lock or claim lock held)."""
        self.room = max(0, self.room - handed)
        if not self.room:
            # submit.lua unparked us with the last of our room: jobs may queue unseen from now on,
            # so the queues no longer count as empty (the next round trip claims).
            self.queues_empty = False
            self.handed_last_room = True

    def take_from_child(self, claimed: Claimed) -> None:
        """A job submit.lua handed a parked child, which did not run it (it could not verify it itself):
        verify it here and reject, fail or run it as any handed job (cwredis.worker.parking)."""
        self._take_jobs([claimed], 0, self.epoch)

    def open_staged(self, running: Running) -> None:
        """A job a child could not open (its staged arguments unread, not verified, or naming argument blobs,
        see cwredis.worker.staged): open it here, then reject or fail it, or put it first in line."""
        with self.claim_lock:
            try:
                opened = self.admission.open_staged(running)
            except LinkDown:  # still in our in-flight list: the reconciliation after the outage gives it back
                self.needs_reconcile = True
                return
        if opened:
            with self.lock:
                self._pool.ready.appendleft(running)
            self._host.dispatch()

    def _take_jobs(self, claimed: list[Claimed], garbled: int, epoch: int) -> None:
        """Start jobs handed to us, read by a call begun at reconciliation ``epoch``; confirm them if one ran since."""
        with self.claim_lock:
            if self.epoch != epoch:
                # A reconciliation ran while this read was on its way. It unparked us and gave back what
                # it found in our in-flight list and did not hold: this hand-off, if it was there already
                # (its room went with that parking). If it came later -- we were parked again meanwhile,
                # by a claim or a child's park.lua -- it is still ours and must run now: dropped, it would
                # wait for the next reconciliation, which could in turn come while a read is on its way
                # (the latency benchmark's cycle: every job given back, each half a second late).
                # Confirmed under the claim lock, so no other reconciliation interleaves.
                if claimed:
                    claimed = self._confirm(claimed, "given back by a reconciliation while on its way to us")
                used = len(claimed)
            else:
                used = len(claimed)
                lapses = self._lease.lapses
                if claimed and (self._lease.may_have_expired() or lapses != self._lapses_confirmed):
                    # Our lease may have run out while this was on its way -- or did, and a renewal since
                    # re-registered us (a worker frozen in its blocking read): confirm the job is still ours.
                    claimed = self._confirm(claimed, "handed to us while our lease ran out, and since requeued")
                    self._lapses_confirmed = lapses
            if used:
                self._use_room(used)
            self._accept(claimed, 0, len(claimed), garbled)  # handed jobs: all charged at hand-off

    def _confirm(self, claimed: list[Claimed], gone: str) -> list[Claimed]:
        """Handed jobs that may have been taken from us since: keep those still ours (see Link.confirm)."""
        kept = self._lease.renewing(lambda: self._link.confirm(self._lease.lease_ms, claimed))
        for c in claimed:
            if c not in kept:
                log.warning("job %s: %s; not running it", c.id, gone)
        return kept

    def claim_now(self) -> bool:
        """Claim what the children can take, parking if the queues are empty; True if anything was claimed."""
        with self.claim_lock:
            with self.lock:
                want = max(1, self._host.hunger())
                start_count = self._host.starting_now()
            reply = self._lease.renewing(lambda: self._link.claim(self._lease.lease_ms, want, start_count))
            return self.accept_claimed(reply, want, start_count) > 0

    def _is_idle(self) -> bool:
        with self.lock:
            return self._pool.held() == 0 and not self._ledger

    # -- accepting claimed jobs ----------------------------------------------------------

    def accept_claimed(self, reply: ClaimReply, wanted: int, start_count: int) -> int:
        """Verify claimed jobs and queue them as ready (call with claim_lock held); how many were claimed."""
        for job_id in reply.dropped:
            log.warning("worker %s: dropped queue entry %r: it names no pending job", self._link.worker_id, job_id)
        if reply.cancels:
            self._host.cancel(reply.cancels)
        self.queues_empty = len(reply.claimed) < wanted
        self.room = reply.room
        self.handed_last_room = False
        return self._accept(reply.claimed, start_count, reply.handed, reply.garbled)

    def _accept(self, claimed: list[Claimed], start_count: int, handed: int, garbled: int) -> int:
        """Queue verified jobs as ready and start what idle children can take (call with claim_lock held).

        The first ``handed`` came through the inbox: submit.lua charged them
        at hand-off. Of the rest, those past the first ``start_count`` were
        claimed ahead, uncharged: they are marked so their start is recorded.
        Garbled inbox messages name jobs in our in-flight list that we cannot
        run: a reconciliation gives them back.
        """
        if garbled:
            log.warning("worker %s: %d unreadable message(s) in our inbox; giving back what they held",
                        self._link.worker_id, garbled)
            self.needs_reconcile = True
        if claimed:
            self._load_records(claimed)
        accepted = []
        for index, item in enumerate(claimed):
            running = self.admission.prepare(item)
            if running is not None:
                running.prefetched = index >= max(handed, start_count)
                accepted.append(running)
        with self.lock:
            self._pool.ready.extend(accepted)
        if accepted:
            self._host.dispatch()  # start them from this thread: no hand-off on the latency path
            if any(r.deadline is not None for r in accepted):
                self._stop.wake()  # the main loop's next deadline (a timeout) may be sooner now
        return len(claimed)

    def _load_records(self, claimed: list[Claimed]) -> None:
        """Fetch what the jobs point at, in one try: the claim lock is held, and the main loop must not wait.

        If Redis is away the jobs stay in our in-flight list, and the
        reconciliation that follows the outage gives them back (refunded).
        """
        try:
            self.admission.load_records(claimed)
        except LinkDown:
            self.needs_reconcile = True
            raise

    # -- reconciliation ---------------------------------------------------------------------

    def reconcile(self, owned: Callable[[], list[str]]) -> bool:
        """Give back in-flight ids we do not hold (a lost claim reply, a late claim, a server restart).

        False if Redis could not be reached or a claim was under way (``needs_reconcile`` stays set).
        """
        with self.lock:
            if self._host.parked_children():
                return False  # one may hold a job we have not heard of: they are called back first (parking)
        if not self.claim_lock.acquire(blocking=False):
            return False  # the fetcher is claiming: try again in a moment (never wait for it)
        try:
            # Before the round trip: one whose reply is lost may still have given jobs back and
            # unparked us, and a hand-off read meanwhile must then be confirmed (_take_jobs).
            self.epoch += 1
            self.room = 0  # unparked: release_inflight.lua wakes our fetcher, whose claim parks us again
            self.handed_last_room = False
            released = self._link.release(owned(), unregister=False)
            self.needs_reconcile = False
        except LinkDown as down:
            self._link.failed(down)
            return False
        finally:
            self.claim_lock.release()
        if released:
            log.warning("worker %s: gave back %d job(s) it had taken but was not running", self._link.worker_id,
                        released)
        return True

    def has_strays(self, owned: Callable[[], list[str]]) -> bool:
        """Has our in-flight list held a job we do not, at this look and the one before? (Reads only.)

        A claim that reached the server after we gave up on it strands its
        jobs there, running for a live worker; so can a hand-off read by a
        blocking call whose connection we dropped. This finds them. One look
        cannot tell them from a hand-off on its way: submit.lua puts a job in
        our in-flight list as it hands it over, and the fetcher takes it a
        moment later (from the inbox, outside the claim lock). Giving that
        back would requeue a job about to start and unpark us; so a job counts
        as stranded only if two looks in a row (a third of a lease apart) find
        it unheld -- the fetcher takes a hand-off within one round trip.
        """
        if not self.claim_lock.acquire(blocking=False):
            return False  # a claim is under way: look next time
        try:
            held = set(owned())  # first: a job we finish meanwhile then leaves both sides
            unheld = self._link.inflight_ids() - held
        finally:
            self.claim_lock.release()
        stranded, self._unheld = unheld & self._unheld, unheld
        return bool(stranded)

"""The record phase of a worker's loop: one round trip for what it owes Redis and the next claim.

Outcomes, requeues and start markers (the :mod:`ledger`) travel with a claim
for more work in one pipelined round trip, so a busy worker makes few: how
long they may gather is :func:`pacing.record_due_in`'s to say. A failed round
trip puts everything back in the ledger and backs off *by the clock*
(``retry_at``): the supervisor's loop never sleeps here, so children,
timeouts and signals are served through an outage.

Reconciliation runs first when due (after an outage, a lost claim reply, or
jobs found stranded by a late claim): it gives back every in-flight id the
worker does not hold (:meth:`owned_ids`).
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

from .. import config
from . import pacing
from .intake import Intake
from .lease import Lease
from .ledger import Ledger
from .link import Link, LinkDown
from .pool import Pool
from .stop import StopRequest

log = logging.getLogger("cwredis.worker")


class Pacer(Protocol):
    """What the recorder reads of the supervisor: the pacing inputs it measures (call with the lock held)."""

    concurrency: int

    def capacity(self) -> int: ...

    def hunger(self) -> int: ...

    def starting_now(self) -> int: ...

    def link_ok(self) -> None: ...


class Recorder:
    """Writes what the worker owes Redis and claims more; see the module docstring."""

    def __init__(self, link: Link, lease: Lease, ledger: Ledger, intake: Intake, pool: Pool, stop: StopRequest,
                 pacer: Pacer) -> None:
        self._link = link
        self._lease = lease
        self._ledger = ledger
        self._intake = intake
        self._pool = pool
        self._stop = stop
        self._pacer = pacer
        self.retry_at = 0.0  # backing off after a failed round trip until then (monotonic)

    def due_in(self) -> float:
        """Seconds until the next round trip is worth making; 0: now (lock held). See pacing.record_due_in."""
        now = time.monotonic()
        if self.retry_at > now:
            return self.retry_at - now  # backing off after a failure
        intake = self._intake
        return pacing.record_due_in(
            now=now, must_send=intake.needs_reconcile or bool(self._ledger.requeues),
            hunger_jobs=0 if intake.queues_empty else self._pacer.hunger(), capacity_jobs=self._pacer.capacity(),
            starving=self._pool.starving(), ready=len(self._pool.ready), concurrency=self._pacer.concurrency,
            outcomes=self._ledger.outcomes, starts=self._ledger.starts, first_unsent=self._ledger.first_unsent)

    def record(self, *, claim: bool = True) -> bool:
        """One round trip: record outcomes and requeues, and claim what the children can take.

        Waits for the fetcher's claim lock only briefly (CLAIM_LOCK_WAIT_S: a
        round trip of the fetcher's, normally well under a millisecond); if the
        fetcher holds it longer (an outage), this round trip records without
        claiming and the next try comes a moment later. Returns False if Redis
        could not be reached (everything owed stays owed).
        """
        intake = self._intake
        if intake.needs_reconcile and not intake.reconcile(self.owned_ids):
            self.retry_at = time.monotonic() + config.RECONNECT_MIN_S
            return False
        if claim:
            with self._ledger.lock:
                claim = self._pacer.hunger() > 0  # nothing to claim: no need to wait for the fetcher
        claiming = claim and intake.claim_lock.acquire(timeout=config.CLAIM_LOCK_WAIT_S)
        if claim and not claiming:
            self.retry_at = time.monotonic() + config.CLAIM_LOCK_WAIT_S  # no busy loop behind the fetcher
        try:
            with self._ledger.lock:
                want = self._pacer.hunger() if claiming else 0
                start_count = self._pacer.starting_now()
                batch = self._ledger.take()
            if not batch and not want:
                self._ledger.sent()
                return True
            lease_ms = self._lease.lease_ms
            try:
                if want:  # the claim renews our lease
                    recording = self._lease.renewing(lambda: self._link.record(
                        batch, lease_ms=lease_ms, claim_count=want, start_count=start_count))
                else:
                    recording = self._link.record(batch, lease_ms=lease_ms, claim_count=0, start_count=0)
            except LinkDown as down:
                self._ledger.restore(batch)  # start, complete and requeue are fenced: sending again is safe
                intake.needs_reconcile = intake.needs_reconcile or bool(want)  # a lost claim reply: undo it
                self.retry_at = time.monotonic() + self._link.failed(down)
                return False
            self.retry_at = 0.0
            self._ledger.sent()
            if recording.claim is not None:
                try:
                    intake.accept_claimed(recording.claim, want, start_count)
                except LinkDown as down:  # its records could not be loaded: give the jobs back
                    intake.needs_reconcile = True
                    self.retry_at = time.monotonic() + self._link.failed(down)
        finally:
            if claiming:
                intake.claim_lock.release()
        self._pacer.link_ok()
        for outcome, accepted in zip(batch.outcomes, recording.outcomes):
            if not accepted:
                log.warning("job %s: outcome dropped: this attempt no longer owns the job (lease expired)",
                            outcome.id)
        return True

    def owned_ids(self) -> list[str]:
        with self._ledger.lock:
            ids = self._pool.owned_ids()
        return ids + self._ledger.owned_ids()

    def check_strays(self) -> None:
        """From the lease thread: jobs stranded in our in-flight list (a late claim) are given back."""
        if self._intake.has_strays(self.owned_ids):
            self._intake.needs_reconcile = True
            self._stop.wake()

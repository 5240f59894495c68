"""A worker's lease: one for all its jobs, renewed by a thread of the supervisor process.

The lease lives in the supervisor, not in the job's interpreter, so a job
stuck in C code holding its GIL cannot lose it. Every round trip that renews
it (a heartbeat, a claim) goes through :meth:`Lease.renewing`, which notes
when it was *sent*: a lease runs from there, so ``renewed`` is a safe lower
bound of when ours ends.

Each renewal also runs the supervisor's ``check`` (the cheap look for jobs
stranded in our in-flight list, see ``Supervisor.check_strays``): a claim
that reached the server after we gave up on it is found within two thirds of
a lease (two looks in a row: see ``Intake.has_strays``).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Callable, TypeVar

from .. import config
from .link import Link, LinkDown, Renewal
from .stop import Step, StopRequest

log = logging.getLogger("cwredis.worker")
T = TypeVar("T")

class Lease:
    """Our lease: its length (set by the coordinator), when it was last renewed, and the thread renewing it."""

    def __init__(self, link: Link, stop: StopRequest, *, describe: Callable[[], dict[str, str]],
                 check: Callable[[], None], reconnected: Callable[[], None]) -> None:
        self._link = link
        self._stop = stop
        self._describe = describe
        self._check = check
        self._reconnected = reconnected
        self.lease_ms = int(config.DEFAULT_LEASE_S * 1000)
        self.renewed = 0.0  # when the newest round trip that renewed our lease was sent (monotonic)
        #: How many renewals found our lease had expired (we were stopped or cut off): a hand-off read
        #: across one may have been requeued and run elsewhere since, however recent the renewal.
        self.lapses = 0

    def renewing(self, round_trip: Callable[[], T]) -> T:
        """Run a round trip that renews our lease, noting when it was sent."""
        sent = time.monotonic()
        result = round_trip()
        self.renewed = max(self.renewed, sent)
        return result

    def may_have_expired(self) -> bool:
        """More than half a lease since the last renewal was sent: a hand-off read now may be stale."""
        return time.monotonic() - self.renewed > self.lease_ms / 2000

    def renew(self) -> None:
        """One heartbeat: renew, publish our description, pick up the coordinator's lease setting.

        The whole description goes every time; heartbeat.lua writes only the
        fields that changed, so an idle worker's heartbeat is the lease alone.
        """
        info = {"host": socket.gethostname(), "pid": str(os.getpid()), **self._describe()}
        renewed_before = self.renewed

        def round_trip() -> Renewal:
            renewal = self._link.renew(self.lease_ms, info)
            if not renewal.was_valid and renewed_before:
                self.lapses += 1  # before ``renewed`` moves: whoever sees this renewal sees the lapse
            return renewal

        renewal = self.renewing(round_trip)
        if not renewal.was_valid and renewed_before:
            log.warning("worker %s: our lease had expired (were we stopped or cut off?); the coordinator "
                        "requeued our jobs and their results from here will be refused", self._link.worker_id)
        if renewal.lease_ms is not None and renewal.lease_ms != self.lease_ms:
            log.info("worker %s: lease timeout is %.1fs (set by the coordinator)", self._link.worker_id,
                     renewal.lease_ms / 1000)
            self.lease_ms = renewal.lease_ms

    def run(self) -> None:
        """The renewing thread: until the supervisor has finished (running jobs keep their lease while stopping)."""
        wait_s = self.lease_ms / 1000 / config.RENEWALS_PER_LEASE
        while not self._stop.wait(Step.FINISHED, wait_s):
            try:
                self.renew()
                self._check()
                wait_s = self.lease_ms / 1000 / config.RENEWALS_PER_LEASE
                if self._link.succeeded():
                    self._reconnected()
            except LinkDown as down:
                wait_s = min(self._link.failed(down), self.lease_ms / 1000 / config.RENEWALS_PER_LEASE)
            except Exception:  # a bug must not end the renewals: our running jobs would be requeued
                log.exception("worker %s: lease renewal failed", self._link.worker_id)

"""How an attempt ends once its child has answered or died: queued for recording, retried, failed, given back,
or cancelled.

The supervisor decides *when* an attempt ends (a reply, a death, a
timeout); this says *what follows*: an outcome signed and queued in the
ledger, a requeue for another attempt while ``max_attempts`` allows, or a
failure with its reason. It also keeps the latest progress report of each
running job and passes them on at most every ``PROGRESS_INTERVAL_S``.
"""

from __future__ import annotations

import logging
import time

from .. import config
from ..scripts import Requeue
from ..signing import Signer
from .direct import completion
from .ledger import Ledger
from .link import Link, LinkDown
from .pool import Reported, Running
from .protocol import Err, Ok

log = logging.getLogger("cwredis.worker")


def retry_delay_s(attempts: int) -> float:
    """Exponential back-off before the next attempt, after ``attempts`` runs (0.5 s, 1 s, 2 s, ... up to 30 s)."""
    return float(min(config.RETRY_DELAY_S * 2 ** (attempts - 1), config.RETRY_DELAY_MAX_S))


class Attempts:
    """Ends attempts into the ledger, and forwards progress; see the module docstring."""

    def __init__(self, ledger: Ledger, link: Link, signer: Signer) -> None:
        self._ledger = ledger
        self._link = link
        self._signer = signer
        self._progress: dict[str, Reported] = {}  # the latest report per running job
        self._progress_sent = 0.0

    def record(self, running: Running, reply: Ok | Err) -> None:
        """The attempt ended with this reply: sign it and queue it for complete.lua.

        A failure the job's ``retry_on`` asks for is retried instead, after an
        exponential back-off, while attempts remain; the last one is recorded
        as the exception it is.
        """
        self._progress.pop(running.id, None)
        claimed = running.claimed
        if isinstance(reply, Err) and reply.retryable and claimed.attempts < running.spec.max_attempts:
            self._retry(running, f"raised {reply.error}", retry_delay_s(claimed.attempts))
            return
        self._ledger.add_outcome(completion(claimed.token, claimed.generation, running.spec.client, reply,
                                            self._signer))

    def recorded(self, running: Running) -> None:
        """The child recorded the outcome itself (complete.lua charged the attempt): nothing left to send."""
        self._progress.pop(running.id, None)
        self._ledger.forget_start(running.id)

    def cut_short(self, running: Running, reason: str, explanation: str, delay_s: float) -> None:
        """The attempt died or timed out: try again (after ``delay_s``) if attempts remain, else fail ``reason``."""
        claimed, spec = running.claimed, running.spec
        if claimed.attempts < spec.max_attempts:
            self._retry(running, explanation, delay_s)
        else:
            error = f"{reason.capitalize()}Error: {explanation} (attempt {claimed.attempts} of {spec.max_attempts})"
            log.warning("job %s: %s", claimed.id, error)
            self.record(running, Err(claimed.id, reason, error, error, ""))

    def _retry(self, running: Running, explanation: str, delay_s: float) -> None:
        claimed, spec = running.claimed, running.spec
        log.warning("job %s: %s (attempt %d of %d); will retry in %gs", claimed.id, explanation,
                    claimed.attempts, spec.max_attempts, delay_s)
        self._ledger.add_requeue(Requeue(claimed.id, claimed.token, spec.queue, "retry", int(delay_s * 1000),
                                         client=spec.client))

    def give_back(self, running: Running) -> None:
        """The job goes back to the front of its queue, its attempt refunded (it never ran, or was stopped)."""
        self._ledger.add_requeue(Requeue(running.id, running.claimed.token, running.spec.queue, "release",
                                         client=running.spec.client))

    def cancelled(self, running: Running) -> None:
        """Its cancellation was asked: it ends ``cancelled``, its attempt refunded, never retried (complete.lua)."""
        error = "CancelledError: the job was cancelled"
        log.info("job %s: cancelled", running.id)
        self.record(running, Err(running.id, "cancelled", error, error, ""))

    def report(self, event: Reported) -> None:
        self._progress[event.running.id] = event

    def send_progress_if_due(self) -> None:
        """Pass the latest progress of running jobs to their clients (best effort: never retried)."""
        if not self._progress or time.monotonic() - self._progress_sent < config.PROGRESS_INTERVAL_S:
            return
        reports, self._progress = self._progress, {}
        self._progress_sent = time.monotonic()
        try:
            self._link.send_progress([(r.running.id, r.running.claimed.token, r.running.spec.client, r.fraction,
                                       r.message) for r in reports.values()])
        except LinkDown as down:
            log.debug("progress reports dropped: %s", down)

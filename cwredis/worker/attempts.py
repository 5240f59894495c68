"""How an attempt ends once its child has answered or died: queued for recording, retried, failed, given back,
or cancelled.

The supervisor decides *when* an attempt ends (a reply, a death, a
timeout); this says *what follows*: an outcome signed and queued in the
ledger, a requeue for another attempt while ``max_attempts`` allows, or a
failure with its reason. It also keeps the latest progress report of each
running job and passes them on at most every ``PROGRESS_INTERVAL_S``, and the
tail of each running job's output, written with them at most every
``LIVE_OUTPUT_INTERVAL_S`` (the job's ``lo`` field: ``cw-admin logs``).
"""

from __future__ import annotations

import logging
import time

from .. import config
from ..script_types import Requeue
from ..signing import Signer
from .direct import completion
from .ledger import Ledger
from .link import Link, LinkDown
from .pool import Printed, Reported
from .slot import Running
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
        self._output: dict[str, str] = {}  # the output tail per running job
        self._output_new: dict[str, Running] = {}  # jobs whose tail changed since it was last written
        self._output_sent = 0.0

    def record(self, running: Running, reply: Ok | Err) -> None:
        """The attempt ended with this reply: sign it and queue it for complete.lua.

        A failure the job's ``retry_on`` asks for is retried instead, after an
        exponential back-off, while attempts remain; the last one is recorded
        as the exception it is.
        """
        self._forget(running)
        claimed = running.claimed
        if isinstance(reply, Err) and reply.retryable and claimed.attempts < running.spec.max_attempts:
            self._retry(running, f"raised {reply.error}", retry_delay_s(claimed.attempts))
            return
        self._ledger.add_outcome(completion(claimed.token, claimed.generation, running.spec.client, reply,
                                            self._signer))

    def recorded(self, running: Running) -> None:
        """The child recorded the outcome itself (complete.lua charged the attempt): nothing left to send."""
        self._forget(running)
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

    def printed(self, event: Printed) -> None:
        job_id = event.running.id
        self._output[job_id] = (self._output.get(job_id, "") + event.text)[-config.OUTPUT_TAIL_BYTES:]
        self._output_new[job_id] = event.running

    def _forget(self, running: Running) -> None:
        """The attempt ended: its progress and output are no longer passed on (a failed job keeps its ``lo``)."""
        self._progress.pop(running.id, None)
        self._output.pop(running.id, None)
        self._output_new.pop(running.id, None)

    def send_progress_if_due(self) -> None:
        """Pass the latest progress of running jobs to their clients, and store their output tails (best
        effort: never retried); one round trip for both."""
        now = time.monotonic()
        outputs: dict[str, Running] = {}
        if self._output_new and now - self._output_sent >= config.LIVE_OUTPUT_INTERVAL_S:
            outputs, self._output_new, self._output_sent = self._output_new, {}, now
        if self._progress and now - self._progress_sent >= config.PROGRESS_INTERVAL_S:
            reports, self._progress, self._progress_sent = self._progress, {}, now
        else:
            reports = {}
        if not reports and not outputs:
            return
        sends: list[tuple[str, str, str, float | None, str | None, str | None]] = [(r.running.id, r.running.claimed.token, r.running.spec.client, r.fraction, r.message,
                  self._output.get(r.running.id) if outputs.pop(r.running.id, None) else None)
                 for r in reports.values()]
        sends += [(running.id, running.claimed.token, running.spec.client, None, None, self._output.get(running.id))
                  for running in outputs.values()]
        try:
            self._link.send_progress(sends)
        except LinkDown as down:
            log.debug("progress reports dropped: %s", down)

"""A client's outstanding jobs and the delivery of their outcomes: one callback per job, exactly once.

:class:`Delivery` holds the client's table of unfinished jobs (job id ->
how to submit it again, see :class:`Resubmission`) and the condition that
guards it; the submitting side of :class:`cwredis.client.ClientThread`
adds to the table, and delivering an outcome is what removes a job from it.
Every outcome goes through :meth:`Delivery.deliver` on the client's results
thread (one thread: that is what makes each callback happen once): an
outcome seen twice (published and read from the list, or after a server
restart lost a trim) is recognised by its job id and generation and dropped;
each one's signature is verified before anything in it is unpickled
(:func:`cwredis.outcomes.decode`); the result goes to the callback, an error
to the error callback or, without one, is kept as the first error for
``wait()`` to raise; and the done and failed counts are kept.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, Callable, NamedTuple

from .errors import RemoteError
from .outcomes import Decoded, decode
from .signing import Signer
from .submitter import Attached, SharedRecords

log = logging.getLogger("cwredis.client")

ResultCallback = Callable[[str, Any], None]
ErrorCallback = Callable[[str, RemoteError], None]
ProgressCallback = Callable[[str, float, "str | None"], None]


class Resubmission(NamedTuple):
    """What submitting an unfinished job again takes; kept until its outcome arrives."""

    shared: SharedRecords
    args: bytes


class Delivery:
    """A client's unfinished jobs (``pending``, guarded by ``cond``) and the delivery of their outcomes."""

    def __init__(self, signer: Signer, client_id: str, *, callback: ResultCallback | None,
                 error_callback: ErrorCallback | None, progress_callback: ProgressCallback | None,
                 forward_output: bool) -> None:
        self._signer = signer
        self._client_id = client_id
        self._callback = callback
        self._error_callback = error_callback
        self._progress_callback = progress_callback
        self._forward_output = forward_output
        self.cond = threading.Condition()
        # Job id -> how to submit it again; None while its submit has not returned.
        self.pending: dict[str, Resubmission | None] = {}
        self.cancelled_here: set[str] = set()  # cancelled through us: wait() does not raise for them
        self.done_count = 0
        self.failed_count = 0
        self._failed_seen: dict[str, int] = {}  # failed job id -> generation delivered (requeue-failed may revive it)
        self._first_error: RemoteError | None = None

    def deliver(self, job_id: str, generation: int, kind: bytes, body: bytes | memoryview) -> None:
        """Verify, decode and deliver one outcome (on the results thread only: that is what makes it once).

        The job stays in ``pending`` until its callback (or first error) is
        done, so ``wait()`` cannot return between the two and miss the error.
        """
        with self.cond:
            if job_id not in self.pending and self._failed_seen.get(job_id, generation) >= generation:
                return  # a duplicate (published and read from the list), or not ours
            # (else ours, or requeued by cw-admin after we saw it fail: a new outcome)
            self._failed_seen.pop(job_id, None)
        try:
            decoded = self.decode(job_id, generation, kind, body)
            if decoded.ok:
                self.done_count += 1
                if self._callback is not None:
                    self._call_user(self._callback, job_id, decoded.value)
            else:
                self._deliver_error(job_id, generation, decoded.value)
        finally:
            with self.cond:
                self.pending.pop(job_id, None)
                self.cond.notify_all()

    def hand_over(self, finished: list[Attached], to: dict[str, Decoded]) -> None:
        """Outcomes a session kept, decoded for the caller (``Executor.map`` resuming): no callback, no
        Future, no trip through the results thread -- what makes a resume fast."""
        for found in finished:
            decoded = to[found.job_id] = self.decode(found.job_id, found.generation, found.kind, found.body)
            with self.cond:
                self.pending.pop(found.job_id, None)
            if decoded.ok:
                self.done_count += 1
            else:
                self.failed_count += 1

    def decode(self, job_id: str, generation: int, kind: bytes, body: bytes | memoryview) -> Decoded:
        """Verify and decode one outcome, and forward the output it carries (if we forward output)."""
        decoded = decode(self._signer, job_id, generation, kind, body)
        if decoded.output and self._forward_output:
            _print_output(job_id, decoded.output)
        return decoded

    def take_first_error(self) -> RemoteError | None:
        """The first error not given to an error callback, once (the caller holds ``cond``)."""
        error, self._first_error = self._first_error, None
        return error

    def progress(self, data: bytes) -> None:
        """A published progress report (``P``, job id, fraction, message) for the progress callback."""
        try:
            _, raw_id, raw_fraction, message = data.decode("utf-8", "replace").split("\n", 3)
            fraction = float(raw_fraction)
        except ValueError:
            return
        if self._progress_callback is not None and raw_id in self.pending:
            try:
                self._progress_callback(raw_id, fraction, message or None)
            except Exception:
                log.exception("client %s: progress_callback for job %s raised", self._client_id, raw_id)

    def _deliver_error(self, job_id: str, generation: int, error: RemoteError) -> None:
        self.failed_count += 1
        with self.cond:
            self._failed_seen[job_id] = generation
            asked = error.reason == "cancelled" and job_id in self.cancelled_here  # not news to the caller
            if self._error_callback is None and self._first_error is None and not asked:
                self._first_error = error
        if self._error_callback is not None:
            self._call_user(self._error_callback, job_id, error)

    def _call_user(self, fn: Callable[[str, Any], None], job_id: str, value: Any) -> None:
        try:
            fn(job_id, value)
        except Exception:
            log.exception("client %s: callback for job %s raised", self._client_id, job_id)


def _print_output(job_id: str, output: str) -> None:
    """A job's captured stdout/stderr, each line prefixed with its job id."""
    lines = output.splitlines()
    sys.stdout.write("".join(f"[{job_id}] {line}\n" for line in lines))
    sys.stdout.flush()

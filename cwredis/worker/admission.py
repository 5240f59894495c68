"""Admitting a claimed job: load what it points at, verify it, and fail or reject what cannot run.

Separate from :mod:`~cwredis.worker.intake`, which decides *when* jobs come
in (claims, the inbox of hand-offs, reconciliation): this decides *whether*
one may run, the same way for a claimed job, a handed one and one a parked
child passed back.

A job that cannot be run because its spec is missing or its payload is
undecodable fails at once here (``corrupt``). A job whose signature does
not verify is *rejected*: it goes back to its queue without using an attempt
(and fails ``rejected`` once ``max_attempts`` workers refused it, see
requeue.lua), because the fault may be ours -- a worker started with the
wrong secret. A worker that rejects ``QUARANTINE_AFTER`` jobs in a row stops
taking jobs (*quarantined*): it says in its log where its secret came from,
and ``cw-admin workers`` shows it, so one misconfigured node cannot burn a queue.
"""

from __future__ import annotations

import logging
from typing import Callable, Protocol

from .. import config, job
from ..argblobs import BlobCache, envelope_blobs, named_blobs
from ..job import Spec
from ..script_types import Claimed, Completion, Requeue
from ..serialization import ErrorRecord, encode_error, frame_outcome
from ..signing import Corrupt, Rejected, Signer
from .ledger import Ledger
from .link import Link
from .protocol import Err
from .slot import Running
from .stop import StopRequest

log = logging.getLogger("cwredis.worker")

#: Why a job whose large arguments are gone fails.
MISSING_STAGED_ARGS = ("the job's arguments are missing: large arguments are kept beside the job and expire "
                       f"with its function, {config.RESULT_TTL_S / 86400:g} days after its submit (or the server "
                       "lost them)")

#: Jobs rejected in a row (their envelope did not verify) after which a worker quarantines itself.
QUARANTINE_AFTER = 3


class Failer(Protocol):
    """What admission sees of the supervisor."""

    def fail(self, running: Running, reply: Err) -> None:
        """End an attempt with a failure (queued for recording)."""


class Admission:
    """Verifies claimed jobs for one worker, and quarantines it; see the module docstring."""

    def __init__(self, link: Link, ledger: Ledger, stop: StopRequest, signer: Signer, host: Failer, *,
                 unpark: Callable[[], None], secret_source: str = "") -> None:
        self._link = link
        self._ledger = ledger
        self._stop = stop
        self._signer = signer
        self._host = host
        self._unpark = unpark  # the intake's: reconcile, which unparks us
        self._secret_source = secret_source or "no secret (--insecure)"
        self._rejected_in_a_row = 0
        self.quarantined = False  # too many rejections in a row: we take no more jobs
        self._arg_blobs = BlobCache()  # repeated large arguments, fetched once (cwredis.argblobs)

    def load_records(self, claimed: list[Claimed]) -> None:
        """Fetch the records the jobs point at, and the argument blobs not cached yet (LinkDown if Redis is away).

        Staged arguments (``job.STAGED_ARGS``) are not read here: the job
        process reads them (:mod:`cwredis.worker.staged`), or :meth:`open_staged`.
        """
        self._link.load_records(claimed)
        self._load_arg_blobs(claimed)

    def _load_arg_blobs(self, claimed: list[Claimed]) -> None:
        wanted = self._arg_blobs.missing([d for c in claimed for d in envelope_blobs(c.args)])
        if wanted:
            for digest, data in zip(wanted, self._link.load_arg_blobs(wanted)):
                if data is not None:
                    self._arg_blobs.put(digest, data)

    def prepare(self, claimed: Claimed) -> Running | None:
        """Verify and gather a claimed job's payload; a job that cannot run is failed or rejected (None).

        The job's envelope is checked first (it signs the digests of its spec
        and function); then each record is checked against its digest. Staged
        arguments stay unopened: the job process opens them (the records are
        still checked here, each against its own signature).
        """
        catalog = self._link.catalog
        spec = catalog.routing_spec(claimed.spec)  # not yet verified: only where a rejection goes
        if spec is None:
            log.warning("job %s: its spec is missing or garbage; failing it as corrupt (no client can be told)",
                        claimed.id)
            error = "the job's shared record (client, queue, limits) is missing or invalid"
            self._ledger.add_outcome(Completion(claimed.id, claimed.token, "", "err", b"", "corrupt",
                                                "job spec is missing", error))
            return None
        running = Running(claimed, spec, record_large=not self._link.replica_ack)
        staged = claimed.args == job.STAGED_ARGS
        if staged:
            running.args = job.STAGED_ARGS
        elif not self._open_envelope(running):
            return None
        try:
            catalog.spec(claimed.spec)
            running.function = catalog.function(claimed.function)
            running.env = catalog.env(spec.env)
        except Rejected as exc:
            if staged:  # nothing of the job verified yet: our secret may be the wrong one, as for an envelope
                self._reject(running, exc, limit=self._rejection_limit(claimed, spec))
                self._count_rejection()
            else:  # a record swapped under a job our secret verified: no worker may run it
                self._reject(running, exc, limit=1)
            return None
        except Corrupt as exc:
            self._fail_now(running, "corrupt", f"CorruptError: {exc}")
            return None
        if staged:
            self._rejected_in_a_row = 0  # our secret verified its records: it is not us
            return running
        return running if self._gather_blobs(running) else None

    def open_staged(self, running: Running) -> bool:
        """Read and verify a job's staged arguments here (its job process could not); False if the job was
        failed or rejected instead. LinkDown if Redis is away."""
        claimed = running.claimed
        envelope = self._link.load_staged_args([claimed.id])[0]
        if envelope is None:
            self._fail_now(running, "corrupt", f"CorruptError: {MISSING_STAGED_ARGS}")
            return False
        claimed.args = envelope
        self._load_arg_blobs([claimed])
        return self._open_envelope(running) and self._gather_blobs(running)

    def _open_envelope(self, running: Running) -> bool:
        """Verify the job's envelope into ``running.args``; False if the job was rejected or failed instead."""
        claimed = running.claimed
        try:
            running.args = self._signer.open_job(claimed.id, claimed.spec, claimed.function, claimed.args)
        except Rejected as exc:  # our secret may be the wrong one: back to the queue for another worker
            self._reject(running, exc, limit=self._rejection_limit(claimed, running.spec))
            self._count_rejection()
            return False
        except Corrupt as exc:
            self._fail_now(running, "corrupt", f"CorruptError: {exc}")
            return False
        self._rejected_in_a_row = 0  # our secret verified this job: it is not us
        return True

    def _gather_blobs(self, running: Running) -> bool:
        """Each argument blob the verified arguments name, checked against its digest; False if the job was
        rejected (a blob swapped under a job our secret verified: no worker may run it) or failed instead."""
        try:
            running.blobs = self._arg_blobs.verified(self._signer, named_blobs(running.args))
        except Rejected as exc:
            self._reject(running, exc, limit=1)
            return False
        except Corrupt as exc:
            self._fail_now(running, "corrupt", f"CorruptError: {exc}")
            return False
        return True

    def _fail_now(self, running: Running, reason: str, error: str) -> None:
        log.warning("job %s: failing it (%s): %s", running.id, reason, error)
        self._host.fail(running, Err(running.id, reason, error, error, ""))

    def _rejection_limit(self, claimed: Claimed, spec: Spec) -> int:
        """How many rejections fail the job: its max_attempts if its spec verifies, else the default
        (a spec we cannot verify may have been altered to keep a forged job going round)."""
        try:
            self._link.catalog.spec(claimed.spec)
        except Rejected:
            return min(spec.max_attempts, config.DEFAULT_MAX_ATTEMPTS)
        return spec.max_attempts

    def _reject(self, running: Running, exc: Rejected, *, limit: int) -> None:
        """Give the job back unrun, its attempt refunded; the limit-th rejection fails it (requeue.lua)."""
        claimed, spec = running.claimed, running.spec
        error = f"RejectedError: {exc}"
        log.warning("job %s: rejected: %s", claimed.id, exc)
        body = self._signer.seal_outcome(claimed.id, claimed.generation, claimed.token, "err",
                                         frame_outcome("", encode_error(ErrorRecord("rejected", error, error))))
        self._ledger.add_requeue(Requeue(claimed.id, claimed.token, spec.queue, "reject", limit=limit,
                                         client=spec.client, body=body, error=error))

    def _count_rejection(self) -> None:
        """One more job whose envelope our secret could not verify; quarantine at QUARANTINE_AFTER in a row."""
        self._rejected_in_a_row += 1
        if self._rejected_in_a_row < QUARANTINE_AFTER or self.quarantined:
            return
        self.quarantined = True
        self._unpark()  # no job is handed to a quarantined worker
        log.error("worker %s: quarantined: the signatures of %d jobs in a row did not verify with this worker's "
                  "secret, from %s. This worker takes no more jobs (the rejected ones went back to their queue); "
                  "give every worker and client the same secret ($CWREDIS_SECRET, or the same "
                  "$CWREDIS_HOME/secret file) and restart this worker.", self._link.worker_id,
                  self._rejected_in_a_row, self._secret_source)
        self._stop.wake()

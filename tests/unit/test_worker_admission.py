"""Admission on its own (cwredis.worker.admission): which claimed jobs may run, and the quarantine.

No Redis and no processes: a stub link whose catalog hands out one spec, the
real Signer, Ledger and StopRequest. The system test
(test_signed_envelope.py) shows a quarantined worker end to end; this pins
the counting -- only rejections *in a row* count, and quarantine happens once.
"""

from __future__ import annotations

import threading

from cwredis import job
from cwredis.job import Spec
from cwredis.script_types import Claimed
from cwredis.signing import Signer
from cwredis.worker.admission import QUARANTINE_AFTER, Admission
from cwredis.worker.ledger import Ledger
from cwredis.worker.protocol import Err
from cwredis.worker.slot import Running
from cwredis.worker.stop import StopRequest

SPEC = Spec(client="c1", queue="default", env="env-digest", timeout_s=None, max_attempts=5, function="fn-digest")


class _Catalog:
    """Every record the jobs point at is there and verifies."""

    def routing_spec(self, digest: str) -> Spec:
        return SPEC

    def spec(self, digest: str) -> Spec:
        return SPEC

    def function(self, digest: str) -> bytes:
        return b"the function"

    def env(self, digest: str) -> bytes:
        return b"the environment"


class _Link:
    catalog = _Catalog()
    replica_ack = False
    worker_id = "w1"


class _Host:
    def __init__(self) -> None:
        self.failed: list[tuple[str, str]] = []

    def fail(self, running: Running, reply: Err) -> None:
        self.failed.append((running.id, reply.reason))


def _job(job_id: str, signer: Signer) -> Claimed:
    envelope = signer.seal_job(job_id, "spec-digest", "fn-digest", b"pickled arguments")
    return Claimed(job_id, "1", "spec-digest", "fn-digest", envelope, 1, 0)


def test_only_rejections_in_a_row_quarantine_and_only_once() -> None:
    ours, theirs = Signer(b"a" * 32), Signer(b"b" * 32)
    ledger, host, unparked = Ledger(threading.Condition()), _Host(), []
    admission = Admission(_Link(), ledger, StopRequest(), ours, host,  # type: ignore[arg-type]
                          unpark=lambda: unparked.append(1), secret_source="$CWREDIS_SECRET")
    assert QUARANTINE_AFTER == 3
    # Two rejected, one that verifies (the count starts again), then two more: not yet.
    for job_id, signer in [("r1", theirs), ("r2", theirs), ("ok", ours), ("r3", theirs), ("r4", theirs)]:
        running = admission.prepare(_job(job_id, signer))
        assert (running is not None) == (job_id == "ok"), job_id
    assert not admission.quarantined and not unparked
    # The third in a row quarantines (and asks the intake to unpark us), once.
    assert admission.prepare(_job("r5", theirs)) is None
    assert admission.quarantined and unparked == [1]
    assert admission.prepare(_job("r6", theirs)) is None
    assert unparked == [1]
    requeues = ledger.take().requeues
    assert [(r.id, r.mode, r.limit) for r in requeues] == [(f"r{i}", "reject", 5) for i in range(1, 7)]
    assert host.failed == []  # rejected jobs go back unrun, none failed here


def test_a_verified_job_is_gathered_and_a_corrupt_one_fails() -> None:
    ours = Signer(b"a" * 32)
    ledger, host = Ledger(threading.Condition()), _Host()
    admission = Admission(_Link(), ledger, StopRequest(), ours, host,  # type: ignore[arg-type]
                          unpark=lambda: None)
    running = admission.prepare(_job("ok", ours))
    assert running is not None
    assert bytes(running.args) == b"pickled arguments"
    assert (running.function, running.env, running.spec) == (b"the function", b"the environment", SPEC)
    garbled = Claimed("bad", "1", "spec-digest", "fn-digest", b"?not an envelope", 1, 0)
    assert admission.prepare(garbled) is None
    assert host.failed == [("bad", "corrupt")]
    assert not ledger.take().requeues and not admission.quarantined


class _StagedLink(_Link):
    """A link whose staged-arguments key holds ``staged`` (None: the key is gone)."""

    def __init__(self, staged: dict[str, bytes]) -> None:
        self.staged = staged
        self.read: list[str] = []

    def load_records(self, claimed: list[Claimed]) -> None:
        pass

    def load_staged_args(self, job_ids: list[str]) -> list[bytes | None]:
        self.read += job_ids
        return [self.staged.get(job_id) for job_id in job_ids]


def _staged(job_id: str) -> Claimed:
    return Claimed(job_id, "1", "spec-digest", "fn-digest", job.STAGED_ARGS, 1, 0)


def test_staged_arguments_are_left_to_the_job_process_and_opened_here_only_when_it_could_not() -> None:
    """prepare() neither reads nor opens staged arguments (the job process does: worker.staged); when the
    process could not, open_staged() reads and verifies them, and fails a job whose key is gone."""
    ours = Signer(b"a" * 32)
    ledger, host = Ledger(threading.Condition()), _Host()
    link = _StagedLink({"s1": ours.seal_job("s1", "spec-digest", "fn-digest", b"large arguments")})
    admission = Admission(link, ledger, StopRequest(), ours, host, unpark=lambda: None)  # type: ignore[arg-type]
    claimed = [_staged("s1"), _staged("gone")]
    admission.load_records(claimed)
    prepared = [admission.prepare(c) for c in claimed]
    assert link.read == []  # nothing read: the job processes read them
    assert all(r is not None and r.staged and r.payload_bytes == len(job.STAGED_ARGS) for r in prepared)
    first, second = prepared
    assert first is not None and second is not None
    assert admission.open_staged(first) and bytes(first.args) == b"large arguments" and not first.staged
    assert not admission.open_staged(second)
    assert link.read == ["s1", "gone"]
    assert host.failed == [("gone", "corrupt")]


def test_staged_arguments_that_do_not_verify_are_rejected_but_do_not_quarantine_a_worker_whose_secret_works() -> None:
    """Staged arguments sealed with another secret: each job is rejected (back to the queue, failing at
    max_attempts rejections), never run. The jobs' records verified with our secret, so the fault is not
    ours: three in a row do not quarantine the worker."""
    ours, theirs = Signer(b"a" * 32), Signer(b"b" * 32)
    ledger, host, unparked = Ledger(threading.Condition()), _Host(), []
    link = _StagedLink({f"r{i}": theirs.seal_job(f"r{i}", "spec-digest", "fn-digest", b"x") for i in range(3)})
    admission = Admission(link, ledger, StopRequest(), ours, host,  # type: ignore[arg-type]
                          unpark=lambda: unparked.append(1))
    for i in range(3):
        running = admission.prepare(_staged(f"r{i}"))
        assert running is not None and not admission.open_staged(running)
        assert running.staged  # nothing of it was opened
    assert not admission.quarantined and not unparked
    assert [(r.id, r.mode, r.limit) for r in ledger.take().requeues] == [(f"r{i}", "reject", 5) for i in range(3)]
    assert host.failed == []

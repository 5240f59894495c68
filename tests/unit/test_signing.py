"""Signed envelopes (cwredis.signing): a job is signed as a whole, an outcome with its job and attempt."""

from __future__ import annotations

import pytest

from cwredis.serialization import ENV, FUNCTION
from cwredis.signing import Corrupt, Lost, Rejected, Signer, LOST_OUTCOME

SECRET = b"s" * 43
signer = Signer(SECRET)


def test_a_job_opens_only_with_its_own_id_spec_function_and_secret():
    envelope = signer.seal_job("job1", "spec1", "fn1", b"ARGS")
    assert signer.open_job("job1", "spec1", "fn1", envelope) == b"ARGS"
    for other in [("job2", "spec1", "fn1"), ("job1", "spec2", "fn1"), ("job1", "spec1", "fn2")]:
        with pytest.raises(Rejected):  # replayed into another job, or pointed at another spec or function
            signer.open_job(*other, envelope)
    with pytest.raises(Rejected):
        signer.open_job("job1", "spec1", "fn1", envelope[:-1] + b"X")  # arguments altered
    with pytest.raises(Rejected):
        Signer(b"t" * 43).open_job("job1", "spec1", "fn1", envelope)  # another secret


def test_a_side_with_a_secret_refuses_unsigned_jobs_and_outcomes():
    insecure = Signer(None)
    envelope = insecure.seal_job("job1", "spec1", "fn1", b"ARGS")
    assert insecure.open_job("job1", "spec1", "fn1", envelope) == b"ARGS"
    with pytest.raises(Rejected):
        signer.open_job("job1", "spec1", "fn1", envelope)
    outcome = insecure.seal_outcome("job1", 0, "1", "ok", b"0\nRESULT")
    with pytest.raises(Rejected):
        signer.open_outcome("job1", 0, b"ok", outcome)


@pytest.mark.parametrize("envelope", [None, b"", b"S123", b"Zjunk"])
def test_malformed_jobs_are_corrupt(envelope):
    with pytest.raises(Corrupt):
        signer.open_job("job1", "spec1", "fn1", envelope)


def test_an_outcome_is_bound_to_its_job_generation_and_kind():
    body = signer.seal_outcome("job1", 2, "5", "ok", b"0\nRESULT")
    assert signer.open_outcome("job1", 2, b"ok", body) == b"0\nRESULT"
    for job_id, generation, kind in [("job2", 2, b"ok"), ("job1", 3, b"ok"), ("job1", 2, b"err")]:
        with pytest.raises(Rejected):  # delivered as another job's, replayed after a requeue, or relabelled
            signer.open_outcome(job_id, generation, kind, body)
    with pytest.raises(Rejected):
        signer.open_outcome("job1", 2, b"ok", body.replace(b"5\n", b"6\n"))  # another attempt's token


@pytest.mark.parametrize("body", [b"", b"Zjunk", b"S" + b"x" * 16 + b"nonumber", b"Unonewline"])
def test_malformed_outcomes_are_corrupt(body):
    with pytest.raises(Corrupt):
        Signer(None).open_outcome("job1", 0, b"ok", body)


def test_the_coordinators_lost_marker_carries_no_content():
    with pytest.raises(Lost):
        signer.open_outcome("job1", 0, b"err", LOST_OUTCOME)


def test_blobs_keep_their_kind_and_digests_are_keyed():
    blob = signer.seal(FUNCTION, b"PICKLE")
    assert signer.open(FUNCTION, blob) == b"PICKLE"
    with pytest.raises(Rejected):
        signer.open(ENV, blob)  # a function cannot pass for an environment
    digest = signer.digest(blob)
    signer.check_digest("function", blob, digest)
    assert Signer(b"t" * 43).digest(blob) != digest  # no one without the secret can compute it
    with pytest.raises(Rejected):
        signer.check_digest("function", signer.seal(FUNCTION, b"OTHER"), digest)  # a swapped record


def test_spec_digests_cover_every_field_unambiguously():
    fields = {"c": "client", "q": "default", "t": "", "m": "3"}
    digest = signer.spec_digest(fields)
    assert signer.spec_digest(dict(fields)) == digest
    assert signer.spec_digest({**fields, "q": "other"}) != digest
    assert signer.spec_digest({**fields, "x": "1"}) != digest  # an added field
    assert signer.spec_digest({"c": "client", "q": "default=t", "m": "3"}) != signer.spec_digest(
        {"c": "client", "q": "default", "t": "", "m": "3"})


def test_tags_are_standard_hmac_sha256_of_the_derived_key():
    """The hand-keyed SHA-256 states compute exactly RFC 2104's HMAC (what hmac.digest would), truncated."""
    import hashlib
    import hmac

    key = hashlib.sha256(b"cwredis tag\0" + SECRET).digest()
    for parts in [(b"job", b"id", b""), (b"outcome", b"x" * 5000)]:
        assert signer._tag(*parts) == hmac.digest(key, b"\0".join(parts), "sha256")[:16]

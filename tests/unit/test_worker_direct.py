"""A child's reply as an outcome, and a child recording it itself (on a real Valkey server)."""

from __future__ import annotations

import time

import pytest

from cwredis import job
from cwredis.keys import Keys
from cwredis.worker.direct import DirectRecorder, completion
from cwredis.worker.protocol import Direct, Err, Ok, Recorded, Setup
from cwredis.scripts import Scripts
from cwredis.script_types import parse_handed
from cwredis.serialization import decode_error, unframe_outcome
from cwredis.signing import Signer

KEYS = Keys("cwtest")
SPEC = job.Spec(client="c1", queue="default", env="e1", timeout_s=None, max_attempts=2)


def test_completion_of_a_result_is_signed_and_framed_with_the_output():
    signer = Signer(b"k" * 32)
    c = completion("3", 0, "c1", Ok("j1", b"PICKLE", "printed\n"), signer)
    assert (c.id, c.token, c.client, c.kind, c.output) == ("j1", "3", "c1", "ok", "")
    output, body = unframe_outcome(signer.open_outcome("j1", 0, b"ok", c.body))
    assert output == "printed\n" and body == b"PICKLE"


def test_completion_of_an_error_keeps_the_output_tail_for_the_failed_job():
    c = completion("1", 0, "c1", Err("j1", "exception", "ValueError: x", "Traceback...", "o" * 10_000),
                   Signer(None))
    assert (c.kind, c.reason, c.error, c.traceback) == ("err", "exception", "ValueError: x", "Traceback...")
    assert len(c.output) == 4096
    _, body = unframe_outcome(Signer(None).open_outcome("j1", 0, b"err", c.body))
    assert decode_error(body)[:3] == ("exception", "ValueError: x", "Traceback...")


@pytest.fixture
def handed(server):
    """A job handed to parked worker w1, as submit.lua does it; returns (client, claimed job)."""
    r = server.client()
    s = Scripts(r, KEYS)
    s.claim(r, worker_id="w1", queues=["default"], lease_ms=30_000, max_count=1, start_count=1, park=True)
    s.submit(r, queue="default", spec_digest="sp1", spec_fields=SPEC.to_hash(), fn_digest="fn1", fn_blob=b"Uf",
             fn_name="m.f", env_digest="e1", env_blob=b"Ue", jobs=[("a", b"Uargs")], blob_ttl_ms=60_000)
    (claimed,), _, _, _ = parse_handed(r.lrange(KEYS.inbox("w1"), 0, -1))
    return r, claimed


def test_a_child_records_its_outcome_once_and_reparks_its_worker(server, handed):
    r, claimed = handed
    recorder = DirectRecorder(Setup(server.url, None, KEYS.namespace, "w1", ["default"]))
    reply = Ok("a", b"PICKLE", "")
    recorded = recorder.record(reply, Direct(claimed.token, 0, "c1", repark=True))
    assert recorded is not None and recorded._replace(ended=0.0) == Recorded("a", True, 1) and recorded.ended > 0
    assert r.hget(KEYS.job("a"), job.STATE) == b"done" and r.llen(KEYS.results("c1")) == 1
    assert r.get(KEYS.parked("w1")) == b"1" and r.zrange(KEYS.idle("default"), 0, -1) == [b"w1"]
    assert not r.exists(KEYS.parked_children("w1"))  # a child with no slot (-1) never parks itself
    # A lost reply makes the worker record it again: refused, not delivered twice.
    again = recorder.record(reply, Direct(claimed.token, 0, "c1", repark=False))
    assert again is not None and again._replace(ended=0.0) == Recorded("a", False, 0)
    assert r.llen(KEYS.results("c1")) == 1


def test_a_child_of_a_slot_parks_on_its_own_inbox_as_it_reparks_its_worker(server, handed):
    r, claimed = handed
    recorder = DirectRecorder(Setup(server.url, None, KEYS.namespace, "w1", ["default"], slot=3))
    recorded = recorder.record(Ok("a", b"PICKLE", ""), Direct(claimed.token, 0, "c1", repark=True))
    assert recorded is not None and (recorded.room, recorded.parked) == (1, True)
    assert r.lrange(KEYS.parked_children("w1"), 0, -1) == [KEYS.child_inbox("w1", 3).encode()]


def test_a_child_counts_on_its_workers_lease_no_longer_than_the_deadline_and_the_lease_timeout(server, handed):
    """How long a parked child trusts a hand-off unconfirmed (child_parking): its worker's lease deadline as
    park.lua read it, but no more than the coordinator's lease timeout (a renewal may set a sooner one)."""
    r, claimed = handed  # w1 holds a lease of 30 s
    recorder = DirectRecorder(Setup(server.url, None, KEYS.namespace, "w1", ["default"], slot=0))
    r.hset(KEYS.config, "lease_ms", "5000")
    before = time.monotonic()
    assert recorder.record(Ok("a", b"PICKLE", ""), Direct(claimed.token, 0, "c1", repark=True)) is not None
    assert before + 4.5 < recorder.lease_holds_until <= time.monotonic() + 5


def test_a_child_that_cannot_reach_redis_leaves_the_outcome_to_its_worker(handed):
    r, claimed = handed
    recorder = DirectRecorder(Setup("redis://127.0.0.1:1/0", None, KEYS.namespace, "w1", ["default"]))
    started = time.monotonic()
    assert recorder.record(Ok("a", b"P", ""), Direct(claimed.token, 0, "c1", repark=True)) is None
    assert time.monotonic() - started < 5
    assert r.hget(KEYS.job("a"), job.STATE) == b"running"

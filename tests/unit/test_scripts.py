"""Each Lua transition, on fakeredis[lua] (fast) and on a real Valkey server.

Time is passed in explicitly, so leases expire when the test says so.
"""

from __future__ import annotations

import fakeredis
import pytest

from cwredis import job
from cwredis.keys import Keys
from cwredis.scripts import Completion, Requeue, ScriptRefused, Scripts

KEYS = Keys()
T0 = 1_000_000
LEASE_MS = 30_000
SPEC = job.Spec(client="c1", queue="default", env="e1", timeout_s=None, max_attempts=2)


@pytest.fixture(params=["fakeredis", "valkey"])
def r(request):
    if request.param == "fakeredis":
        client = fakeredis.FakeRedis()
    else:
        client = request.getfixturevalue("server").client()
    client.flushall()
    return client


@pytest.fixture
def s(r):
    return Scripts(r, KEYS)


def submit(s, r, *job_ids, spec=SPEC, send_records=True):
    fields = spec.to_hash()
    return s.submit(r, queue=spec.queue, spec_digest="sp1", spec_fields=fields if send_records else None,
                    fn_digest="fn1", fn_blob=b"Ufn" if send_records else None, fn_name="m.f",
                    env_digest="e1", env_blob=b"Uenv" if send_records else None,
                    jobs=[(j, b"Uargs-" + j.encode()) for j in job_ids], blob_ttl_ms=60_000)


def claim(s, r, worker="w1", n=1, now=T0, queues=("default",)):
    return s.parse_claim(s.claim(r, worker_id=worker, queues=list(queues), lease_ms=LEASE_MS, max_count=n,
                                 now_ms=now))


def ok(claimed, body=b"R"):
    return Completion(claimed.id, claimed.token, "c1", "ok", body)


def complete(s, r, *outcomes, worker="w1"):
    return s.complete(r, worker_id=worker, outcomes=list(outcomes), done_ttl_ms=60_000, result_ttl_ms=60_000,
                      now_ms=T0)


def state(r, job_id):
    value = r.hget(KEYS.job(job_id), job.STATE)
    return value.decode() if value else None


def expire(s, r, worker="w1", now=T0 + LEASE_MS + 1):
    return s.requeue_expired(r, worker_id=worker, forget_after_ms=600_000, result_ttl_ms=60_000,
                             lost_body=b'{"reason": "lost"}', lost_error="LostError: x", lost_traceback="tb",
                             now_ms=now)


def test_submit_queues_in_order_and_a_retried_submit_adds_nothing(s, r):
    assert submit(s, r, "a", "b") == 2
    assert submit(s, r, "a", "b") == 0  # a reply lost and the submit sent again
    assert r.lrange(KEYS.queue("default"), 0, -1) == [b"b", b"a"]  # taken from the right: a first
    assert state(r, "a") == "pending"


def test_submit_asks_for_records_it_does_not_have(s, r):
    assert submit(s, r, "a", send_records=False) == -1
    assert r.llen(KEYS.queue("default")) == 0 and not r.exists(KEYS.job("a"))
    assert submit(s, r, "a") == 1
    assert submit(s, r, "b", send_records=False) == 1


def test_claim_starts_attempts_oldest_first_and_renews_the_lease(s, r):
    submit(s, r, "a", "b", "c")
    claimed, dropped = claim(s, r, n=2)
    assert [c.id for c in claimed] == ["a", "b"] and dropped == []
    assert claimed[0].token == "1" and claimed[0].attempts == 1 and claimed[0].args == b"Uargs-a"
    assert state(r, "a") == "running" and state(r, "c") == "pending"
    assert set(r.lrange(KEYS.inflight("w1"), 0, -1)) == {b"a", b"b"}
    assert r.zscore(KEYS.workers, "w1") == T0 + LEASE_MS


def test_claim_drops_queue_entries_that_name_no_pending_job(s, r):
    submit(s, r, "a")
    r.rpush(KEYS.queue("default"), "garbage")  # taken first
    claimed, dropped = claim(s, r, n=1)
    assert dropped == ["garbage"] and [c.id for c in claimed] == ["a"]
    assert r.lrange(KEYS.inflight("w1"), 0, -1) == [b"a"]


def test_ids_parked_by_blmove_are_claimed_before_newer_queued_ones(s, r):
    submit(s, r, "a", "b", "c")
    r.lmove(KEYS.queue("default"), KEYS.taken("w1"), "RIGHT", "LEFT")  # the fetcher's BLMOVE parks a
    claimed, _ = claim(s, r, n=2)
    assert [c.id for c in claimed] == ["a", "b"]
    assert r.llen(KEYS.taken("w1")) == 0


def test_empty_and_binary_queue_entries_are_dropped(s, r):
    submit(s, r, "a")
    r.rpush(KEYS.queue("default"), b"", b"\xff\xfe")
    claimed, dropped = claim(s, r, n=1)
    assert sorted(dropped) == ["", "\ufffd\ufffd"] and [c.id for c in claimed] == ["a"]


def test_complete_records_once_and_refuses_a_stale_attempt(s, r):
    submit(s, r, "a")
    (first,), _ = claim(s, r)
    expire(s, r)  # worker w1 presumed dead: a is requeued
    (second,), _ = claim(s, r, worker="w2", now=T0 + LEASE_MS + 2)
    assert second.token == "2"
    assert complete(s, r, ok(first)) == [0]  # the old attempt is fenced off
    assert complete(s, r, ok(second), worker="w2") == [1]
    assert complete(s, r, ok(second), worker="w2") == [0]  # a retried completion is not doubled
    assert r.lrange(KEYS.results("c1"), 0, -1) == [b"1\na\n0\nok\nR"]
    assert r.get(KEYS.result_seq("c1")) == b"1"
    assert state(r, "a") == "done" and r.hget(KEYS.job("a"), job.ARGS) is None
    assert r.ttl(KEYS.job("a")) > 0


def test_a_failed_outcome_is_kept_until_requeued(s, r):
    submit(s, r, "a")
    (c,), _ = claim(s, r)
    err = Completion(c.id, c.token, "c1", "err", b"{}", "exception",
                     "ValueError: boom", "Traceback...")
    assert complete(s, r, err) == [1]
    assert state(r, "a") == "failed" and r.zscore(KEYS.failed, "a") == T0
    assert r.ttl(KEYS.job("a")) == -1
    assert r.hget(KEYS.job("a"), job.ERROR) == b"ValueError: boom"


def test_requeue_retry_waits_in_delayed_and_release_refunds_the_attempt(s, r):
    submit(s, r, "a", "b")
    (a, b), _ = claim(s, r, n=2)
    flags = s.requeue(r, worker_id="w1", now_ms=T0, jobs=[
        Requeue("a", a.token, KEYS.queue("default"), "retry", 500),
        Requeue("b", b.token, KEYS.queue("default"), "release"),
        Requeue("b", "99", KEYS.queue("default"), "release"),  # not the owner
    ])
    assert flags == [1, 1, 0]
    assert state(r, "a") == "delayed" and r.zscore(KEYS.delayed, "a") == T0 + 500
    assert state(r, "b") == "pending" and r.hget(KEYS.job("b"), job.ATTEMPTS) == b"0"
    assert r.llen(KEYS.inflight("w1")) == 0
    assert s.promote(r, now_ms=T0 + 499) == 0
    assert s.promote(r, now_ms=T0 + 500) == 1
    assert state(r, "a") == "pending" and r.lrange(KEYS.queue("default"), -1, -1) == [b"a"]


def test_expired_lease_requeues_then_fails_lost_after_max_attempts(s, r):
    submit(s, r, "a")
    claim(s, r)
    assert expire(s, r, now=T0 + LEASE_MS - 1) == (0, 0)  # not expired yet
    assert expire(s, r) == (1, 0)
    assert expire(s, r) == (0, 0)  # a second coordinator sweeping too: nothing doubles
    assert state(r, "a") == "pending" and r.lrange(KEYS.queue("default"), 0, -1) == [b"a"]
    claim(s, r, worker="w2", now=T0 + LEASE_MS + 2)  # attempt 2 of 2
    assert expire(s, r, worker="w2", now=T0 + 2 * LEASE_MS + 3) == (0, 1)
    assert state(r, "a") == "failed" and r.hget(KEYS.job("a"), job.REASON) == b"lost"
    assert r.lrange(KEYS.results("c1"), 0, -1) == [b'1\na\n0\nerr\n{"reason": "lost"}']


def test_expired_sweep_returns_ids_taken_but_never_claimed(s, r):
    submit(s, r, "a", "b")
    r.lmove(KEYS.queue("default"), KEYS.taken("w1"), "RIGHT", "LEFT")  # parked by BLMOVE
    r.lmove(KEYS.queue("default"), KEYS.inflight("w1"), "RIGHT", "LEFT")  # mid-claim
    r.zadd(KEYS.workers, {"w1": T0})
    assert expire(s, r) == (2, 0)
    assert r.llen(KEYS.taken("w1")) == 0 and r.llen(KEYS.queue("default")) == 2
    assert state(r, "a") == "pending" and r.hget(KEYS.job("a"), job.ATTEMPTS) is None  # absent: 0


def test_heartbeat_says_whether_the_lease_was_still_valid(s, r):
    assert s.heartbeat(r, worker_id="w1", lease_ms=1000, info={"host": "h"}, now_ms=T0) == 0  # new
    assert s.heartbeat(r, worker_id="w1", lease_ms=1000, info={}, now_ms=T0 + 900) == 1
    assert s.heartbeat(r, worker_id="w1", lease_ms=1000, info={}, now_ms=T0 + 5000) == 0  # expired
    assert r.hget(KEYS.worker("w1"), "host") == b"h"


def test_release_inflight_keeps_running_ids_and_refunds_the_others(s, r):
    submit(s, r, "a", "b", "c")
    claim(s, r, n=2)
    r.lmove(KEYS.queue("default"), KEYS.taken("w1"), "RIGHT", "LEFT")  # c parked, never claimed
    assert s.release_inflight(r, worker_id="w1", keep=["a"], unregister=False) == 2
    assert state(r, "a") == "running" and state(r, "b") == "pending"
    assert r.llen(KEYS.queue("default")) == 2 and r.llen(KEYS.taken("w1")) == 0
    assert r.hget(KEYS.job("b"), job.ATTEMPTS) == b"0"
    assert s.release_inflight(r, worker_id="w1", keep=["a"], unregister=True) == 0
    assert r.zscore(KEYS.workers, "w1") is None


def test_requeue_failed_checks_named_ids_first_and_bumps_the_generation(s, r):
    submit(s, r, "a", "b")
    for c in claim(s, r, n=2)[0]:
        complete(s, r, Completion(c.id, c.token, "c1", "err", b"{}",
                                  "exception", "E", "tb"))
    with pytest.raises(ScriptRefused):
        s.requeue_failed(r, ["a", "nope"])
    assert state(r, "a") == "failed"  # nothing changed
    assert s.requeue_failed(r, ["a"]) == 1
    assert state(r, "a") == "pending" and r.hget(KEYS.job("a"), job.GENERATION) == b"1"
    assert r.hget(KEYS.job("a"), job.ATTEMPTS) == b"0" and r.hget(KEYS.job("a"), job.REASON) is None
    with pytest.raises(ScriptRefused):
        s.requeue_failed(r, ["a"])  # pending, not failed
    assert s.requeue_failed(r) == 1  # all: just b
    assert r.zcard(KEYS.failed) == 0


def test_purge_failed_deletes_only_failed_jobs(s, r):
    submit(s, r, "a", "b")
    (a,), _ = claim(s, r)
    complete(s, r, Completion(a.id, a.token, "c1", "err", b"{}", "exception",
                              "E", "tb"))
    with pytest.raises(ScriptRefused):
        s.purge_failed(r, ["b"])
    assert s.purge_failed(r) == 1
    assert not r.exists(KEYS.job("a")) and state(r, "b") == "pending"


def test_garbage_counters_do_not_abort_a_claim_half_way(s, r):
    submit(s, r, "a")
    r.hset(KEYS.job("a"), mapping={job.ATTEMPTS: "x", job.TOKEN: "y"})
    (c,), _ = claim(s, r)
    assert c.attempts == 1 and c.token == "1" and state(r, "a") == "running"


def test_jobs_claimed_ahead_are_charged_only_once_started(s, r):
    submit(s, r, "a", "b", "c")
    claimed, _ = s.parse_claim(s.claim(r, worker_id="w1", queues=["default"], lease_ms=LEASE_MS, max_count=3,
                                       start_count=1, now_ms=T0))
    a, b, c = claimed
    assert [x.attempts for x in claimed] == [1, 1, 1]  # the number each run has once started
    assert r.hget(KEYS.job("a"), job.ATTEMPTS) == b"1" and r.hget(KEYS.job("b"), job.ATTEMPTS) is None
    assert s.start(r, jobs=[("b", b.token)]) == 1
    assert s.start(r, jobs=[("b", b.token)]) == 0  # a repeated round trip charges nothing twice
    assert r.hget(KEYS.job("b"), job.ATTEMPTS) == b"1"
    # The worker dies: a and b ran (charged), c never started and is not charged.
    assert expire(s, r) == (3, 0)
    assert [r.hget(KEYS.job(j), job.ATTEMPTS) for j in "abc"] == [b"1", b"1", None]


def test_a_claimed_ahead_job_that_completes_before_its_start_is_recorded_is_charged(s, r):
    submit(s, r, "a")
    (a,), _ = s.parse_claim(s.claim(r, worker_id="w1", queues=["default"], lease_ms=LEASE_MS, max_count=1,
                                    start_count=0, now_ms=T0))
    assert complete(s, r, ok(a)) == [1]
    assert r.hget(KEYS.job("a"), job.ATTEMPTS) == b"1"


def test_worker_deaths_end_a_job_lost_even_if_its_start_was_never_recorded(s, r):
    submit(s, r, "a")  # max_attempts 2: lost after 4 deaths of uncharged holders
    for death in range(4):
        now = T0 + death * 2 * LEASE_MS
        s.claim(r, worker_id="w1", queues=["default"], lease_ms=LEASE_MS, max_count=1, start_count=0, now_ms=now)
        expire(s, r, now=now + LEASE_MS + 1)
    assert state(r, "a") == "failed" and r.hget(KEYS.job("a"), job.REASON) == b"lost"


def test_a_job_whose_worker_died_is_charged_at_claim_even_when_claimed_ahead(s, r):
    submit(s, r, "a")
    s.claim(r, worker_id="w1", queues=["default"], lease_ms=LEASE_MS, max_count=1, start_count=0, now_ms=T0)
    expire(s, r)  # w1 died holding it: not charged, but remembered
    assert r.hget(KEYS.job("a"), job.ATTEMPTS) is None
    s.claim(r, worker_id="w2", queues=["default"], lease_ms=LEASE_MS, max_count=1, start_count=0,
            now_ms=T0 + LEASE_MS + 2)
    assert r.hget(KEYS.job("a"), job.ATTEMPTS) == b"1"  # it may be what killed w1: counted from now on

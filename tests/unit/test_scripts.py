"""Each Lua transition, on fakeredis[lua] (fast) and on a real Valkey server.

Time is passed in explicitly, so leases expire when the test says so.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import redis

from cwredis import job
from cwredis.keys import Keys
from cwredis import scripts
from cwredis.scripts import ScriptRefused, Scripts
from cwredis.script_types import Completion, Requeue, parse_handed

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from aof_breakdown import increment_file, parse_commands  # noqa: E402  (benchmarks/ is not a package)

KEYS = Keys()
T0 = 1_000_000
LEASE_MS = 30_000
SPEC = job.Spec(client="c1", queue="default", env="e1", timeout_s=None, max_attempts=2, function="fn1")


def submit(s, r, *job_ids, spec=SPEC, send_records=True):
    fields = spec.to_hash()
    return s.submit(r, queue=spec.queue, spec_digest="sp1", spec_fields=fields if send_records else None,
                    fn_digest="fn1", fn_blob=b"Ufn" if send_records else None, fn_name="m.f",
                    env_digest="e1", env_blob=b"Uenv" if send_records else None,
                    jobs=[(j, b"Uargs-" + j.encode()) for j in job_ids], blob_ttl_ms=60_000)


def claim_reply(s, r, worker="w1", n=1, now=T0, queues=("default",), start_count=None, park=False):
    return s.parse_claim(s.claim(r, worker_id=worker, queues=list(queues), lease_ms=LEASE_MS, max_count=n,
                                 start_count=start_count, park=park, now_ms=now))


def claim(s, r, worker="w1", n=1, now=T0, queues=("default",), start_count=None):
    """(claimed, dropped) of one claim."""
    reply = claim_reply(s, r, worker, n, now, queues, start_count)
    return reply.claimed, reply.dropped


def park(s, r, worker="w1", idle_children=1, queues=("default",)):
    """Claim with an empty queue on the server's clock (hand-offs check leases against it): parks."""
    reply = claim_reply(s, r, worker, n=idle_children, now=int(time.time() * 1000), queues=queues,
                        start_count=idle_children, park=True)
    assert reply.claimed == [] and reply.room == idle_children
    return reply


def inbox(r, worker="w1"):
    return r.lrange(KEYS.inbox(worker), 0, -1)


def ok(claimed, body=b"R"):
    return Completion(claimed.id, claimed.token, "c1", "ok", body)


def complete(s, r, *outcomes, worker="w1"):
    return s.complete(r, worker_id=worker, outcomes=list(outcomes), done_ttl_ms=60_000, result_ttl_ms=60_000,
                      now_ms=T0)


def state(r, job_id):
    return job.state_of(*r.hmget(KEYS.job(job_id), job.STATE, job.SPEC))


def expire(s, r, worker="w1", now=T0 + LEASE_MS + 1):
    return s.requeue_expired(r, worker_id=worker, forget_after_ms=600_000, result_ttl_ms=60_000,
                             lost_body=b'{"reason": "lost"}', lost_error="LostError: x", lost_traceback="tb",
                             now_ms=now)


def test_submit_queues_in_order_and_a_retried_submit_adds_nothing(s, r):
    assert submit(s, r, "a", "b") == 2
    assert submit(s, r, "a", "b") == 0  # a reply lost and the submit sent again
    assert r.lrange(KEYS.queue("default"), 0, -1) == [b"b", b"a"]  # taken from the right: a first
    assert state(r, "a") == "pending"


def test_submits_of_one_scripts_object_to_other_queues_and_specs_each_go_where_they_say(s, r):
    """Scripts keeps the part of submit.lua's arguments that repeats; a submit that differs gets its own."""
    other = job.Spec(client="c1", queue="other", env="e1", timeout_s=None, max_attempts=2, function="fn1")
    assert submit(s, r, "a") == 1
    assert submit(s, r, "b", spec=other) == 1
    assert submit(s, r, "c") == 1
    assert s.submit(r, queue="default", spec_digest="sp2", spec_fields=SPEC.to_hash(), fn_digest="fn1",
                    fn_blob=b"Ufn", fn_name="m.f", env_digest="e1", env_blob=b"Uenv", jobs=[("d", b"Uargs")],
                    blob_ttl_ms=60_000) == 1
    assert r.lrange(KEYS.queue("default"), 0, -1) == [b"d", b"c", b"a"]
    assert r.lrange(KEYS.queue("other"), 0, -1) == [b"b"]
    assert [r.hget(KEYS.job(j), job.SPEC) for j in "acd"] == [b"sp1", b"sp1", b"sp2"]


def test_a_pending_job_has_no_state_field_and_is_pending_again_without_one(s, r):
    submit(s, r, "a")
    assert job.STATE.encode() not in r.hkeys(KEYS.job("a")) and state(r, "a") == "pending"
    claim(s, r)
    assert r.hget(KEYS.job("a"), job.STATE) == b"running"
    assert expire(s, r)[0] == 1  # the dead worker's job goes back to its queue...
    assert job.STATE.encode() not in r.hkeys(KEYS.job("a")) and state(r, "a") == "pending"  # ...with no 's'
    assert r.lrange(KEYS.queue("default"), 0, -1) == [b"a"]
    # A record naming neither state nor spec is no job (half-written): claim drops it, never runs it.
    r.hset(KEYS.job("half"), job.ARGS, b"Uargs")
    r.rpush(KEYS.queue("default"), "half")
    claimed, dropped = claim(s, r, worker="w2", n=2, now=T0 + LEASE_MS + 2)
    assert dropped == ["half"] and [c.id for c in claimed] == ["a"]


def test_a_job_names_its_function_through_its_spec(s, r):
    submit(s, r, "a")
    assert sorted(r.hkeys(KEYS.job("a"))) == [job.ARGS.encode(), job.SPEC.encode()]  # all a queued job holds
    assert r.hget(KEYS.spec("sp1"), job.SPEC_FUNCTION) == b"fn1"
    # A job queued before the digest moved into the spec names its function itself; that one counts.
    r.hset(KEYS.job("old"), mapping={job.STATE: "pending", job.SPEC: "sp1", job.FUNCTION: "fn0", job.ARGS: "U"})
    r.lpush(KEYS.queue("default"), "old")
    r.hset(KEYS.job("nospec"), mapping={job.SPEC: "gone", job.ARGS: "U"})  # its spec expired or is garbage
    r.lpush(KEYS.queue("default"), "nospec")
    claimed, dropped = claim(s, r, n=3)
    assert [(c.id, c.function) for c in claimed] == [("a", "fn1"), ("old", "fn0"), ("nospec", "")]
    assert dropped == []


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


def test_claim_moves_its_batch_in_three_commands_oldest_first(server):
    """20 queued, 12 claimed: the 12 oldest, in submission order; the in-flight list holds them as
    LMOVEs one by one would have left it; the queue keeps the 8 newest in order; and the move was one
    LPUSH and one LTRIM (what the append-only file gets), not an LMOVE per job."""
    r = server.client()
    s = Scripts(r, Keys())
    ids = [f"j{i:02d}" for i in range(20)]
    submit(s, r, *ids)
    r.config_resetstat()
    claimed, dropped = claim(s, r, n=12, start_count=12)
    stats = r.info("commandstats")
    assert [c.id for c in claimed] == ids[:12] and dropped == []
    assert r.lrange(KEYS.inflight("w1"), 0, -1) == [i.encode() for i in reversed(ids[:12])]
    assert r.lrange(KEYS.queue("default"), 0, -1) == [i.encode() for i in reversed(ids[12:])]
    assert "cmdstat_lmove" not in stats
    assert stats["cmdstat_lpush"]["calls"] == 1 and stats["cmdstat_ltrim"]["calls"] == 1


def test_claim_drops_queue_entries_that_name_no_pending_job(s, r):
    submit(s, r, "a")
    r.rpush(KEYS.queue("default"), "garbage")  # taken first
    claimed, dropped = claim(s, r, n=1)
    assert dropped == ["garbage"] and [c.id for c in claimed] == ["a"]
    assert r.lrange(KEYS.inflight("w1"), 0, -1) == [b"a"]


def test_submit_hands_new_jobs_to_a_parked_worker_up_to_its_room_then_queues(s, r):
    park(s, r, idle_children=2)
    assert submit(s, r, "a", "b", "c") == 3
    handed, wake, garbled, _ = parse_handed(inbox(r))
    assert [c.id for c in handed] == ["a", "b"] and not wake and garbled == 0
    assert handed[0].token == "1" and handed[0].args == b"Uargs-a" and handed[0].spec == "sp1"
    assert handed[0].function == "fn1" and handed[0].attempts == 1 and handed[0].generation == 0
    # Claimed for it, owned and fenced, and charged its attempt at once: it starts on an idle
    # child when read, so a job that kills its worker then is counted (issue 8, fault 6).
    assert state(r, "a") == "running" and r.hget(KEYS.job("a"), job.WORKER) == b"w1"
    assert r.hget(KEYS.job("a"), job.ATTEMPTS) == b"1" and r.hget(KEYS.job("a"), "pf") is None
    assert set(r.lrange(KEYS.inflight("w1"), 0, -1)) == {b"a", b"b"}
    assert r.lrange(KEYS.queue("default"), 0, -1) == [b"c"]  # no room left: queued, and unparked
    assert not r.exists(KEYS.parked("w1")) and r.zcard(KEYS.idle("default")) == 0


def test_a_worker_with_room_left_stays_parked_first_in_line(s, r):
    park(s, r, "w1", idle_children=2)
    park(s, r, "w2", idle_children=1)
    submit(s, r, "a")
    assert len(inbox(r, "w1")) == 1 and inbox(r, "w2") == []  # the longest parked goes first
    assert r.get(KEYS.parked("w1")) == b"1" and r.zrange(KEYS.idle("default"), 0, 0) == [b"w1"]
    submit(s, r, "b", "c")
    assert len(inbox(r, "w1")) == 2 and len(inbox(r, "w2")) == 1 and r.zcard(KEYS.idle("default")) == 0


def test_a_lone_job_looks_up_one_parked_worker_and_writes_nothing_for_the_others(server):
    """Two parked workers of one slot each; a submit of one job hands it to the first and does not pop
    the second just to put it back (on the real server, whose command counts say what ran)."""
    r = server.client()
    s = Scripts(r, Keys())
    park(s, r, "w1")
    park(s, r, "w2")
    r.config_resetstat()
    submit(s, r, "a")
    stats = r.info("commandstats")
    assert len(inbox(r, "w1")) == 1 and inbox(r, "w2") == []
    assert stats["cmdstat_zpopmin"]["calls"] == 1, stats["cmdstat_zpopmin"]
    assert "cmdstat_zadd" not in stats and "cmdstat_set" not in stats, stats
    assert r.zrange(KEYS.idle("default"), 0, -1) == [b"w2"] and r.get(KEYS.parked("w2")) == b"1"


def test_submit_skips_parked_workers_whose_lease_ran_out(s, r):
    park(s, r)
    r.zadd(KEYS.workers, {"w1": 1})  # its lease long expired: perhaps dead
    submit(s, r, "a")
    assert inbox(r) == [] and r.lrange(KEYS.queue("default"), 0, -1) == [b"a"]
    assert r.zcard(KEYS.idle("default")) == 0  # the stale entry is gone


def test_claim_unparks_and_returns_handed_jobs_first(s, r):
    park(s, r, idle_children=1)
    submit(s, r, "a", "b")  # a handed, b queued
    reply = claim_reply(s, r, n=3, now=int(time.time() * 1000), start_count=3, park=True)
    assert [c.id for c in reply.claimed] == ["a", "b"] and reply.handed == 1
    assert reply.room == 1  # a third child still idle and the queue empty: parked again
    assert inbox(r) == [] and r.hget(KEYS.job("b"), job.ATTEMPTS) == b"1"
    assert r.hget(KEYS.job("a"), job.ATTEMPTS) == b"1"  # handed: charged at hand-off


def test_claim_does_not_park_while_a_queue_still_holds_entries(s, r):
    for i in range(150):  # more garbage than one claim's budget
        r.rpush(KEYS.queue("default"), f"garbage-{i}")
    reply = claim_reply(s, r, n=1, start_count=1, park=True)
    assert reply.claimed == [] and reply.room == 0 and not r.exists(KEYS.parked("w1"))


def test_queueing_paths_other_than_submit_wake_a_parked_worker(s, r):
    submit(s, r, "a")
    (a,), _ = claim(s, r, "w0")
    park(s, r, "w1")
    assert s.requeue(r, worker_id="w0", now_ms=T0, jobs=[Requeue("a", a.token, "default", "release")]) == [1]
    assert inbox(r, "w1") == [b"wake"] and not r.exists(KEYS.parked("w1"))
    assert r.lrange(KEYS.queue("default"), 0, -1) == [b"a"]  # the woken worker claims it


def test_garbled_inbox_messages_are_counted_not_trusted(s, r):
    handed, wake, garbled, cancels = parse_handed([b"1:a1:1", b"junk", b"99:x", b"wake", b"x:j9"])
    assert handed == [] and wake and garbled == 3 and cancels == ["j9"]


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


def test_a_batchs_outcomes_for_one_client_are_numbered_and_appended_in_one_command_each(server):
    """Five outcomes of one complete call, after one earlier outcome: numbered 2..6 in order, appended in
    that order, published in that order -- by one INCRBY and one RPUSH (what the append-only file gets)."""
    r = server.client()
    s = Scripts(r, Keys())
    submit(s, r, *"abcdef")
    claimed, _ = claim(s, r, n=6, start_count=6)
    complete(s, r, ok(claimed[0]))
    listener = r.pubsub()
    listener.ssubscribe(KEYS.channel("c1"))
    assert listener.get_sharded_message(timeout=1)["type"] == "ssubscribe"
    r.config_resetstat()
    assert complete(s, r, *(ok(c, b"R" + c.id.encode()) for c in claimed[1:])) == [1] * 5
    stats = r.info("commandstats")
    expected = [f"{seq}\n{job_id}\n0\nok\nR{job_id}".encode() for seq, job_id in zip(range(2, 7), "bcdef")]
    assert r.lrange(KEYS.results("c1"), 1, -1) == expected and r.get(KEYS.result_seq("c1")) == b"6"
    published = [listener.get_sharded_message(timeout=1) for _ in range(5)]
    assert [m["data"] for m in published if m] == expected
    assert stats["cmdstat_incrby"]["calls"] == 1 and stats["cmdstat_rpush"]["calls"] == 1
    assert "cmdstat_incr" not in stats
    listener.close()


def test_complete_deletes_only_the_fields_a_job_has(server):
    """What the append-only file records for completing a job that never reported progress: an HDEL of
    its arguments and holder only, not of absent progress and live-output fields -- nor the DEL of the
    staged arguments it does not have (a DEL that deletes nothing is not written)."""
    r = server.client()
    s = Scripts(r, Keys())
    submit(s, r, "a")
    (claimed,), _ = claim(s, r)
    complete(s, r, ok(claimed))  # the server writes the file before it replies
    commands = [args for args, _ in parse_commands(increment_file(server.dir).read_bytes())]
    hdels = [args[2:] for args in commands if args[0].upper() == b"HDEL" and args[1] == KEYS.job("a").encode()]
    assert hdels == [[b"a", b"w"]], hdels
    assert not [args for args in commands if KEYS.staged_args("a").encode() in args]


BIG = b"B" * (1 << 17)  # over Scripts.stage's threshold


def complete_staged(s, r, *outcomes, worker="w1"):
    """Stage each large body (a SET) and complete, in one pipeline, as the workers do; the flags."""
    pipe = r.pipeline(transaction=False)
    to_record, staged = s.stage(pipe, list(outcomes), 60_000)
    s.complete(pipe, worker_id=worker, outcomes=to_record, done_ttl_ms=60_000, result_ttl_ms=60_000, now_ms=T0)
    replies = pipe.execute()
    assert len(replies) == staged + 1
    return [int(f) for f in replies[-1]]


def test_a_staged_body_stays_in_its_key_named_by_the_entry_until_the_client_trims_it(s, r):
    submit(s, r, "a")
    (claimed,), _ = claim(s, r)
    assert complete_staged(s, r, ok(claimed, BIG)) == [1]
    key = KEYS.staged_body("a", claimed.token)
    assert r.lrange(KEYS.results("c1"), 0, -1) == [b"1\na\n0\nref\nok\n" + key.encode()]
    assert r.get(key) == BIG and 0 < r.pttl(key) <= 60_000
    assert s.trim_results(r, client_id="c1", headers=[b"1\na\n0\n"], drop_if_empty=True) == 1
    assert not r.exists(key) and not r.exists(KEYS.results("c1"))


def test_a_refused_staged_body_is_deleted(s, r):
    submit(s, r, "a")
    (first,), _ = claim(s, r)
    expire(s, r)
    claim(s, r, worker="w2", now=T0 + LEASE_MS + 2)
    assert complete_staged(s, r, ok(first, BIG)) == [0]
    assert not r.exists(KEYS.staged_body("a", first.token)) and r.llen(KEYS.results("c1")) == 0


def test_a_sessions_staged_body_is_kept_in_its_record_and_sent_inline(s, r):
    """A session's job keeps its outcome for clients that attach later: the body goes into the record
    and each attached client's entry, and the staged key is deleted."""
    submit(s, r, "a")
    (claimed,), _ = claim(s, r)
    r.hset(KEYS.job("a"), "rc", "c1,c2")
    assert complete_staged(s, r, ok(claimed, BIG)) == [1]
    assert r.hget(KEYS.job("a"), "ro") == b"ok\n" + BIG
    for client in ("c1", "c2"):
        assert r.lrange(KEYS.results(client), 0, -1) == [b"1\na\n0\nok\n" + BIG]
    assert not r.exists(KEYS.staged_body("a", claimed.token))


def submit_staged(s, r, *job_ids, envelope=BIG):
    """Stage large arguments (SETs) and submit, in one pipeline, as clients do; submit.lua's reply."""
    s.load()  # a pipeline does not load scripts on NOSCRIPT (Scripts.execute's caller retries)
    pipe = r.pipeline(transaction=False)
    jobs, staged = s.stage_args(pipe, [(j, envelope) for j in job_ids])
    s.submit(pipe, queue=SPEC.queue, spec_digest="sp1", spec_fields=SPEC.to_hash(), fn_digest="fn1",
             fn_blob=b"Ufn", fn_name="m.f", env_digest="e1", env_blob=b"Uenv", jobs=jobs, blob_ttl_ms=60_000)
    replies = pipe.execute()
    assert len(replies) == staged + 1
    return replies[-1]


def test_large_arguments_wait_in_their_own_key_named_by_a_marker_and_go_when_the_job_is_done(s, r):
    """The record holds the marker, not the arguments; submit.lua gives the key the function's life (not the
    short one of the SET); a claim returns the marker; completing the job deletes the key."""
    assert submit_staged(s, r, "a") == 1
    key = KEYS.staged_args("a")
    assert r.hget(KEYS.job("a"), job.ARGS) == job.STAGED_ARGS
    assert r.get(key) == BIG and 0 < r.pttl(key) <= 60_000  # the blob TTL, not STAGED_ARGS_ORPHAN_TTL_MS
    (claimed,), _ = claim(s, r)
    assert claimed.args == job.STAGED_ARGS
    assert complete(s, r, ok(claimed)) == [1]
    assert not r.exists(key) and state(r, "a") == "done"


def test_small_arguments_stay_in_the_record(s, r):
    pipe = r.pipeline(transaction=False)
    jobs, staged = s.stage_args(pipe, [("a", b"U" + b"x" * 1000)])
    assert staged == 0 and jobs == [("a", b"U" + b"x" * 1000)] and pipe.execute() == []


def test_staged_arguments_a_submit_left_behind_expire_soon(s, r):
    """The client died between its SET and submit.lua (or submit.lua was refused): the key expires within
    STAGED_ARGS_ORPHAN_TTL_MS."""
    pipe = r.pipeline(transaction=False)
    s.stage_args(pipe, [("a", BIG)])
    pipe.execute()
    assert 60_000 < r.pttl(KEYS.staged_args("a")) <= scripts.STAGED_ARGS_ORPHAN_TTL_MS
    assert not r.exists(KEYS.job("a"))


def test_a_submit_sent_again_leaves_a_queued_jobs_staged_arguments_as_they_were(s, r):
    """After a lost reply the client sends the same job again: the SET (NX) neither rewrites the arguments
    nor gives them the short life again, and submit.lua skips the job."""
    submit_staged(s, r, "a")
    key = KEYS.staged_args("a")
    r.pexpire(key, 30_000)
    assert submit_staged(s, r, "a", envelope=b"other" * 20_000) == 0
    assert r.get(key) == BIG and 0 < r.pttl(key) <= 30_000
    assert r.lrange(KEYS.queue("default"), 0, -1) == [b"a"]


def test_staged_arguments_go_with_a_cancelled_or_purged_job_and_stay_with_a_failed_one(s, r):
    submit_staged(s, r, "a", "b")
    assert s.cancel(r, ["a"], stop_running=False) == ["cancelled"]
    assert not r.exists(KEYS.staged_args("a"))
    (b,), _ = claim(s, r)
    complete(s, r, Completion(b.id, b.token, "c1", "err", b"{}", "exception", "E", "tb"))
    assert r.get(KEYS.staged_args("b")) == BIG  # requeue-failed may run it again
    assert s.purge_failed(r, ["b"]) == 1
    assert not r.exists(KEYS.staged_args("b"))


def test_a_job_with_staged_arguments_is_handed_off_with_the_marker(s, r):
    park(s, r)
    submit_staged(s, r, "a")
    handed = parse_handed(inbox(r))
    assert [(c.id, c.args) for c in handed.claimed] == [("a", job.STAGED_ARGS)]
    assert r.get(KEYS.staged_args("a")) == BIG


def test_trimming_deletes_only_staged_keys_an_entry_names(s, r):
    r.set("other", "kept")
    r.rpush(KEYS.results("c1"), b"1\na\n0\nref\nok\nother")
    assert s.trim_results(r, client_id="c1", headers=[b"1\na\n0\n"], drop_if_empty=False) == 1
    assert r.get("other") == b"kept"


def test_complete_counts_outcomes_in_all_and_per_queue(s, r):
    submit(s, r, "a", "b", "c")
    claimed, _ = claim(s, r, n=3)
    a, b, c = claimed
    failed = Completion(c.id, c.token, "c1", "err", b"{}", "exception", "ValueError: boom", "tb")
    assert complete(s, r, ok(a), ok(b), failed) == [1, 1, 1]
    assert complete(s, r, ok(a)) == [0]  # refused: counted nothing
    assert r.hgetall(KEYS.stats) == {b"done": b"2", b"failed": b"1", b"done:default": b"2",
                                     b"failed:default": b"1"}


def test_a_failed_outcome_is_kept_until_requeued(s, r):
    submit(s, r, "a")
    (c,), _ = claim(s, r)
    err = Completion(c.id, c.token, "c1", "err", b"{}", "exception",
                     "ValueError: boom", "Traceback...")
    assert complete(s, r, err) == [1]
    assert state(r, "a") == "failed" and r.zscore(KEYS.failed, "a") == T0
    assert r.ttl(KEYS.job("a")) == -1
    assert r.hget(KEYS.job("a"), job.ERROR) == b"ValueError: boom"


def test_an_attempt_is_fenced_by_its_token_and_its_worker(s, r):
    """After a failover that lost writes, the same token can go to a second worker: the first, still
    holding it, can neither complete nor requeue the job the second now runs."""
    submit(s, r, "a")
    (a,), _ = claim(s, r, worker="w1")
    r.hset(KEYS.job("a"), job.WORKER, "w2")  # what w2's claim of the same token left after the failover
    assert complete(s, r, ok(a), worker="w1") == [0]
    assert s.requeue(r, worker_id="w1", now_ms=T0, jobs=[Requeue("a", a.token, "default", "release")]) == [0]
    assert state(r, "a") == "running" and r.llen(KEYS.results("c1")) == 0
    assert complete(s, r, ok(a), worker="w2") == [1]


def test_requeue_retry_waits_in_delayed_and_release_refunds_the_attempt(s, r):
    submit(s, r, "a", "b")
    (a, b), _ = claim(s, r, n=2)
    flags = s.requeue(r, worker_id="w1", now_ms=T0, jobs=[
        Requeue("a", a.token, "default", "retry", 500),
        Requeue("b", b.token, "default", "release"),
        Requeue("b", "99", "default", "release"),  # not the owner
    ])
    assert flags == [1, 1, 0]
    assert state(r, "a") == "delayed" and r.zscore(KEYS.delayed, "a") == T0 + 500
    assert state(r, "b") == "pending" and r.hget(KEYS.job("b"), job.ATTEMPTS) == b"0"
    assert r.llen(KEYS.inflight("w1")) == 0
    assert s.promote(r, now_ms=T0 + 499) == 0
    assert s.promote(r, now_ms=T0 + 500) == 1
    assert state(r, "a") == "pending" and r.lrange(KEYS.queue("default"), -1, -1) == [b"a"]


def reject(s, r, claimed, worker):
    return s.requeue(r, worker_id=worker, now_ms=T0, jobs=[
        Requeue(claimed.id, claimed.token, "default", "reject", limit=SPEC.max_attempts, client="c1",
                body=b"SIGNED-FAILURE", error="RejectedError: bad tag")])


def test_a_rejected_job_goes_to_the_back_refunded_until_its_max_attempts_th_rejection(s, r):
    submit(s, r, "a", "b")
    (a,), _ = claim(s, r, worker="w1")
    assert reject(s, r, a, "w1") == [1]
    assert state(r, "a") == "pending" and r.hget(KEYS.job("a"), job.ATTEMPTS) == b"0"  # refunded
    assert r.lrange(KEYS.queue("default"), 0, -1) == [b"a", b"b"]  # behind b: b is taken next
    assert r.hget(KEYS.job("a"), job.REJECTIONS) == b"1" and r.llen(KEYS.results("c1")) == 0
    (b,), _ = claim(s, r, worker="w1")
    (a,), _ = claim(s, r, worker="w2")
    assert reject(s, r, a, "w2") == [2]  # the second rejection, and max_attempts is 2: failed
    assert state(r, "a") == "failed" and r.hget(KEYS.job("a"), job.REASON) == b"rejected"
    assert r.zscore(KEYS.failed, "a") == T0 and r.llen(KEYS.inflight("w2")) == 0
    (entry,) = r.lrange(KEYS.results("c1"), 0, -1)
    assert entry.endswith(b"\na\n0\nerr\nSIGNED-FAILURE")
    assert s.requeue_failed(r, ["a"]) == 1 and r.hget(KEYS.job("a"), job.REJECTIONS) is None


def test_expired_lease_requeues_then_fails_lost_after_max_attempts(s, r):
    submit(s, r, "a")
    claim(s, r)
    assert expire(s, r, now=T0 + LEASE_MS - 1) == (0, 0, 0)  # not expired yet
    assert expire(s, r) == (1, 0, 0)
    assert expire(s, r) == (0, 0, 0)  # a second coordinator sweeping too: nothing doubles
    assert state(r, "a") == "pending" and r.lrange(KEYS.queue("default"), 0, -1) == [b"a"]
    claim(s, r, worker="w2", now=T0 + LEASE_MS + 2)  # attempt 2 of 2
    assert expire(s, r, worker="w2", now=T0 + 2 * LEASE_MS + 3) == (0, 1, 0)
    assert state(r, "a") == "failed" and r.hget(KEYS.job("a"), job.REASON) == b"lost"
    assert r.lrange(KEYS.results("c1"), 0, -1) == [b'1\na\n0\nerr\n{"reason": "lost"}']


def test_expired_sweep_requeues_jobs_handed_but_never_read_and_unparks(s, r):
    r.hset(KEYS.worker("w1"), "queues", "default")
    park(s, r, idle_children=2)
    submit(s, r, "a", "b")  # both handed to w1, which dies before reading them
    now = int(time.time() * 1000) + 2 * LEASE_MS
    assert expire(s, r, now=now) == (2, 0, 0)
    assert r.llen(KEYS.queue("default")) == 2 and inbox(r) == [] and r.llen(KEYS.inflight("w1")) == 0
    # Charged at hand-off, refunded here: still in the inbox, they were never read, so never
    # started (attempts count runs). The death counts ('d'): a job that kills its worker is
    # charged at every claim from then on (issue 8, fault 6).
    for job_id in ("a", "b"):
        assert state(r, job_id) == "pending" and r.hget(KEYS.job(job_id), job.ATTEMPTS) == b"0"
        assert r.hget(KEYS.job(job_id), "d") == b"1"
    assert not r.exists(KEYS.parked("w1")) and r.zcard(KEYS.idle("default")) == 0


def test_expired_sweep_charges_a_hand_off_the_worker_read_and_refunds_one_it_did_not(s, r):
    r.hset(KEYS.worker("w1"), "queues", "default")
    one_attempt = job.Spec(client="c1", queue="default", env="e1", timeout_s=None, max_attempts=1, function="fn1")
    park(s, r, idle_children=2)
    submit(s, r, "read", "unread", spec=one_attempt)  # both handed to w1
    assert r.lpop(KEYS.inbox("w1")).startswith(b"4:read")  # w1 read one (BLMPOP), maybe started it...
    r.rpush(KEYS.inbox("w1"), "wake", "x:other")  # messages that hand nothing over
    now = int(time.time() * 1000) + 2 * LEASE_MS
    assert expire(s, r, now=now) == (1, 1, 0)  # ...and died: that one used its only attempt
    assert state(r, "read") == "failed" and r.hget(KEYS.job("read"), job.REASON) == b"lost"
    assert state(r, "unread") == "pending" and r.hget(KEYS.job("unread"), job.ATTEMPTS) == b"0"
    assert r.lrange(KEYS.queue("default"), 0, -1) == [b"unread"] and inbox(r) == []


def test_heartbeat_says_whether_the_lease_was_still_valid(s, r):
    assert s.heartbeat(r, worker_id="w1", lease_ms=1000, info={"host": "h"}, now_ms=T0) == 0  # new
    assert s.heartbeat(r, worker_id="w1", lease_ms=1000, info={}, now_ms=T0 + 900) == 1
    assert s.heartbeat(r, worker_id="w1", lease_ms=1000, info={}, now_ms=T0 + 5000) == 0  # expired
    assert r.hget(KEYS.worker("w1"), "host") == b"h"


def untouched(r, key, action) -> bool:
    """Whether ``action`` left ``key`` unmodified (no write, TTL included): a WATCH on it still holds."""
    with r.pipeline() as pipe:
        pipe.watch(key)
        action()
        pipe.multi()
        pipe.exists(key)
        try:
            pipe.execute()
        except redis.WatchError:
            return False
        return True


def test_heartbeat_writes_only_what_changed_in_the_description(s, r):
    info_key = KEYS.worker("w1")
    description = {"host": "h", "queues": "default", "running": ""}

    def beat(at, **changes):
        return lambda: s.heartbeat(r, worker_id="w1", lease_ms=LEASE_MS, info=description | changes, now_ms=at)

    beat(T0)()
    assert r.hgetall(info_key) == {b"host": b"h", b"queues": b"default", b"running": b""}
    ttl = r.pttl(info_key)
    assert 9 * LEASE_MS < ttl <= 10 * LEASE_MS  # config.WORKER_INFO_TTL_LEASES
    # An idle worker's heartbeat: the lease moves, the description is not written at all.
    assert untouched(r, info_key, beat(T0 + 10_000))
    assert r.zscore(KEYS.workers, "w1") == T0 + 10_000 + LEASE_MS
    # A changed field is written (the others are as they were).
    assert not untouched(r, info_key, beat(T0 + 20_000, running="j1"))
    assert r.hgetall(info_key) == {b"host": b"h", b"queues": b"default", b"running": b"j1"}
    # Its time to live is refreshed once half of it has run down, not at every beat.
    r.pexpire(info_key, 5 * LEASE_MS + 1000)
    assert untouched(r, info_key, beat(T0 + 30_000, running="j1"))
    r.pexpire(info_key, 5 * LEASE_MS - 1000)
    beat(T0 + 40_000, running="j1")()
    assert r.pttl(info_key) > 9 * LEASE_MS
    # A description the coordinator deleted (it forgot the worker) is written again whole.
    r.delete(info_key)
    beat(T0 + 50_000, running="j1")()
    assert r.hgetall(info_key) == {b"host": b"h", b"queues": b"default", b"running": b"j1"}
    assert r.pttl(info_key) > 9 * LEASE_MS


def test_release_inflight_keeps_running_ids_and_refunds_the_others(s, r):
    submit(s, r, "a", "b")
    claim(s, r, n=2, now=int(time.time() * 1000))
    park(s, r)
    submit(s, r, "c")  # handed, not read yet
    assert s.release_inflight(r, worker_id="w1", queues=["default"], keep=["a"], unregister=False) == 2
    assert state(r, "a") == "running" and state(r, "b") == "pending" and state(r, "c") == "pending"
    # The handed job's message is gone; a wake takes its place: unparked, the worker claims at once.
    assert r.llen(KEYS.queue("default")) == 2 and inbox(r) == [b"wake"]
    assert not r.exists(KEYS.parked("w1")) and r.zcard(KEYS.idle("default")) == 0
    assert r.hget(KEYS.job("b"), job.ATTEMPTS) == b"0"
    assert s.release_inflight(r, worker_id="w1", queues=["default"], keep=["a"], unregister=True) == 0
    assert inbox(r) == []  # leaving for good: nothing to wake
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
    claimed, _ = claim(s, r, n=3, start_count=1)
    a, b, c = claimed
    assert [x.attempts for x in claimed] == [1, 1, 1]  # the number each run has once started
    assert r.hget(KEYS.job("a"), job.ATTEMPTS) == b"1" and r.hget(KEYS.job("b"), job.ATTEMPTS) is None
    assert s.start(r, jobs=[("b", b.token)]) == 1
    assert s.start(r, jobs=[("b", b.token)]) == 0  # a repeated round trip charges nothing twice
    assert r.hget(KEYS.job("b"), job.ATTEMPTS) == b"1"
    # The worker dies: a and b ran (charged), c never started and is not charged.
    assert expire(s, r) == (3, 0, 0)
    assert [r.hget(KEYS.job(j), job.ATTEMPTS) for j in "abc"] == [b"1", b"1", None]


def test_a_claimed_ahead_job_that_completes_before_its_start_is_recorded_is_charged(s, r):
    submit(s, r, "a")
    (a,), _ = claim(s, r, n=1, start_count=0)
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


def test_park_gives_back_a_childs_room_only_while_the_queues_are_empty(s, r):
    park(s, r, "w1", idle_children=1)
    submit(s, r, "a")  # handed: w1 has no room left, unparked
    assert not r.exists(KEYS.parked("w1"))
    assert s.park(r, worker_id="w1", queues=["default"])[0] == 1  # its child recorded a: room for one again
    assert r.zrange(KEYS.idle("default"), 0, -1) == [b"w1"]
    submit(s, r, "b")
    assert len(inbox(r)) == 2  # b was handed over too
    r.rpush(KEYS.queue("default"), "c")  # queued meanwhile (no room then)
    assert s.park(r, worker_id="w1", queues=["default"])[0] == 0  # the worker claims instead
    assert not r.exists(KEYS.parked("w1"))


def test_a_child_that_parks_with_its_worker_gets_the_next_job_in_its_own_inbox(s, r):
    park(s, r, "w1", idle_children=2)
    mine, other = KEYS.child_inbox("w1", 0), KEYS.child_inbox("w1", 1)
    r.rpush(mine, "u")  # a stale unpark: parking clears it
    room, lease_left_ms = s.park(r, worker_id="w1", queues=["default"], child_inbox=mine)
    assert room == 3 and LEASE_MS - 5_000 < lease_left_ms <= LEASE_MS  # how long the child may trust a read
    assert s.park(r, worker_id="w1", queues=["default"], child_inbox=mine)[0] == 4  # listed once, however often
    assert r.lrange(KEYS.parked_children("w1"), 0, -1) == [mine.encode()]
    submit(s, r, "a", "b")
    [handed] = parse_handed(r.lrange(mine, 0, -1)).claimed  # one job per listing: a
    assert (handed.id, handed.token, handed.attempts) == ("a", "1", 1)
    assert r.hget(KEYS.job("a"), job.ATTEMPTS) == b"1" and r.hget(KEYS.job("a"), job.WORKER) == b"w1"
    assert [c.id for c in parse_handed(inbox(r)).claimed] == ["b"]  # the next through the worker's inbox
    assert sorted(r.lrange(KEYS.inflight("w1"), 0, -1)) == [b"a", b"b"]
    assert not r.exists(KEYS.parked_children("w1")) and not r.exists(other)


def test_a_worker_whose_lease_ran_out_parks_its_child_with_no_lease_left(s, r):
    park(s, r, "w1", idle_children=1)
    r.zadd(KEYS.workers, {"w1": int(time.time() * 1000) - 1})  # its lease ran out (not swept yet)
    assert s.park(r, worker_id="w1", queues=["default"], child_inbox=KEYS.child_inbox("w1", 0)) == [2, 0]


def test_a_child_does_not_park_when_its_worker_cannot(s, r):
    submit(s, r, "a")  # queued: the worker claims instead of parking
    assert s.park(r, worker_id="w1", queues=["default"], child_inbox=KEYS.child_inbox("w1", 0))[0] == 0
    assert not r.exists(KEYS.parked_children("w1"))


def test_unparking_children_unlists_them_and_wakes_them_in_one_step(s, r):
    park(s, r, "w1", idle_children=2)
    first, second = KEYS.child_inbox("w1", 0), KEYS.child_inbox("w1", 1)
    for child in (first, second):
        s.park(r, worker_id="w1", queues=["default"], child_inbox=child)
    assert s.unpark_children(r, worker_id="w1", inboxes=[first], ttl_ms=60_000) == 1
    assert r.lrange(KEYS.parked_children("w1"), 0, -1) == [second.encode()]
    assert r.lrange(first, 0, -1) == [b"u"] and 0 < r.pttl(first) <= 60_000
    submit(s, r, "a")
    assert r.lrange(first, 0, -1) == [b"u"]  # nothing more for the unlisted child
    assert [c.id for c in parse_handed(r.lrange(second, 0, -1)).claimed] == ["a"]
    # second's listing was taken by the hand-off: its unpark finds none, and its "u" goes after the job
    assert s.unpark_children(r, worker_id="w1", inboxes=[second], ttl_ms=60_000) == 0
    assert r.lrange(second, -1, -1) == [b"u"] and len(r.lrange(second, 0, -1)) == 2


def test_the_sweep_of_an_expired_worker_unlists_its_parked_children(s, r):
    park(s, r, "w1", idle_children=2)
    s.park(r, worker_id="w1", queues=["default"], child_inbox=KEYS.child_inbox("w1", 0))
    expire(s, r, now=int(time.time() * 1000) + LEASE_MS + 1)
    assert not r.exists(KEYS.parked_children("w1"))
    submit(s, r, "a")
    assert r.lrange(KEYS.queue("default"), 0, -1) == [b"a"] and not r.exists(KEYS.child_inbox("w1", 0))


def test_the_sweep_refunds_a_job_handed_to_a_parked_child_that_never_read_it(s, r):
    r.hset(KEYS.worker("w1"), mapping={"queues": "default", "concurrency": "2"})
    park(s, r, "w1", idle_children=2)
    mine = KEYS.child_inbox("w1", 1)
    s.park(r, worker_id="w1", queues=["default"], child_inbox=mine)
    submit(s, r, "a")  # handed to the parked job process's own inbox; the worker dies before it reads it
    assert [c.id for c in parse_handed(r.lrange(mine, 0, -1)).claimed] == ["a"]
    assert r.hget(KEYS.job("a"), job.ATTEMPTS) == b"1"
    assert expire(s, r, now=int(time.time() * 1000) + 2 * LEASE_MS) == (1, 0, 0)
    assert state(r, "a") == "pending" and r.hget(KEYS.job("a"), job.ATTEMPTS) == b"0"  # never started
    assert r.lrange(KEYS.queue("default"), 0, -1) == [b"a"] and not r.exists(mine)


def test_shared_records_ttl_is_refreshed_only_once_it_ran_down_past_the_slack(s, r):
    submit(s, r, "a")  # blob_ttl_ms 60 s: slack 6 s
    spec = KEYS.spec("sp1")
    assert r.pttl(spec) > 59_000
    r.pexpire(spec, 57_000)  # lost 3 s: within the slack, not rewritten
    submit(s, r, "b", send_records=False)
    assert r.pttl(spec) <= 57_000
    r.pexpire(spec, 50_000)  # lost 10 s: refreshed
    submit(s, r, "c", send_records=False)
    assert r.pttl(spec) > 59_000


# -- poison in the keyspace: a key of the wrong type stops no script half-way ------


def poison(r, job_id="p"):
    """Make ``job_id``'s job record a LIST (a key of the wrong type); returns the id."""
    r.rpush(KEYS.job(job_id), "not", "a", "hash")
    return job_id


def test_claim_drops_an_entry_whose_job_key_is_not_a_hash_and_claims_the_next(s, r):
    submit(s, r, "a")
    r.rpush(KEYS.queue("default"), poison(r))  # taken first
    claimed, dropped = claim(s, r, n=1)
    assert dropped == ["p"] and [c.id for c in claimed] == ["a"]
    assert r.lrange(KEYS.inflight("w1"), 0, -1) == [b"a"] and r.llen(KEYS.queue("default")) == 0
    assert r.type(KEYS.job("p")) == b"list"  # the entry is dropped; the key is not ours to delete


def test_expired_sweep_drops_poison_and_recovers_the_rest_of_the_list(s, r):
    submit(s, r, "a", "b")
    claim(s, r, n=2)
    r.lpush(KEYS.inflight("w1"), poison(r))
    r.hset(KEYS.job("b"), job.SPEC, "nospec")
    r.rpush(KEYS.spec("nospec"), "x")  # b's spec is not a hash either
    assert expire(s, r) == (1, 0, 1)
    assert state(r, "a") == "pending" and r.lrange(KEYS.queue("default"), 0, -1) == [b"a"]
    assert state(r, "b") == "failed" and r.hget(KEYS.job("b"), job.REASON) == b"corrupt"
    assert r.llen(KEYS.inflight("w1")) == 0


def test_expired_sweep_of_an_in_flight_key_that_is_not_a_list_drops_it(s, r):
    s.heartbeat(r, worker_id="w1", lease_ms=LEASE_MS, info={}, now_ms=T0)
    r.set(KEYS.inflight("w1"), "garbage")
    assert expire(s, r) == (0, 0, 1)
    assert not r.exists(KEYS.inflight("w1"))


def test_release_inflight_drops_poison(s, r):
    submit(s, r, "a")
    claim(s, r)
    r.lpush(KEYS.inflight("w1"), poison(r))
    assert s.release_inflight(r, worker_id="w1", queues=["default"], keep=[], unregister=False) == 1
    assert state(r, "a") == "pending" and r.llen(KEYS.inflight("w1")) == 0


def test_fenced_transitions_refuse_a_job_key_that_is_not_a_hash(s, r):
    poison(r)
    assert complete(s, r, Completion("p", "1", "c1", "ok", b"R")) == [0]
    assert s.requeue(r, worker_id="w1", jobs=[Requeue("p", "1", "default", "release")], now_ms=T0) == [0]
    assert s.start(r, jobs=[("p", "1")]) == 0
    assert s.progress(r, job_id="p", token="1", client_id="c1", fraction=0.5, message=None) == 0
    assert r.type(KEYS.job("p")) == b"list"


def test_start_reads_a_garbage_attempt_count_as_zero(s, r):
    submit(s, r, "a")
    (a,), _ = claim(s, r, n=1, start_count=0)
    r.hset(KEYS.job("a"), job.ATTEMPTS, "x")
    assert s.start(r, jobs=[("a", a.token)]) == 1
    assert r.hget(KEYS.job("a"), job.ATTEMPTS) == b"1"


def test_promote_skips_poison_and_promotes_the_rest(s, r):
    submit(s, r, "a")
    (a,), _ = claim(s, r)
    s.requeue(r, worker_id="w1", jobs=[Requeue("a", a.token, "default", "retry", 500)], now_ms=T0)
    r.zadd(KEYS.delayed, {poison(r): T0})
    assert s.promote(r, now_ms=T0 + 500) == 1
    assert state(r, "a") == "pending" and r.zcard(KEYS.delayed) == 0


def test_admin_scripts_refuse_a_named_poisoned_id_and_skip_it_otherwise(s, r):
    submit(s, r, "a")
    (a,), _ = claim(s, r)
    complete(s, r, Completion(a.id, a.token, "c1", "err", b"{}", "exception", "E", "tb"))
    r.zadd(KEYS.failed, {poison(r): T0})
    for verb in (s.requeue_failed, s.purge_failed):
        with pytest.raises(ScriptRefused, match="not a job record"):
            verb(r, ["p"])
    assert state(r, "a") == "failed"  # nothing changed
    assert s.requeue_failed(r) == 1  # all: a, and p left out
    assert state(r, "a") == "pending" and r.zcard(KEYS.failed) == 0


# -- at the server's memory limit (a real server: fakeredis has no maxmemory) --------


@pytest.fixture
def full(server):
    """A real server (Valkey >= 7: script flags) whose memory limit is already exceeded."""
    client = server.client()
    scripts = Scripts(client, KEYS)
    scripts.load()
    yield client, scripts
    client.config_set("maxmemory", 0)


def fill_up(r):
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", 1)  # anything in use is over it


def test_at_the_memory_limit_submit_is_refused_whole_and_every_other_transition_runs(full):
    r, s = full
    submit(s, r, "a", "b", "c")
    fill_up(r)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        submit(s, r, "new1", "new2", send_records=False)  # records known: its first write is no deny-oom command
    assert not r.exists(KEYS.job("new1")) and not r.exists(KEYS.job("new2"))
    assert r.lrange(KEYS.queue("default"), 0, -1) == [b"c", b"b", b"a"]  # nothing half-queued
    # What drains the queues runs: claim, start, heartbeat, progress, complete, requeue, sweeps.
    (a, b, c), _ = claim(s, r, n=3, start_count=1)
    assert s.start(r, jobs=[(b.id, b.token)]) == 1
    assert s.heartbeat(r, worker_id="w1", lease_ms=LEASE_MS, info={"host": "h"}, now_ms=T0 + 1) == 1
    assert s.progress(r, job_id=a.id, token=a.token, client_id="c1", fraction=0.5, message=None) == 1
    assert complete(s, r, ok(a)) == [1]
    assert s.requeue(r, worker_id="w1", jobs=[Requeue(b.id, b.token, "default", "retry", 500)], now_ms=T0) == [1]
    assert s.promote(r, now_ms=T0 + 500) == 1
    assert s.park(r, worker_id="w1", queues=["idle-queue"])[0] == 1
    assert expire(s, r, now=T0 + 2 * LEASE_MS) == (1, 0, 0)  # c
    claim(s, r, worker="w2", n=2, now=T0 + 2 * LEASE_MS)
    assert s.release_inflight(r, worker_id="w2", queues=["default"], keep=[], unregister=True) == 2
    (b2,), _ = claim(s, r, worker="w3", n=1, now=T0 + 2 * LEASE_MS)
    complete(s, r, Completion(b2.id, b2.token, "c1", "err", b"{}", "exception", "E", "tb"), worker="w3")
    assert s.requeue_failed(r, [b2.id]) == 1
    (b3,), _ = claim(s, r, worker="w3", n=1, now=T0 + 2 * LEASE_MS)
    complete(s, r, Completion(b3.id, b3.token, "c1", "err", b"{}", "exception", "E", "tb"), worker="w3")
    assert s.purge_failed(r, [b3.id]) == 1


def test_jobs_given_back_keep_their_submission_order(s, r):
    """A dead worker's jobs and a live worker's give-back return in submission order (the oldest first)."""
    submit(s, r, "a", "b", "c")
    claim(s, r, n=3)
    expire(s, r)
    assert [c.id for c in claim(s, r, worker="w2", n=3, now=T0 + LEASE_MS + 2)[0]] == ["a", "b", "c"]
    assert s.release_inflight(r, worker_id="w2", queues=["default"], keep=[], unregister=False) == 3
    assert [c.id for c in claim(s, r, worker="w3", n=3, now=T0 + LEASE_MS + 3)[0]] == ["a", "b", "c"]


def test_an_outcome_is_sent_even_if_the_script_stops_after_its_loop(s, r):
    """Redis keeps what a script wrote before an error. A garbage counters key (a string, not a hash)
    stops complete.lua at its counters, after the job is done: its outcome was sent before that."""
    submit(s, r, "a")
    (claimed,), _ = claim(s, r)
    r.set(KEYS.stats, "garbage")
    with pytest.raises(redis.ResponseError):
        complete(s, r, ok(claimed))
    assert state(r, "a") == "done"
    assert r.lrange(KEYS.results("c1"), 0, -1) == [b"1\na\n0\nok\nR"]


def test_a_claim_of_one_job_moves_it_in_one_command(server):
    """A lone job claimed: one LMOVE from the queue to the in-flight list (one line of the append-only
    file), not a push and a trim."""
    r = server.client()
    s = Scripts(r, Keys())
    submit(s, r, "a")
    r.config_resetstat()
    (claimed,), _ = claim(s, r)
    assert claimed.id == "a" and r.lrange(KEYS.inflight("w1"), 0, -1) == [b"a"]
    assert r.llen(KEYS.queue("default")) == 0
    stats = r.info("commandstats")
    assert stats["cmdstat_lmove"]["calls"] == 1
    assert "cmdstat_lpush" not in stats and "cmdstat_ltrim" not in stats

"""Signatures bind the whole job and each outcome (contract: Security, v2).

The attacker here holds the Redis password but not the secret: the test
process plays that part with raw Redis commands against the real server,
while a real client and real workers play the victim. Every attack below
worked on the code before the envelope: each must now end in ``rejected``,
with nothing of the attacker's choosing run, delivered or printed.
"""

from __future__ import annotations

import os
import secrets
import shutil

import pytest

import cwredis
import jobs_api
from cwredis import job
from cwredis.serialization import ErrorRecord, encode_error, frame_outcome
from helpers import admin_json, wait_for
from sysutil import Outcomes, unique

pytestmark = pytest.mark.system

SECRET = secrets.token_urlsafe(32)
JOB_TIMEOUT_S = 60


@pytest.fixture
def victim(monkeypatch):
    """The victim's secret, in this process (its client) and the workers the tests start."""
    monkeypatch.setenv("CWREDIS_SECRET", SECRET)
    return SECRET


def worker(procs, url: str, queue: str, secret: str = SECRET):
    return procs.worker(url, "--queue", queue, env={"CWREDIS_SECRET": secret})


def show(url: str, job_id: str) -> dict:
    return admin_json(url, "show", job_id)


def forge_job(r, keys, queue: str, job_id: str, fields: dict) -> None:
    """What a password holder can do: write a job record and queue it."""
    r.hset(keys.job(job_id), mapping=fields)
    r.lpush(keys.queue(queue), job_id)


def test_a_job_assembled_from_the_victims_signed_parts_never_runs(cluster, procs, tmp_path, keys, victim):
    """The victim's signed rmtree with the victim's signed results directory: the attack of issue 9."""
    queue = unique("assemble")
    scratch, results = tmp_path / "scratch", tmp_path / "results"
    scratch.mkdir()
    results.mkdir()
    (results / "keep.txt").write_text("the victim's results")
    r = cluster.redis
    seen = Outcomes()
    with cwredis.ClientThread(seen.on_result, url=cluster.url, error_callback=seen.on_error, queue=queue) as t:
        removes = t.submit(shutil.rmtree, str(scratch))
        lists = t.submit(os.listdir, str(results))
        rmtree_fields = r.hgetall(keys.job(removes))
        listdir_fields = r.hgetall(keys.job(lists))
        forged = f"forged{secrets.token_hex(5)}"
        forge_job(r, keys, queue, forged, {
            job.STATE: "pending", job.SPEC: listdir_fields[job.SPEC.encode()],
            job.FUNCTION: rmtree_fields[job.FUNCTION.encode()], job.ARGS: listdir_fields[job.ARGS.encode()]})
        p = worker(procs, cluster.url, queue)
        t.wait(timeout=JOB_TIMEOUT_S)
        assert seen.results == {removes: None, lists: ["keep.txt"]} and seen.errors == {}
        wait_for(lambda: show(cluster.url, forged)["state"] == "failed", timeout=JOB_TIMEOUT_S,
                 message="the forged job to fail")
    assert (results / "keep.txt").read_text() == "the victim's results"
    assert not scratch.exists()  # the victim's own job did run
    assert show(cluster.url, forged)["reason"] == "rejected" and show(cluster.url, forged)["attempts"] == 0
    assert r.hget(keys.job(forged), job.REJECTIONS) == b"3"  # its max_attempts, none of them an attempt
    assert "rejected" in p.log()


def test_a_signed_job_copied_under_another_id_is_rejected(cluster, procs, tmp_path, keys, victim):
    """Replaying a job into another id (here a job that already ran) runs nothing again."""
    queue = unique("replay")
    marker = tmp_path / "runs"
    r = cluster.redis
    seen = Outcomes()
    with cwredis.ClientThread(seen.on_result, url=cluster.url, error_callback=seen.on_error, queue=queue) as t:
        original = t.submit(jobs_api.append_line, str(marker), "ran")
        fields = r.hgetall(keys.job(original))
        p = worker(procs, cluster.url, queue)
        t.wait(timeout=JOB_TIMEOUT_S)
        copy = f"replay{secrets.token_hex(5)}"
        forge_job(r, keys, queue, copy, {job.STATE: "pending", job.SPEC: fields[job.SPEC.encode()],
                                         job.FUNCTION: fields[job.FUNCTION.encode()],
                                         job.ARGS: fields[job.ARGS.encode()]})
        wait_for(lambda: show(cluster.url, copy)["state"] == "failed", timeout=JOB_TIMEOUT_S,
                 message="the replayed job to fail")
    assert show(cluster.url, copy)["reason"] == "rejected"
    assert marker.read_text().splitlines() == ["ran"], "the replayed job ran"
    assert f"job {copy}: rejected" in p.log()


def test_a_swapped_function_or_spec_record_is_rejected(cluster, procs, tmp_path, keys, victim):
    """Records shared between jobs are checked against the digests the job was signed with."""
    queue = unique("swap")
    marker = tmp_path / "runs"
    r = cluster.redis
    seen = Outcomes()
    with cwredis.ClientThread(seen.on_result, url=cluster.url, error_callback=seen.on_error, queue=queue,
                              max_attempts=2) as t:
        benign = t.submit(jobs_api.append_line, str(marker), "benign")
        other = t.submit(os.remove, str(tmp_path / "nothing-here"))  # the victim's signed os.remove
        fn_digest = r.hget(keys.job(benign), job.FUNCTION).decode()
        other_fn = r.hget(keys.job(other), job.FUNCTION).decode()
        # The password holder points benign's function record at os.remove's signed blob...
        r.hset(keys.blob(fn_digest), job.BLOB_DATA, r.hget(keys.blob(other_fn), job.BLOB_DATA))
        # ...and raises the attempts its spec allows.
        spec_digest = r.hget(keys.job(benign), job.SPEC).decode()
        r.hset(keys.spec(spec_digest), job.SPEC_MAX_ATTEMPTS, "100")
        worker(procs, cluster.url, queue)
        seen.wait_for(benign, timeout=JOB_TIMEOUT_S)
        seen.wait_for(other, timeout=JOB_TIMEOUT_S)
    assert seen.errors[benign].reason == "rejected", seen.errors[benign]
    assert seen.errors[other].reason == "rejected", seen.errors[other]  # its spec was the one altered
    assert not marker.exists()
    # A record swapped under a job the worker's secret verified fails at once (no worker may run it), not
    # after the 100 rejections the altered spec asks for; no attempt is charged.
    assert r.hget(keys.job(benign), job.REJECTIONS) == b"1"
    assert show(cluster.url, benign)["attempts"] == 0


def _outcome_entry(r, keys, client_id: str, job_id: str, kind: bytes, body: bytes) -> bytes:
    seq = r.incr(keys.result_seq(client_id))
    return b"%d\n%s\n0\n%s\n" % (seq, job_id.encode(), kind) + body


def test_an_outcome_moved_to_another_job_or_forged_is_rejected(cluster, procs, keys, victim):
    """Job A's signed result delivered as job B's; an unsigned failure with a screen-clearing traceback."""
    queue, idle_queue = unique("moved"), unique("noworker")
    r = cluster.redis
    seen = Outcomes()
    with cwredis.ClientThread(seen.on_result, url=cluster.url, error_callback=seen.on_error, queue=queue) as t, \
            cwredis.ClientThread(seen.on_result, url=cluster.url, error_callback=seen.on_error,
                                 queue=idle_queue) as waiting:
        listener = r.pubsub()
        listener.ssubscribe(keys.channel(t.client_id))
        a = t.submit(pow, 2, 10)
        worker(procs, cluster.url, queue)
        t.wait(timeout=JOB_TIMEOUT_S)
        published = None
        while published is None:
            message = listener.get_sharded_message(timeout=5)
            assert message is not None, "the outcome of A was never published"
            if message["type"] == "smessage" and b"\n%s\n" % a.encode() in message["data"]:
                published = message["data"]
        listener.close()
        a_body = published.split(b"\n", 4)[4]
        b, c = waiting.submit(pow, 3, 3), waiting.submit(pow, 5, 5)  # no worker serves their queue
        screen = "\x1b[2J\x1b[H\x1b]0;pwned\x07"
        forged_err = b"U1\n" + frame_outcome("", encode_error(ErrorRecord("exception", f"ValueError: {screen}", screen)))
        for job_id, kind, body in [(b, b"ok", a_body), (c, b"err", forged_err)]:
            entry = _outcome_entry(r, keys, waiting.client_id, job_id, kind, body)
            r.rpush(keys.results(waiting.client_id), entry)
            r.spublish(keys.channel(waiting.client_id), entry)
        seen.wait_for(b)
        seen.wait_for(c)
    assert seen.results == {a: 1024}
    for job_id in (b, c):
        error = seen.errors[job_id]
        assert error.reason == "rejected", error
        assert "\x1b" not in str(error) + error.traceback
    assert seen.outcome_count(a) == 1


def test_a_worker_with_the_wrong_secret_quarantines_itself_and_burns_no_job(cluster, procs, tmp_path, keys,
                                                                             victim):
    """Three rejections in a row: it stops taking jobs and says why; the jobs run on a right worker."""
    queue = unique("quarantine")
    marker = tmp_path / "runs"
    seen = Outcomes()
    with cwredis.ClientThread(seen.on_result, url=cluster.url, error_callback=seen.on_error, queue=queue) as t:
        ids = [t.submit(jobs_api.append_line, str(marker), str(i)) for i in range(5)]
        wrong = worker(procs, cluster.url, queue, secret=secrets.token_urlsafe(32))
        wait_for(lambda: "quarantined" in wrong.log(), timeout=JOB_TIMEOUT_S, message="the quarantine")
        wait_for(lambda: any(w["pid"] == wrong.pid and w["quarantined"] for w in admin_json(cluster.url, "workers")),
                 timeout=10, message="cw-admin workers to show the quarantine (next heartbeat)")
        states = [show(cluster.url, i)["state"] for i in ids]
        assert states == ["pending"] * len(ids), states  # back on the queue, none failed
        assert "$CWREDIS_SECRET" in wrong.log()  # where its secret came from
        worker(procs, cluster.url, queue)
        t.wait(timeout=JOB_TIMEOUT_S)
    assert seen.errors == {} and seen.results == {i: str(n) for n, i in enumerate(ids)}
    assert sorted(marker.read_text().split()) == [str(i) for i in range(5)]
    assert wrong.alive()  # quarantined, not dead: it still shows in cw-admin workers

"""Signed payloads, and bad input that must neither stop a worker nor lose other jobs.

One server + coordinator per module (``cluster``); each test starts the
workers it needs (a secret, a queue of its own), often after submitting, so
the test can tamper with a job before any worker sees it.
"""

from __future__ import annotations

import os
import time
import uuid

import pytest

import cwredis
import helpers
import jobs_api
from cwredis import job
from cwredis.job import ARGS
from cwredis.signing import Signer
from helpers import admin_json, wait_for
from sysutil import Outcomes, assert_one_line_user_error, closed_port, cw_admin, unique

pytestmark = pytest.mark.system

JOB_TIMEOUT_S = 60
#: Two different valid secrets (32 characters at least).
SECRET_ONE = "s3cret-one-" + "1" * 32
SECRET_TWO = "s3cret-two-" + "2" * 32


def run_one(url: str, queue: str, func, *args, client_secret: str | None, monkeypatch,
            before_worker=None, start_worker=None):
    """Submit one job as a client with ``client_secret`` (None: an insecure client); return (outcomes, jobid)."""
    if client_secret is None:
        monkeypatch.delenv("CWREDIS_SECRET", raising=False)
        monkeypatch.setenv("CWREDIS_INSECURE", "1")
    else:
        monkeypatch.setenv("CWREDIS_SECRET", client_secret)
    seen = Outcomes()
    with cwredis.ClientThread(seen.on_result, url=url, error_callback=seen.on_error, queue=queue) as t:
        jobid = t.submit(func, *args)
        if before_worker is not None:
            before_worker(jobid)
        if start_worker is not None:
            start_worker()
        t.wait(timeout=JOB_TIMEOUT_S)
    return seen, jobid


def spawn_worker(procs, url: str, queue: str, secret: str | None):
    """A worker on ``queue`` whose environment has ``CWREDIS_SECRET=secret`` (or none at all, and
    ``--insecure``).

    procs.run copies os.environ, where the test may have set the client's secret.
    """
    saved = os.environ.pop("CWREDIS_SECRET", None)
    try:
        if secret is None:
            return procs.worker(url, "--queue", queue, "--insecure")
        return procs.worker(url, "--queue", queue, env={"CWREDIS_SECRET": secret})
    finally:
        if saved is not None:
            os.environ["CWREDIS_SECRET"] = saved


# --------------------------------------------------------------------- signing


@pytest.mark.parametrize(
    "client_secret, worker_secret, expect_reason, expect_ran",
    [
        (SECRET_ONE, SECRET_ONE, None, True),          # same secret: works
        (None, SECRET_ONE, "rejected", False),         # worker refuses an insecure client's unsigned payload
        (SECRET_ONE, None, "rejected", True),          # runs, but the client refuses the unsigned result
        (SECRET_ONE, SECRET_TWO, "rejected", False),   # wrong secret at the worker
        (SECRET_TWO, SECRET_ONE, "rejected", False),   # ...or at the client
    ],
    ids=["same", "client-none", "worker-none", "worker-wrong", "client-wrong"],
)
def test_signing(cluster, procs, tmp_path, monkeypatch, client_secret, worker_secret,
                 expect_reason, expect_ran):
    cluster.check_alive()
    queue = unique("sig")
    proof = tmp_path / "ran"
    seen, jobid = run_one(
        cluster.url, queue, jobs_api.touch_then, str(proof), "payload-result",
        client_secret=client_secret, monkeypatch=monkeypatch,
        start_worker=lambda: spawn_worker(procs, cluster.url, queue, worker_secret))
    if expect_reason is None:
        assert seen.errors == {} and seen.results == {jobid: "payload-result"}
    else:
        assert seen.results == {}, seen.results
        error = seen.errors[jobid]
        assert isinstance(error, cwredis.RemoteError)
        assert error.reason == expect_reason, (error.reason, str(error), error.traceback)
        assert isinstance(error.traceback, str) and error.traceback, "no explanation in .traceback"
    assert proof.exists() == expect_ran, "the payload ran" if proof.exists() else "the payload did not run"
    assert len(seen.calls) == 1


def test_secret_from_the_home_file_is_stripped(cluster, procs, tmp_path, monkeypatch):
    """A client without $CWREDIS_SECRET reads $CWREDIS_HOME/secret (whitespace stripped)."""
    cluster.check_alive()
    queue = unique("sig-file")
    secret_home = tmp_path / "home-with-secret"
    secret_home.mkdir()
    (secret_home / "secret").write_text(f"  {SECRET_ONE} \n")
    (secret_home / "secret").chmod(0o600)
    monkeypatch.setenv("CWREDIS_HOME", str(secret_home))
    monkeypatch.delenv("CWREDIS_SECRET")
    seen = Outcomes()
    spawn_worker(procs, cluster.url, queue, SECRET_ONE)
    with cwredis.ClientThread(seen.on_result, url=cluster.url, error_callback=seen.on_error, queue=queue) as t:
        jobid = t.submit(helpers.square, 5)
        t.wait(timeout=JOB_TIMEOUT_S)
    assert seen.errors == {} and seen.results == {jobid: 25}, seen.errors


def test_tampered_args_are_rejected(cluster, procs, tmp_path, monkeypatch, keys):
    cluster.check_alive()
    queue = unique("tamper")
    proof = tmp_path / "ran"
    r = cluster.redis

    def tamper(jobid: str) -> None:
        blob = r.hget(keys.job(jobid), ARGS)
        assert blob, "the job has no args field"
        # Flip one bit of the last byte: inside the pickled data, whatever the framing's header.
        r.hset(keys.job(jobid), ARGS, blob[:-1] + bytes([blob[-1] ^ 0x01]))

    seen, jobid = run_one(
        cluster.url, queue, jobs_api.touch_then, str(proof), "x",
        client_secret=SECRET_ONE, monkeypatch=monkeypatch, before_worker=tamper,
        start_worker=lambda: spawn_worker(procs, cluster.url, queue, SECRET_ONE))
    assert seen.results == {}
    assert seen.errors[jobid].reason == "rejected", (seen.errors[jobid], seen.errors[jobid].traceback)
    assert not proof.exists(), "a tampered payload was unpickled and run"


# ------------------------------------------------------------------- bad input


def test_garbage_queue_entries_are_dropped_with_a_warning(cluster, procs, keys):
    cluster.check_alive()
    queue = unique("garbage")
    r = cluster.redis
    bogus_id = f"no-such-job-{uuid.uuid4().hex[:8]}"
    worker = procs.worker(cluster.url, "--queue", queue)
    seen = Outcomes()
    with cwredis.ClientThread(seen.on_result, url=cluster.url, error_callback=seen.on_error,
                              queue=queue) as t:
        before = t.submit(helpers.square, 2)
        t.wait(timeout=JOB_TIMEOUT_S)
        # Entries are taken oldest first (from the right): the garbage goes first.
        garbage = [bogus_id.encode(), b"\xd8\x00" + os.urandom(22) + b"\xff\xfe", b""]
        for entry in garbage:
            r.lpush(keys.queue(queue), entry)
        after = [t.submit(helpers.square, i) for i in range(3, 6)]
        t.wait(timeout=JOB_TIMEOUT_S)
    assert seen.errors == {}
    assert seen.results == {before: 4, after[0]: 9, after[1]: 16, after[2]: 25}
    wait_for(lambda: r.llen(keys.queue(queue)) == 0, timeout=10, message="garbage gone from the queue")

    def garbage_in_flight():
        return [(key, entry) for key in r.scan_iter(match=keys.inflight("*"))
                for entry in r.lrange(key, 0, -1) if entry in garbage]

    try:
        wait_for(lambda: not garbage_in_flight(), timeout=10)
    except AssertionError:
        raise AssertionError(f"garbage queue entries never dropped: still in flight: {garbage_in_flight()}"
                             f"\nworker log:\n{worker.log()}") from None
    assert worker.alive(), worker.log()
    log = worker.log()
    assert bogus_id in log, f"no warning naming {bogus_id} in the worker log:\n{log}"
    warning_lines = [line for line in log.splitlines() if bogus_id in line]
    assert any("warn" in line.lower() for line in warning_lines), warning_lines
    assert "Traceback" not in log, log


def test_corrupt_or_missing_payload_fails_with_reason_corrupt(cluster, procs, keys, tmp_path):
    cluster.check_alive()
    queue = unique("corrupt")
    r = cluster.redis
    proof = tmp_path / "ran"
    seen = Outcomes()
    with cwredis.ClientThread(seen.on_result, url=cluster.url, error_callback=seen.on_error,
                              queue=queue) as t:
        garbage = t.submit(jobs_api.touch_then, str(proof), 1)
        missing = t.submit(jobs_api.touch_then, str(proof), 2)
        not_a_pickle = t.submit(jobs_api.touch_then, str(proof), 3)
        fine = t.submit(helpers.square, 7)
        # No worker listens on this queue yet: rewrite the payloads first.
        r.hset(keys.job(garbage), ARGS, b"\x00\x01garbage\xff\xfe" * 3)
        r.hdel(keys.job(missing), ARGS)
        # Signed with the secret (as a client with a bug would), so it verifies, but it is no pickle.
        spec = r.hget(keys.job(not_a_pickle), job.SPEC)
        envelope = Signer(os.environ["CWREDIS_SECRET"].encode()).seal_job(
            not_a_pickle, spec.decode(), r.hget(keys.spec(spec.decode()), job.SPEC_FUNCTION).decode(),
            b"this is not a pickle")
        r.hset(keys.job(not_a_pickle), ARGS, envelope)
        worker = procs.worker(cluster.url, "--queue", queue)
        t.wait(timeout=JOB_TIMEOUT_S)
    assert seen.results == {fine: 49}
    assert set(seen.errors) == {garbage, missing, not_a_pickle}
    for jobid in (garbage, missing, not_a_pickle):
        error = seen.errors[jobid]
        assert error.reason == "corrupt", (jobid, error.reason, str(error), error.traceback)
        assert error.jobid == jobid
    assert not proof.exists()
    assert worker.alive(), worker.log()
    shown = admin_json(cluster.url, "show", garbage)
    assert (shown["state"], shown["reason"]) == ("failed", "corrupt"), shown
    assert isinstance(shown["error"], str) and "\n" not in shown["error"], shown


def test_altered_function_or_environment_records_fail_rejected(cluster, procs, keys, tmp_path):
    """The pickled function and the client's environment are payload too (stored once, shared): garbage
    written over them no longer matches the digest their jobs were signed with, so the jobs fail
    ``rejected`` (never unpickled), and a healthy job sharing nothing altered is unharmed."""
    cluster.check_alive()
    queue = unique("corrupt-shared")
    r = cluster.redis
    tag = uuid.uuid4().hex
    # Functions of their own (pickled by value, so their blobs are shared with no other test).
    bad_fn = eval(f"lambda: 'bad-fn-{tag}'")
    framing_fn = eval(f"lambda: 'framing-fn-{tag}'")
    seen = Outcomes()
    original = os.getcwd()
    with cwredis.ClientThread(seen.on_result, url=cluster.url, error_callback=seen.on_error,
                              queue=queue) as t:
        jobs = {"fn garbage": t.submit(bad_fn), "fn not a pickle": t.submit(framing_fn)}
        # A working directory of its own gives these jobs an environment record of their own.
        for label in ("env garbage", "env not json"):
            own_cwd = tmp_path / label.replace(" ", "-")
            own_cwd.mkdir()
            os.chdir(own_cwd)
            try:
                jobs[label] = t.submit(helpers.square, 3)
            finally:
                os.chdir(original)
        fine = t.submit(helpers.square, 4)

        def fn_blob(jobid):  # the function is named by the job's spec
            spec = r.hget(keys.job(jobid), job.SPEC).decode()
            return keys.blob(r.hget(keys.spec(spec), job.SPEC_FUNCTION).decode())

        def env_blob(jobid):
            spec = r.hget(keys.job(jobid), job.SPEC).decode()
            return keys.blob(r.hget(keys.spec(spec), job.SPEC_ENV).decode())

        targets = {"fn garbage": fn_blob(jobs["fn garbage"]), "fn not a pickle": fn_blob(jobs["fn not a pickle"]),
                   "env garbage": env_blob(jobs["env garbage"]), "env not json": env_blob(jobs["env not json"])}
        assert len(set(targets.values())) == 4, "these jobs unexpectedly share records"
        for label, blob_key in targets.items():
            good = r.hget(blob_key, job.BLOB_DATA)
            assert good, (label, blob_key)
            # "garbage": no valid framing at all; otherwise: valid framing byte, undecodable content.
            bad = b"\x00garbage\xff" if "garbage" in label else good[:1] + b"\x80\x05 not decodable {"
            r.hset(blob_key, job.BLOB_DATA, bad)
        worker = procs.worker(cluster.url, "--queue", queue)
        t.wait(timeout=JOB_TIMEOUT_S)
    reasons = {label: seen.errors[jobid].reason for label, jobid in jobs.items()}
    assert reasons == dict.fromkeys(jobs, "rejected"), {
        label: (seen.errors[j].reason, str(seen.errors[j])) for label, j in jobs.items()}
    # A healthy job submitted after them (same function as the env-corrupt ones) is unharmed.
    if fine in seen.errors:
        error = seen.errors[fine]
        pytest.fail(f"a healthy job failed after the corrupt ones: {error.reason}: {error}\n{error.traceback}")
    assert seen.results == {fine: 16}
    assert worker.alive(), worker.log()


# ----------------------------------------------------------- unreachable Redis


def test_worker_waits_for_an_unreachable_redis(server, procs, home):
    server.stop()  # keep its port and password: nothing listens there for now
    queue = unique("late")
    worker = procs.worker(server.url, "--queue", queue)
    time.sleep(3)
    assert worker.alive(), f"worker gave up on an unreachable Redis:\n{worker.log()}"
    log = worker.log()
    assert server.password not in log, "password leaked in the worker log"
    mentions = [line for line in log.splitlines() if f"127.0.0.1:{server.port}" in line]
    assert mentions, f"no line names the URL:\n{log}"
    assert "Traceback" not in log, log

    server.start()
    procs.coordinator(server.url, "--lease-timeout", "2")
    seen = Outcomes()
    with cwredis.ClientThread(seen.on_result, url=server.url, error_callback=seen.on_error,
                              queue=queue) as t:
        jobid = t.submit(helpers.square, 11)
        t.wait(timeout=JOB_TIMEOUT_S)
    assert seen.results == {jobid: 121}
    assert worker.alive()


def test_admin_on_a_wrong_url_exits_2_with_the_password_masked(home):
    port = closed_port()
    password = "hunter2-not-to-be-shown"
    done = cw_admin("--url", f"redis://:{password}@127.0.0.1:{port}/0", "status")
    assert done.returncode == 2, done
    assert_one_line_user_error(done.stderr, secret=password)
    assert str(port) in done.stderr, f"message does not name the URL: {done.stderr!r}"

"""Runs that outlive their client: sessions, resume, cancellation (contract: Sessions, v2).

Real processes throughout: the clients whose death or Ctrl-C a test needs run
as scripts in their own process (``CLIENT`` below), the URL in their
environment. Each job of ``helpers.mark_then`` appends a line to a file named
after its argument, so a test counts executions per job.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

import cwredis
import helpers
from cwredis.keys import Keys
from helpers import admin_json, executions, wait_for
from sysutil import Outcomes, UserModule, cw_admin, unique

pytestmark = pytest.mark.system

TESTS = Path(__file__).resolve().parent.parent
JOB_TIMEOUT_S = 60

#: A client in its own process (it prints RESULTS [...] at the end).
CLIENT = TESTS / "session_client.py"


@pytest.fixture
def client_script():
    return CLIENT


def start_client(procs, url, script, session, queue, markers, n, seconds):
    return procs.run([sys.executable, str(script), session, queue, str(markers), str(n), str(seconds)],
                     env={"CWREDIS_URL": url}, name=f"client-{session or 'none'}")


def results_of(proc) -> list:
    lines = [line for line in proc.log().splitlines() if line.startswith("RESULTS ")]
    assert lines, f"the client printed no results:\n{proc.log()[-3000:]}"
    return json.loads(lines[-1][len("RESULTS "):])


def worker(procs, url, queue, concurrency=2):
    return procs.worker(url, "--queue", queue, "--concurrency", str(concurrency))


def test_a_killed_client_rerun_gets_every_result_and_nothing_runs_twice(cluster, procs, tmp_path, client_script):
    """kill -9 a third of the way through a session map; the rerun resumes, in order, each job run once."""
    queue, session, n = unique("resume"), unique("sweep"), 30
    markers = tmp_path / "markers"
    markers.mkdir()
    worker(procs, cluster.url, queue)
    first = start_client(procs, cluster.url, client_script, session, queue, markers, n, 0.2)
    wait_for(lambda: len(os.listdir(markers)) >= n // 3, timeout=JOB_TIMEOUT_S, message="a third of the jobs")
    first.kill()  # SIGKILL: no clean-up of any kind
    second = start_client(procs, cluster.url, client_script, session, queue, markers, n, 0.2)
    assert second.wait(JOB_TIMEOUT_S) == 0, second.log()[-3000:]
    assert results_of(second) == [x * x for x in range(n)]
    assert executions(markers) == {str(x): 1 for x in range(n)}
    # A third run: everything comes back from Redis, nothing runs.
    third = start_client(procs, cluster.url, client_script, session, queue, markers, n, 0.2)
    assert third.wait(JOB_TIMEOUT_S) == 0 and results_of(third) == [x * x for x in range(n)]
    assert executions(markers) == {str(x): 1 for x in range(n)}


def test_identical_submissions_in_a_session_are_separate_jobs_and_rerun_attaches(cluster, tmp_path):
    """A Monte Carlo submitting the same no-argument callable 50 times runs 50 jobs, and a rerun none."""
    session = unique("montecarlo")
    markers = tmp_path / "markers"
    markers.mkdir()
    sample = functools.partial(helpers.mark_then, str(markers), 3)
    for run in range(2):
        seen = Outcomes()
        with cwredis.ClientThread(seen.on_result, url=cluster.url, error_callback=seen.on_error,
                                  session=session) as t:
            ids = [t.submit(sample) for _ in range(50)]
        assert len(set(ids)) == 50 and seen.errors == {}
        assert seen.results == dict.fromkeys(ids, 9)
        assert executions(markers) == {"3": 50}, f"run {run}"


def test_two_clients_attached_at_once_each_get_every_result_once(cluster, procs, tmp_path, client_script):
    """Both submit the same sweep in one session at the same time: one execution per job, both get all."""
    queue, session, n = unique("twice"), unique("shared"), 20
    markers = tmp_path / "markers"
    markers.mkdir()
    a = start_client(procs, cluster.url, client_script, session, queue, markers, n, 0.1)
    b = start_client(procs, cluster.url, client_script, session, queue, markers, n, 0.1)
    worker(procs, cluster.url, queue)
    for proc in (a, b):
        assert proc.wait(JOB_TIMEOUT_S) == 0, proc.log()[-3000:]
        assert results_of(proc) == [x * x for x in range(n)]
    assert executions(markers) == {str(x): 1 for x in range(n)}


def test_submit_keyed_attaches_to_the_job_of_that_key(cluster, tmp_path):
    session = unique("keyed")
    markers = tmp_path / "markers"
    markers.mkdir()
    with cwredis.Executor(url=cluster.url, session=session) as ex:
        first = ex.submit_keyed("point-7", helpers.mark_then, str(markers), 7)
        assert first.result(JOB_TIMEOUT_S) == 49
    with cwredis.Executor(url=cluster.url, session=session) as ex:
        # Same key, other arguments: the session's job for that key is the answer.
        again = ex.submit_keyed("point-7", helpers.mark_then, str(markers), 8)
        assert again.result(JOB_TIMEOUT_S) == 49 and again.job_id == first.job_id
    assert executions(markers) == {"7": 1}
    with pytest.raises(ValueError, match="needs a session"):
        cwredis.Executor(url=cluster.url).submit_keyed("k", helpers.square, 1)


def test_ctrl_c_without_a_session_cancels_what_is_outstanding(cluster, procs, tmp_path, client_script):
    queue, n = unique("ctrlc"), 12
    markers = tmp_path / "markers"
    markers.mkdir()
    worker(procs, cluster.url, queue, concurrency=1)
    client = start_client(procs, cluster.url, client_script, "", queue, markers, n, 1.0)
    wait_for(lambda: len(os.listdir(markers)) >= 2, timeout=JOB_TIMEOUT_S, message="two jobs started")
    client.signal_group(signal.SIGINT)
    client.wait(JOB_TIMEOUT_S)
    ran = len(os.listdir(markers))
    time.sleep(3)  # the queued jobs would have started by now
    assert len(os.listdir(markers)) == ran <= 3, "jobs ran for nobody after Ctrl-C"
    assert admin_json(cluster.url, "status")["queues"][queue]["pending"] == 0


def test_ctrl_c_with_a_session_leaves_the_jobs_running_and_says_how_to_collect_them(
        cluster, procs, tmp_path, client_script):
    queue, session, n = unique("ctrlc-s"), unique("kept"), 8
    markers = tmp_path / "markers"
    markers.mkdir()
    worker(procs, cluster.url, queue)
    client = start_client(procs, cluster.url, client_script, session, queue, markers, n, 0.5)
    wait_for(lambda: os.listdir(markers), timeout=JOB_TIMEOUT_S, message="a job started")
    client.signal_group(signal.SIGINT)
    client.wait(JOB_TIMEOUT_S)
    assert f"cw-admin cancel --session {session}" in client.log()
    wait_for(lambda: len(os.listdir(markers)) == n, timeout=JOB_TIMEOUT_S, message="every job to run anyway")
    rerun = start_client(procs, cluster.url, client_script, session, queue, markers, n, 0.5)
    assert rerun.wait(JOB_TIMEOUT_S) == 0 and results_of(rerun) == [x * x for x in range(n)]
    assert executions(markers) == {str(x): 1 for x in range(n)}


def test_cancel_a_pending_job_and_a_running_one(cluster, procs, tmp_path):
    """Pending: never runs (Future.cancel is True). Running: its process is gone within 5 s, no attempt is
    charged, it is not retried, and the worker goes on with the next job."""
    queue = unique("cancel")
    pids = tmp_path / "pids"
    pids.mkdir()
    seen = Outcomes()
    with cwredis.Executor(url=cluster.url, queue=queue) as ex:
        waiting = ex.submit(helpers.square, 3)
        assert waiting.cancel() and waiting.cancelled()
        with pytest.raises(Exception):
            waiting.result(0)
    with cwredis.ClientThread(seen.on_result, url=cluster.url, error_callback=seen.on_error, queue=queue) as t:
        long = t.submit(helpers.mark_then, str(pids), "long", 60)
        after = t.submit(helpers.square, 6)
        worker(procs, cluster.url, queue, concurrency=1)
        wait_for(lambda: (pids / "long").exists(), timeout=JOB_TIMEOUT_S, message="the long job to start")
        pid = int((pids / "long").read_text().split()[0])
        assert t.cancel(long)
        started = time.monotonic()
        wait_for(lambda: not helpers_pid_alive(pid), timeout=5, message="the job's process to go")
        assert time.monotonic() - started < 5
        t.wait(JOB_TIMEOUT_S)  # the cancelled job is not raised: we asked for it
    assert seen.results == {after: 36}
    assert seen.errors[long].reason == "cancelled"
    shown = admin_json(cluster.url, "show", long)
    assert (shown["state"], shown["reason"], shown["attempts"]) == ("failed", "cancelled", 0)
    assert executions(pids) == {"long": 1}
    assert not t.cancel(after)  # finished: nothing to cancel


def helpers_pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[-1][:1] != "Z"
    except FileNotFoundError:
        return False


def test_cancel_racing_completion_gives_each_job_exactly_one_outcome(cluster, procs, tmp_path):
    queue = unique("race")
    markers = tmp_path / "markers"
    markers.mkdir()
    worker(procs, cluster.url, queue)
    seen = Outcomes()
    with cwredis.ClientThread(seen.on_result, url=cluster.url, error_callback=seen.on_error, queue=queue) as t:
        ids = [t.submit(helpers.mark_then, str(markers), x, 0.01) for x in range(200)]
        time.sleep(0.3)
        for i in range(0, 200, 50):
            t.cancel_many(ids[i:i + 50], stop_running=True)
        t.wait(JOB_TIMEOUT_S)
    for x, job_id in enumerate(ids):
        assert seen.outcome_count(job_id) == 1, job_id
        if job_id in seen.results:
            assert seen.results[job_id] == x * x
        else:
            assert seen.errors[job_id].reason == "cancelled"
    ran = executions(markers)
    assert all(count == 1 for count in ran.values())  # cancelled jobs are never retried
    assert {str(x) for x, job_id in enumerate(ids) if job_id in seen.results} <= set(ran)


def test_admin_sessions_cancel_and_drop(cluster, procs, tmp_path):
    queue, session = unique("adm"), unique("admin-session")
    markers = tmp_path / "markers"
    markers.mkdir()
    with cwredis.ClientThread(url=cluster.url, queue=queue, session=session, error_callback=lambda j, e: None) as t:
        done = t.submit(helpers.square, 2)
        worker(procs, cluster.url, queue, concurrency=1)
        t.wait(JOB_TIMEOUT_S)
        slow = [t.submit(helpers.mark_then, str(markers), x, 30) for x in range(3)]
        wait_for(lambda: os.listdir(markers), timeout=JOB_TIMEOUT_S, message="a slow job to start")
        rows = {r["name"]: r for r in admin_json(cluster.url, "sessions")}
        row = rows[session]
        assert (row["jobs"], row["done"], row["running"], row["pending"], row["failed"]) == (4, 1, 1, 2, 0)
        assert row["last_activity"].endswith("+00:00")
        assert admin_json(cluster.url, "cancel", "--session", session) == {"cancelled": 3}
        t.wait(JOB_TIMEOUT_S)
    assert len(os.listdir(markers)) == 1  # the two waiting never started
    unknown = cw_admin("cancel", "nosuchjob", env={"CWREDIS_URL": cluster.url})
    assert unknown.returncode == 1 and "unknown job id" in unknown.stderr
    assert admin_json(cluster.url, "drop-session", session) == {"dropped": 4}
    assert session not in {r["name"] for r in admin_json(cluster.url, "sessions")}
    assert cw_admin("drop-session", session, env={"CWREDIS_URL": cluster.url}).returncode == 1
    assert not cluster.redis.exists(Keys().job(done))
    del slow


def test_requeue_failed_of_a_session_job_reaches_the_next_attachment(cluster, tmp_path):
    session = unique("refail")
    flag = tmp_path / "fixed"
    with cwredis.Executor(url=cluster.url, session=session) as ex:
        future = ex.submit(helpers.fail_unless_exists, str(flag), 5)
        with pytest.raises(cwredis.RemoteError):
            future.result(JOB_TIMEOUT_S)
    flag.write_text("now it works")
    assert admin_json(cluster.url, "requeue-failed", future.job_id) == {"requeued": 1}
    with cwredis.Executor(url=cluster.url, session=session) as ex:
        again = ex.submit(helpers.fail_unless_exists, str(flag), 5)
        assert again.job_id == future.job_id and again.result(JOB_TIMEOUT_S) == 5


def test_a_module_edited_between_two_runs_gives_the_new_result(cluster, procs, tmp_path, monkeypatch):
    """Fresh code: the same long-lived job process would still hold the old module; it is replaced."""
    queue = unique("fresh")
    user = UserModule(tmp_path, monkeypatch, f"fresh_{queue.replace('-', '_')}", "def f(x):\n    return x + 1\n")
    mod = user.mod
    w = worker(procs, cluster.url, queue, concurrency=1)
    with cwredis.Executor(url=cluster.url, queue=queue) as ex:
        assert ex.submit(mod.f, 1).result(JOB_TIMEOUT_S) == 2
        assert ex.submit(mod.f, 2).result(JOB_TIMEOUT_S) == 3  # the same process, module unchanged
    user.edit("def f(x):\n    return x + 100\n")  # the user fixes the bug
    with cwredis.Executor(url=cluster.url, queue=queue) as ex:
        assert ex.submit(mod.f, 1).result(JOB_TIMEOUT_S) == 101
    assert w.alive() and f"{user.path.name} changed on disk" in w.log()

"""``cw-admin``: status, failed, requeue-failed, show; exit codes and JSON shapes from the contract."""

from __future__ import annotations

import json
import sys
import time

import pytest

import cwredis
import helpers
import jobs_api
from helpers import admin_json, read_markers, wait_for
from sysutil import Outcomes, assert_one_line_user_error, closed_port, cw_admin, unique

pytestmark = pytest.mark.system

LEASE_S = 2
JOB_TIMEOUT_S = 60

STATUS_KEYS = {"queues", "running", "delayed", "failed", "workers"}
FAILED_KEYS = {"id", "function", "attempts", "reason", "error"}
SHOW_KEYS = {"id", "state", "function", "attempts", "reason", "error"}


def qualified(fn) -> str:
    return f"{fn.__module__}.{fn.__qualname__}"


def check_status_shape(status) -> None:
    assert isinstance(status, dict) and set(status) == STATUS_KEYS, status
    for key in STATUS_KEYS - {"queues"}:
        assert type(status[key]) is int, (key, status)
    assert isinstance(status["queues"], dict), status
    for name, queue in status["queues"].items():
        assert isinstance(name, str)
        assert isinstance(queue, dict) and set(queue) == {"pending"}, status
        assert type(queue["pending"]) is int


def pending(status, queue: str) -> int:
    return status["queues"].get(queue, {"pending": 0})["pending"]


def check_show_shape(shown, jobid: str) -> None:
    assert isinstance(shown, dict) and set(shown) == SHOW_KEYS, shown
    assert shown["id"] == jobid
    assert shown["state"] in ("pending", "running", "delayed", "done", "failed"), shown
    assert isinstance(shown["function"], str)
    assert type(shown["attempts"]) is int
    if shown["state"] == "failed":
        assert isinstance(shown["reason"], str) and isinstance(shown["error"], str), shown
    else:
        assert shown["reason"] is None and shown["error"] is None, shown


def check_failed_shape(listing) -> None:
    assert isinstance(listing, list), listing
    for entry in listing:
        assert isinstance(entry, dict) and set(entry) == FAILED_KEYS, entry
        assert isinstance(entry["id"], str) and isinstance(entry["function"], str)
        assert type(entry["attempts"]) is int
        assert isinstance(entry["reason"], str) and isinstance(entry["error"], str)


def show(url: str, jobid: str):
    shown = admin_json(url, "show", jobid)
    check_show_shape(shown, jobid)
    return shown


# ---------------------------------------------------------------------- status


def test_status_counts_queues_running_failed_and_workers(server, procs, home, tmp_path):
    url = server.url
    procs.coordinator(url, "--lease-timeout", str(LEASE_S))
    empty = admin_json(url, "status")
    check_status_shape(empty)
    assert (empty["running"], empty["delayed"], empty["failed"], empty["workers"]) == (0, 0, 0, 0)
    assert all(q["pending"] == 0 for q in empty["queues"].values()), empty
    assert not (home / "url").exists(), "a coordinator with an explicit URL wrote a URL file"

    run_q, qa, qb = unique("run"), unique("qa"), unique("qb")
    procs.worker(url, "--queue", run_q, "--concurrency", "3")
    small = procs.worker(url, "--queue", run_q, "--concurrency", "1")
    # Two worker processes, whatever their concurrency (3 + 1 slots).
    wait_for(lambda: admin_json(url, "status")["workers"] == 2, timeout=20,
             message="status to count 2 workers")

    seen = Outcomes()
    clients = [cwredis.ClientThread(seen.on_result, url=url, error_callback=seen.on_error, queue=q)
               for q in (run_q, qa, qb)]
    for t in clients:
        t.start()
    t_run, t_qa, t_qb = clients
    try:
        bad = t_run.submit(helpers.boom, "boom")
        seen.wait_for(bad, timeout=JOB_TIMEOUT_S)
        marker = tmp_path / "running.log"
        # One at a time, so neither can be prefetched behind the other in one slot.
        for i in range(2):
            t_run.submit(helpers.marker_sleep_then, str(marker), i, 60)
            wait_for(lambda: len(read_markers(marker)) == i + 1, timeout=JOB_TIMEOUT_S,
                     message=f"long job {i} running")
        for i in range(3):
            t_qa.submit(helpers.square, i)
        for i in range(2):
            t_qb.submit(helpers.square, i)

        status = admin_json(url, "status")
        check_status_shape(status)
        assert pending(status, qa) == 3, status
        assert pending(status, qb) == 2, status
        assert pending(status, run_q) == 0, status
        assert status["running"] == 2, status
        assert status["failed"] == 1, status
        assert status["delayed"] == 0, status
        assert status["workers"] == 2, status

        human = cw_admin("--url", url, "status")
        assert human.returncode == 0, human.stderr
        assert qa in human.stdout and qb in human.stdout, human.stdout
        assert "Traceback" not in human.stderr

        # A SIGKILLed worker stops counting within its lease timeout.
        small.kill()
        killed = time.monotonic()
        asked_at = []

        def workers_now() -> int:
            asked_at.append(time.monotonic())  # cw-admin's own start-up time does not count
            return admin_json(url, "status")["workers"]

        wait_for(lambda: workers_now() == 1, timeout=LEASE_S + 8, message="status to drop the killed worker")
        # The last call that still counted it started this long after the kill (and read even later).
        still_counted = asked_at[-2] - killed if len(asked_at) > 1 else 0.0
        assert still_counted <= LEASE_S + 0.3, f"dead worker still counted {still_counted:.1f}s after SIGKILL"
    finally:
        for t in clients:
            t.stop()


# ------------------------------------------------------------------------ show


def test_show_reports_each_state(server, procs, home, tmp_path):
    url = server.url
    procs.coordinator(url, "--lease-timeout", str(LEASE_S))
    idle_q, busy_q = unique("idle"), unique("busy")
    seen = Outcomes()
    t_idle = cwredis.ClientThread(seen.on_result, url=url, error_callback=seen.on_error, queue=idle_q)
    t_busy = cwredis.ClientThread(seen.on_result, url=url, error_callback=seen.on_error, queue=busy_q)
    t_idle.start()
    t_busy.start()
    try:
        waiting = t_idle.submit(helpers.square, 2)
        shown = show(url, waiting)
        assert shown["state"] == "pending" and shown["attempts"] == 0, shown
        assert shown["function"] == qualified(helpers.square), shown

        procs.worker(url, "--queue", busy_q, "--concurrency", "2")
        done_job = t_busy.submit(helpers.square, 3)
        failed_job = t_busy.submit(jobs_api.Nested.boom)
        seen.wait_for(done_job, timeout=JOB_TIMEOUT_S)
        seen.wait_for(failed_job, timeout=JOB_TIMEOUT_S)
        marker = tmp_path / "busy.log"
        long_job = t_busy.submit(helpers.marker_sleep_then, str(marker), 1, 60)
        wait_for(lambda: read_markers(marker), timeout=JOB_TIMEOUT_S, message="long job running")

        shown = show(url, long_job)
        assert (shown["state"], shown["attempts"]) == ("running", 1), shown
        assert shown["function"] == qualified(helpers.marker_sleep_then), shown

        shown = show(url, done_job)
        assert (shown["state"], shown["attempts"]) == ("done", 1), shown

        shown = show(url, failed_job)
        assert shown["state"] == "failed", shown
        assert shown["attempts"] == 1 and shown["reason"] == "exception", shown
        assert shown["error"] == "ValueError: boom", shown
        assert shown["function"] == "jobs_api.Nested.boom", shown

        human = cw_admin("--url", url, "show", failed_job)
        assert human.returncode == 0, human.stderr
        assert failed_job in human.stdout and "failed" in human.stdout, human.stdout
        assert "ValueError: boom" in human.stdout, human.stdout
    finally:
        t_idle.stop()
        t_busy.stop()


def test_show_function_of_main_script(server, procs, home, tmp_path):
    """A function defined in a client script's __main__ shows as ``__main__.name``."""
    script = tmp_path / "submit_only.py"
    script.write_text(
        "import sys, cwredis\n"
        "def square(x):\n    return x * x\n"
        "t = cwredis.ClientThread(None, url=sys.argv[1], queue=sys.argv[2])\n"
        "print('JOBID', t.submit(square, 3), flush=True)\n"
        "t.stop()\n")
    queue = unique("nobody")
    client = procs.run([sys.executable, str(script), server.url, queue])
    assert client.wait(timeout=JOB_TIMEOUT_S) == 0, client.log()
    jobid = [line.split()[1] for line in client.log().splitlines() if line.startswith("JOBID ")][0]
    shown = show(server.url, jobid)
    assert shown["function"] == "__main__.square", shown
    assert shown["state"] == "pending", shown


# ----------------------------------------------------------- failed / requeue


def test_failed_listing_and_requeue_failed(server, procs, home, tmp_path):
    url = server.url
    procs.coordinator(url, "--lease-timeout", str(LEASE_S))
    queue = unique("flaky")
    fix = tmp_path / "fixed"  # the jobs fail until this file exists
    seen = Outcomes()
    t = cwredis.ClientThread(seen.on_result, url=url, error_callback=seen.on_error, queue=queue)
    t.start()
    try:
        worker = procs.worker(url, "--queue", queue)
        first = t.submit(jobs_api.fail_unless_exists, str(fix))
        second = t.submit(jobs_api.fail_unless_exists, str(fix))
        seen.wait_for(first, timeout=JOB_TIMEOUT_S)
        seen.wait_for(second, timeout=JOB_TIMEOUT_S)
        assert set(seen.errors) == {first, second} and seen.results == {}
        assert seen.errors[first].reason == "exception"

        listing = admin_json(url, "failed")
        check_failed_shape(listing)
        by_id = {entry["id"]: entry for entry in listing}
        assert set(by_id) == {first, second}, listing
        assert by_id[first] == {"id": first, "function": qualified(jobs_api.fail_unless_exists),
                                "attempts": 1, "reason": "exception", "error": "ValueError: boom"}
        human = cw_admin("--url", url, "failed")
        assert human.returncode == 0 and first in human.stdout and "ValueError: boom" in human.stdout, human

        # Stop the worker so requeued jobs stay visible as pending.
        worker.signal(15)
        assert worker.wait(timeout=20) == 0, worker.log()
        fix.touch()

        assert admin_json(url, "requeue-failed", first) == {"requeued": 1}
        shown = show(url, first)
        assert (shown["state"], shown["attempts"], shown["reason"], shown["error"]) == \
               ("pending", 0, None, None), shown
        assert show(url, second)["state"] == "failed"
        assert admin_json(url, "status")["failed"] == 1
        assert [e["id"] for e in admin_json(url, "failed")] == [second]

        # A named job that is not failed: exit 1, one line, nothing changed (not even `second`).
        for args in (("requeue-failed", first), ("requeue-failed", second, first)):
            for extra in ((), ("--json",)):
                done = cw_admin("--url", url, *args, *extra)
                assert done.returncode == 1, (args, extra, done)
                assert_one_line_user_error(done.stderr)
        assert show(url, second)["state"] == "failed"
        assert show(url, first)["state"] == "pending"

        # No ids: every failed job.
        assert admin_json(url, "requeue-failed") == {"requeued": 1}
        assert admin_json(url, "failed") == []
        shown = show(url, second)
        assert (shown["state"], shown["attempts"]) == ("pending", 0), shown
        assert admin_json(url, "requeue-failed") == {"requeued": 0}
        human = cw_admin("--url", url, "requeue-failed")
        assert human.returncode == 0 and "Traceback" not in human.stderr, human

        # The still-running client gets the new outcome.
        procs.worker(url, "--queue", queue)
        wait_for(lambda: first in seen.results and second in seen.results, timeout=JOB_TIMEOUT_S,
                 message="new outcomes of the requeued jobs")
        assert seen.results == {first: "fixed", second: "fixed"}
        assert seen.outcome_count(first) == 2 and seen.outcome_count(second) == 2, seen.calls
        shown = show(url, first)
        assert (shown["state"], shown["attempts"]) == ("done", 1), shown
        t.wait(timeout=5)
    finally:
        t.stop()


# ------------------------------------------------------------- user errors


def test_unknown_job_id_is_a_user_error(server, home):
    url = server.url
    before = server.client().dbsize()
    for args in (("show", "no-such-job"), ("requeue-failed", "no-such-job")):
        for extra in ((), ("--json",)):
            done = cw_admin("--url", url, *args, *extra)
            assert done.returncode == 1, (args, extra, done)
            assert_one_line_user_error(done.stderr, secret=server.password)
    assert server.client().dbsize() == before


def test_unreachable_redis_exits_2(server, home):
    dead_port = closed_port()
    cases = {
        "closed port": f"redis://:pw-closed-123@127.0.0.1:{dead_port}/0",
        "wrong password": f"redis://:wrong-password-456@127.0.0.1:{server.port}/0",
    }
    for label, url in cases.items():
        password = url.split(":")[2].split("@")[0]
        # "checked first": even a command that would be a user error exits 2.
        for args in (("status",), ("failed", "--json"), ("show", "no-such-job")):
            started = time.monotonic()
            done = cw_admin("--url", url, *args)
            assert done.returncode == 2, (label, args, done)
            assert_one_line_user_error(done.stderr, secret=password)
            assert time.monotonic() - started < 20, (label, args, "took too long")


def test_url_from_environment(server, home):
    done = cw_admin("status", "--json", env={"CWREDIS_URL": server.url})
    assert done.returncode == 0, done
    assert set(json.loads(done.stdout)) == STATUS_KEYS


def test_wrong_flag_is_an_argparse_usage_error(server, home):
    for args in (("--bogus", "status"), ("status", "--bogus"), ("frobnicate",)):
        done = cw_admin("--url", server.url, *args)
        assert done.returncode == 2, (args, done)
        assert "usage" in done.stderr.lower(), (args, done.stderr)
        assert "Traceback" not in done.stderr


def test_purge_failed_deletes_failed_jobs_only(server, procs, home):
    procs.coordinator(server.url, "--lease-timeout", "2")
    procs.worker(server.url)
    errors = {}
    with cwredis.ClientThread(None, url=server.url, error_callback=lambda j, e: errors.setdefault(j, e)) as t:
        bad = t.submit(helpers.boom, "purge me")
        good = t.submit(helpers.square, 3)
    assert list(errors) == [bad]
    done = cw_admin("--url", server.url, "purge-failed", good)
    assert done.returncode == 1 and "not failed" in done.stderr  # nothing changed
    assert admin_json(server.url, "show", good)["state"] == "done"
    assert admin_json(server.url, "purge-failed", "--all") == {"purged": 1}
    assert admin_json(server.url, "failed") == []
    assert cw_admin("--url", server.url, "show", bad).returncode == 1


def test_status_watch_refreshes_until_interrupted(server, procs, home):
    import signal
    import subprocess

    procs.coordinator(server.url, "--lease-timeout", "2")
    procs.worker(server.url)
    wait_for(lambda: admin_json(server.url, "status")["workers"] == 1, timeout=10)
    watch = subprocess.Popen([sys.executable, "-m", "cwredis.admin", "--url", server.url, "status", "--watch",
                              "--interval", "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        time.sleep(1.0)
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=10)
    finally:
        if watch.poll() is None:
            watch.kill()
            watch.wait()
    assert watch.returncode == 0, err
    assert out.count("workers 1") >= 2  # refreshed at least twice
    assert "Traceback" not in err

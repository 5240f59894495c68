"""Live output: a running job's prints reach ``cw-admin logs`` (and the dashboard) before it ends.

The job process sends what is new at most every 0.5 s; the worker writes the
tail into the job's record with its progress writes; ``cw-admin logs`` reads
it, ``-f`` follows it until the job ends; a job that timed out or was
cancelled keeps it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import cwredis
import helpers
import jobs_dashboard
from harness import BIN_DIR, cw_admin
from helpers import wait_for

pytestmark = pytest.mark.system


def logs(url: str, *args: str) -> subprocess.CompletedProcess:
    return cw_admin("logs", *args, env={"CWREDIS_URL": url})


def test_logs_shows_the_first_line_while_the_job_runs_and_follows_it_to_the_end(cluster):
    with cwredis.ClientThread(lambda *_: None, url=cluster.url) as client:
        job_id = client.submit(jobs_dashboard.print_sleep_print, 4)
        shown = wait_for(lambda: "first line" in (done := logs(cluster.url, job_id)).stdout and done,
                         timeout=15, interval=0.3, message="first line in cw-admin logs")
        assert shown.returncode == 0 and "second line" not in shown.stdout
        as_json = json.loads(logs(cluster.url, job_id, "--json").stdout)
        assert as_json["id"] == job_id and as_json["state"] == "running" and "first line" in as_json["output"]
        follow = subprocess.run([str(BIN_DIR / "cw-admin"), "logs", "-f", job_id], capture_output=True, text=True,
                                timeout=30, env={**__import__("os").environ, "CWREDIS_URL": cluster.url})
        assert follow.returncode == 0, follow.stderr
        assert follow.stdout.index("first line") < follow.stdout.index("second line")
        assert follow.stdout.count("first line") == 1
        client.wait(timeout=15)


def test_a_timed_out_or_cancelled_job_keeps_its_output(cluster):
    errors: dict[str, cwredis.RemoteError] = {}
    with cwredis.ClientThread(lambda *_: None, url=cluster.url, timeout=3, max_attempts=1,
                              error_callback=lambda j, e: errors.__setitem__(j, e)) as client:
        timed_out = client.submit(jobs_dashboard.print_sleep_print, 60)
        cancelled = client.submit(jobs_dashboard.print_sleep_print, 60)
        wait_for(lambda: "first line" in logs(cluster.url, cancelled).stdout, timeout=15, interval=0.3,
                 message="the job to cancel printed")
        client.cancel(cancelled)
        client.wait(timeout=30)
    assert errors[timed_out].reason == "timeout" and errors[cancelled].reason == "cancelled"
    for job_id in (timed_out, cancelled):
        kept = json.loads(logs(cluster.url, job_id, "--json").stdout)
        assert kept["state"] == "failed" and "first line" in kept["output"], kept


def test_logs_of_an_unknown_job_is_a_user_error(cluster):
    done = logs(cluster.url, "no-such-job")
    assert done.returncode == 1 and "unknown job id" in done.stderr and done.stderr.count("\n") == 1

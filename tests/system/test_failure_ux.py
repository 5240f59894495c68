"""Issue 11, "when something goes wrong": each mistake a new user makes ends in a clear message, fast.

One scenario per item of the issue, on real processes (a server, a
coordinator and a worker from the module's ``cluster``, or started here).
"""

from __future__ import annotations

import os
import subprocess

import pytest

import cwredis
import jobs_failures
from harness import BIN_DIR
from helpers import admin_json
from sysutil import assert_one_line_user_error, cw_admin

pytestmark = pytest.mark.system


def _failed_jobs(url: str, n: int) -> list[str]:
    errors: dict[str, cwredis.RemoteError] = {}
    with cwredis.ClientThread(None, url=url, error_callback=lambda j, e: errors.setdefault(j, e)) as t:
        ids = [t.submit(jobs_failures.raise_value_error, f"fail {i}") for i in range(n)]
    assert sorted(errors) == sorted(ids)
    return ids


# ------------------------------------------------------------------ item 5: | head, purge-failed


@pytest.mark.parametrize("argv", [["status"], ["failed"], ["workers"], ["status", "--json"], ["failed", "--json"]])
def test_admin_output_into_a_closed_pipe_exits_quietly(cluster, argv):
    """``cw-admin ... | head``: the reader went away; no BrokenPipe traceback, exit 0."""
    _failed_jobs(cluster.url, 3)
    read_end, write_end = os.pipe()
    os.close(read_end)  # like `head` that has read its lines: every write now fails with EPIPE
    try:
        done = subprocess.run([str(BIN_DIR / "cw-admin"), *argv], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, timeout=30, env=dict(os.environ, CWREDIS_URL=cluster.url))
    finally:
        os.close(write_end)
    assert done.stderr == "" and done.returncode == 0, (done.returncode, done.stderr)


def test_purge_failed_needs_ids_or_all(cluster):
    ids = _failed_jobs(cluster.url, 2)
    done = cw_admin("purge-failed", env={"CWREDIS_URL": cluster.url})
    assert done.returncode == 1, done
    assert_one_line_user_error(done.stderr)
    assert "--all" in done.stderr
    failed = {row["id"] for row in admin_json(cluster.url, "failed")}
    assert set(ids) <= failed  # nothing changed
    assert admin_json(cluster.url, "purge-failed", ids[0]) == {"purged": 1}
    assert admin_json(cluster.url, "purge-failed", "--all")["purged"] >= 1
    assert admin_json(cluster.url, "failed") == []

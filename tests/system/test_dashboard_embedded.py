"""The dashboard against the embedded default, with no URL anywhere: it finds the server through
``$CWREDIS_HOME/url``, and every command it sends is one the embedded server's ACL grants."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import cwredis
import helpers
from harness import cw_admin
from test_dashboard import start_dashboard
from test_embedded import embedded_ports, start_embedded  # noqa: F401 (a fixture)

pytestmark = pytest.mark.system


class _NoUrlCluster:
    """What start_dashboard needs: procs, and a URL to put in CWREDIS_URL (None: none at all)."""

    def __init__(self, procs: object) -> None:
        self.procs = procs
        self.url = None


def test_dashboard_with_the_embedded_default_and_no_url(home, procs, embedded_ports):  # noqa: F811
    coordinator, url = start_embedded(procs, home, embedded_ports)
    procs.worker(None, "--concurrency", "2")
    with cwredis.Executor() as ex:
        assert list(ex.map(helpers.square, range(10))) == [x * x for x in range(10)]
        failed = ex.submit(helpers.boom, "embedded")
        with pytest.raises(cwredis.RemoteError):
            failed.result(timeout=30)
    dash = start_dashboard(_NoUrlCluster(procs))
    try:
        for path in ("/api/overview", "/api/running", "/api/failed", "/api/workers", "/metrics"):
            status, _, body = dash.request(path)
            assert status == 200, (path, body)
        failed_ids = [j["id"] for j in dash.json("/api/failed")["jobs"]]
        assert len(failed_ids) == 1 and "cwredis_jobs_completed_total" in dash.request("/metrics")[2].decode()
        csrf = {"X-CSRF-Token": dash.json("/api/session")["csrf"], "Content-Type": "application/json"}
        status, _, body = dash.request("/api/purge", method="POST", headers=csrf,
                                       body=json.dumps({"ids": failed_ids}).encode())
        assert status == 200 and json.loads(body) == {"purged": 1}
        assert cw_admin("logs", failed_ids[0]).returncode == 1  # purged: unknown now
    finally:
        assert dash.proc.stop() == 0

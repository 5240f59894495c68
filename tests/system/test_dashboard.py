"""``cw-admin dashboard`` against a live cluster, in a real browser (Debian's chromium, headless).

The browser is driven through Playwright with the system's chromium
(``executable_path``; no browser is ever downloaded). Without chromium or the
``playwright`` package the browser tests skip and say why; the HTTP-level
tests (403s, CSRF, headers, /metrics) need neither.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

import cwredis
import helpers
import jobs_dashboard
from cwredis.keys import Keys
from harness import Proc, cw_admin
from helpers import TEST_SECRET, wait_for

pytestmark = pytest.mark.system

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: Without these, chromium's background connections are refused by a closed network and it stalls.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
#: Where the README's screenshot comes from (set CWREDIS_SCREENSHOT=docs/dashboard.png to refresh it).
SCREENSHOT = os.environ.get("CWREDIS_SCREENSHOT")


@dataclass
class Dashboard:
    proc: Proc
    base: str
    token: str

    def request(self, path: str, *, token: str | None = "bearer", method: str = "GET", body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) of one request; ``token``: "bearer" (the right one), None, or a value."""
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {self.token if token == 'bearer' else token}"
        request = urllib.request.Request(self.base + path, data=body, method=method, headers=all_headers)
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(request, timeout=10) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as error:
            return error.code, dict(error.headers), error.read()

    def json(self, path: str) -> Any:
        status, _, body = self.request(path)
        assert status == 200, body
        return json.loads(body)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def start_dashboard(cluster, *extra: str) -> Dashboard:
    env = {"CWREDIS_URL": cluster.url} if cluster.url else {}  # none: found as every role finds it
    proc = cluster.procs.run([str(Path(sys.executable).parent / "cw-admin"), "dashboard", *extra],
                             env=env, name="dashboard", capture_stdout=True)
    line = proc.popen.stdout.readline().decode()
    match = re.search(r"(http://127\.0\.0\.1:\d+)/(?:metrics)?\?token=(\S+)", line)
    assert match, f"no address printed: {line!r}\n{proc.log()}"
    return Dashboard(proc, match.group(1), match.group(2))


@pytest.fixture(scope="module")
def dashboard(cluster) -> Iterator[Dashboard]:
    dash = start_dashboard(cluster)
    yield dash
    assert dash.proc.stop() == 0, dash.proc.log()  # SIGTERM: a clean stop


@pytest.fixture
def page(dashboard, tmp_path) -> Iterator[Any]:
    """A fresh headless chromium tab that has opened the printed address (token -> cookie)."""
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH (apt-get install chromium; .ci/run does it when root)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the test extra's playwright is not installed")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1200, "height": 900})
        try:
            tab = context.new_page()
            errors: list[str] = []
            tab.on("pageerror", lambda exc: errors.append(str(exc)))
            tab.goto(f"{dashboard.base}/?token={dashboard.token}")
            assert "?token" not in tab.url  # swapped for the cookie and taken out of the address bar
            tab.wait_for_selector("#count-workers")
            yield tab
            assert not errors, errors
        finally:
            context.close()


def number(tab: Any, selector: str) -> int:
    return int(tab.inner_text(selector).replace(",", "").replace("\u202f", "") or 0)


def admin_show(url: str, job_id: str) -> dict[str, Any]:
    return helpers.admin_json(url, "show", job_id)  # type: ignore[return-value]


def failed_job(url: str, func: Any, *args: Any) -> str:
    """Submit ``func(*args)`` and wait until it has failed; its id."""
    errors: list[str] = []
    with cwredis.ClientThread(lambda *_: None, url=url, error_callback=lambda j, e: errors.append(j)) as client:
        job_id = client.submit(func, *args)
        client.wait(timeout=30)
    assert errors == [job_id]
    return job_id


# ------------------------------------------------------------------------------------ the browser


def test_overview_numbers_move_as_a_sweep_runs(cluster, dashboard, page):
    before = number(page, "#count-done")
    with cwredis.Executor(url=cluster.url, session=f"sweep-{os.getpid()}") as ex:
        futures = [ex.submit(helpers.sleep_then, x, 0.15) for x in range(60)]
        wait_for(lambda: number(page, "#count-running") > 0, timeout=20, message="running shown")
        wait_for(lambda: page.query_selector("#sessions progress") is not None, timeout=10, message="a session bar")
        time.sleep(3)  # a few points of throughput on the chart
        if SCREENSHOT:
            page.screenshot(path=SCREENSHOT)
        assert [f.result(timeout=60) for f in futures] == list(range(60))
    wait_for(lambda: number(page, "#count-done") >= before + 60, timeout=15, message="done count moved by 60")
    row = page.query_selector('#queues tr[data-queue="default"]')
    assert row is not None and int(row.query_selector(".done").inner_text().replace(",", "")) >= 60
    wait_for(lambda: number(page, "#count-running") == 0, timeout=10, message="running back to 0")


def test_requeue_purge_and_cancel_buttons_act_as_cw_admin(cluster, dashboard, page, tmp_path):
    flag = tmp_path / "fixed"
    to_requeue = failed_job(cluster.url, helpers.fail_unless_exists, str(flag), 7)
    to_purge = failed_job(cluster.url, helpers.boom, "purge me")
    flag.touch()  # the "bug" is fixed: a requeued run succeeds
    page.goto(f"{dashboard.base}/#/failed")
    page.click(f'button[data-action="requeue"][data-id="{to_requeue}"]')
    wait_for(lambda: admin_show(cluster.url, to_requeue)["state"] == "done", timeout=20, interval=0.5,
             message="requeued job done")
    page.click(f'button[data-action="purge"][data-id="{to_purge}"]')
    wait_for(lambda: cw_admin("show", to_purge, env={"CWREDIS_URL": cluster.url}).returncode == 1, timeout=10,
             interval=0.5, message="purged job gone")

    with cwredis.ClientThread(lambda *_: None, url=cluster.url, error_callback=lambda *_: None) as client:
        job_id = client.submit(helpers.sleep_then, 1, 60)
        page.goto(f"{dashboard.base}/#/running")
        page.click(f'button[data-action="cancel"][data-id="{job_id}"]', timeout=20_000)
        wait_for(lambda: admin_show(cluster.url, job_id)["reason"] == "cancelled", timeout=15,
                 interval=0.5, message="cancelled")
        client.wait(timeout=15)


def test_an_xss_payload_in_error_and_output_renders_as_text(cluster, dashboard, page):
    job_id = failed_job(cluster.url, jobs_dashboard.xss_failure)
    title = page.title()
    page.goto(f"{dashboard.base}/#/failed")
    link = page.wait_for_selector(f'tr[data-job="{job_id}"] .error-line')
    assert link.inner_text() == "ValueError: error " + jobs_dashboard.XSS
    link.click()
    page.wait_for_selector(".traceback")
    assert jobs_dashboard.XSS in page.inner_text(".traceback")
    page.goto(f"{dashboard.base}/#/job/{job_id}")
    page.wait_for_selector(".output")
    assert jobs_dashboard.XSS in page.inner_text(".output")
    time.sleep(1.5)  # a poll or two: nothing the payload wanted happens later either
    assert page.evaluate("window.__pwned") is None
    assert page.title() == title
    assert page.query_selector("main img") is None and page.query_selector("main script") is None


def test_the_running_page_shows_each_jobs_last_lines_of_output(cluster, dashboard, page):
    with cwredis.ClientThread(lambda *_: None, url=cluster.url) as client:
        job_id = client.submit(jobs_dashboard.print_sleep_print, 5)
        page.goto(f"{dashboard.base}/#/running")
        wait_for(lambda: "first line" in (page.text_content(f'tr[data-job="{job_id}"] .output') or ""),
                 timeout=15, interval=0.2, message="live output on the running page")
        client.wait(timeout=20)


# ------------------------------------------------------------------------------------ HTTP, no browser


def test_without_the_token_every_request_is_403_and_gets_change_nothing(cluster, dashboard):
    job_id = failed_job(cluster.url, helpers.boom, "stays failed")
    for path in ("/", "/api/overview", "/api/failed", "/metrics", "/static/dashboard.js", "/nothing-here"):
        for token in (None, "wrong-" + dashboard.token):
            status, headers, _ = dashboard.request(path, token=token)
            assert status == 403, (path, token)
            assert "default-src 'self'" in headers["content-security-policy"]
    # The token in the address is exchanged for a cookie that no other site can make the browser send.
    status, headers, _ = dashboard.request(f"/?token={dashboard.token}", token=None)
    assert status == 303 and headers["location"] == "/"
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    assert dashboard.request("/", token=None, headers={"Cookie": cookie.split(";")[0]})[0] == 200
    # A GET never acts; a POST without the CSRF token neither.
    assert dashboard.request(f"/api/requeue?ids={job_id}")[0] == 405
    body = json.dumps({"ids": [job_id]}).encode()
    assert dashboard.request("/api/requeue", method="POST", body=body)[0] == 403
    assert dashboard.request("/api/requeue", method="POST", body=body, token=None,
                             headers={"X-CSRF-Token": dashboard.json("/api/session")["csrf"]})[0] == 403
    assert admin_show(cluster.url, job_id)["state"] == "failed"
    # A wrong request through the right door: cw-admin's rules (not failed -> refused, nothing changed).
    csrf = {"X-CSRF-Token": dashboard.json("/api/session")["csrf"], "Content-Type": "application/json"}
    assert dashboard.request("/api/requeue", method="POST", body=body, headers=csrf)[0] == 200
    status, _, reply = dashboard.request("/api/purge", method="POST", headers=csrf,
                                         body=json.dumps({"ids": [job_id, "no-such-job"]}).encode())
    assert status == 400 and b"nothing changed" in reply  # one is not failed: nothing purged, as cw-admin
    assert cw_admin("show", job_id, env={"CWREDIS_URL": cluster.url}).returncode == 0


def test_the_failed_list_is_paged_latest_first(cluster, dashboard):
    with cwredis.Executor(url=cluster.url) as ex:
        outcomes = list(ex.map(helpers.boom, [f"page {i}" for i in range(30)], return_exceptions=True))
    assert all(isinstance(o, cwredis.RemoteError) for o in outcomes)
    first, second = dashboard.json("/api/failed?limit=25"), dashboard.json("/api/failed?offset=25&limit=25")
    assert len(first["jobs"]) == 25 and first["total"] == second["total"] >= 30
    ids = [j["id"] for j in first["jobs"] + second["jobs"]]
    assert len(ids) == len(set(ids)) == min(50, first["total"])
    times = [j["failed_ms"] for j in first["jobs"] + second["jobs"]]
    assert times == sorted(times, reverse=True)
    assert len(dashboard.json("/api/failed?limit=100000")["jobs"]) <= 100  # a page is bounded


def test_no_password_or_secret_in_pages_headers_metrics_or_log(cluster, dashboard):
    password = re.search(r"://[^:]*:([^@]+)@", cluster.url).group(1)
    seen = [dashboard.proc.log()]
    for path in ("/", "/api/overview", "/api/workers", "/api/running", "/api/failed", "/metrics", "/api/session",
                 "/static/dashboard.js"):
        status, headers, body = dashboard.request(path)
        assert status == 200, path
        seen += [json.dumps(headers), body.decode()]
    text = "\n".join(seen)
    assert password not in text and TEST_SECRET not in text


def test_metrics_parse_and_match_redis(cluster, dashboard):
    from prometheus_client.parser import text_string_to_metric_families
    with cwredis.Executor(url=cluster.url) as ex:
        assert list(ex.map(helpers.square, range(20))) == [x * x for x in range(20)]
    status, headers, body = dashboard.request("/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(body.decode()) for s in family.samples}
    status = helpers.admin_json(cluster.url, "status")
    assert samples[("cwredis_queue_pending", (("queue", "default"),))] == status["queues"]["default"]["pending"]
    assert samples[("cwredis_jobs_failed", ())] == status["failed"]
    assert samples[("cwredis_jobs_delayed", ())] == status["delayed"]
    assert samples[("cwredis_workers", ())] == status["workers"] == 1
    assert ("cwredis_jobs_running", ()) in samples and ("cwredis_sessions", ()) in samples
    done = samples[("cwredis_jobs_completed_total", (("outcome", "done"), ("queue", "default")))]
    assert done >= 20 and done == int(cluster.redis.hget(Keys().stats, "done:default"))


def test_metrics_only_serves_metrics_alone_with_a_bearer_token(cluster):
    dash = start_dashboard(cluster, "--metrics-only", "--port", str(helpers.free_port()))
    try:
        assert dash.request("/metrics")[0] == 200
        assert dash.request("/metrics", token=None)[0] == 403
        assert dash.request("/")[0] == 404 and dash.request("/api/overview")[0] == 404
    finally:
        dash.proc.signal(signal.SIGINT)  # Ctrl-C
        assert dash.proc.wait(timeout=10) == 0


def test_the_token_file_is_private_and_survives_a_restart(cluster, dashboard, module_home):
    path = module_home / "dashboard-token"
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.read_text().strip() == dashboard.token

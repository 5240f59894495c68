"""Progress reports, forwarded output and progress bars, with a real server and worker."""

from __future__ import annotations

import cwredis
import jobs_progress
from helpers import wait_for
from sysutil import cw_admin


def test_progress_reaches_the_callback_and_cw_admin_show(server, procs, home):
    procs.coordinator(server.url, "--lease-timeout", "2")
    procs.worker(server.url)
    reports: list[tuple[str, float, str | None]] = []
    results: dict[str, str] = {}
    with cwredis.ClientThread(lambda j, r: results.setdefault(j, r), url=server.url,
                              progress_callback=lambda *a: reports.append(a)) as t:
        job_id = t.submit(jobs_progress.report_then_sleep, 2.0)
        wait_for(lambda: reports, timeout=10, message="no progress report")
        shown = cw_admin("--url", server.url, "show", job_id)
    assert reports[0] == (job_id, 0.5, "half way")
    assert "progress  0.5000 half way" in shown.stdout
    assert results == {job_id: job_id}  # cwredis.current_job_id() inside the job


def test_output_is_forwarded_with_the_job_id_and_kept_with_failures(server, procs, home, capsys):
    procs.coordinator(server.url, "--lease-timeout", "2")
    procs.worker(server.url)
    errors: dict[str, cwredis.RemoteError] = {}
    with cwredis.ClientThread(None, url=server.url, error_callback=lambda j, e: errors.setdefault(j, e)) as t:
        ok_id = t.submit(jobs_progress.chatty, 21)
        bad_id = t.submit(jobs_progress.chatty_failure)
    out = capsys.readouterr().out
    assert f"[{ok_id}] computing 21" in out and f"[{ok_id}] warning about 21" in out
    assert f"[{bad_id}] last words before failing" in out
    assert errors[bad_id].reason == "exception"
    shown = cw_admin("--url", server.url, "show", bad_id).stdout
    assert "last words before failing" in shown and "RuntimeError: kaput" in shown


def test_output_forwarding_can_be_turned_off(server, procs, home, capsys):
    procs.coordinator(server.url, "--lease-timeout", "2")
    procs.worker(server.url)
    with cwredis.ClientThread(None, url=server.url, forward_output=False) as t:
        job_id = t.submit(jobs_progress.chatty, 1)
    assert job_id not in capsys.readouterr().out


def test_progress_bars_count_done_and_failed(server, procs, home, capsys):
    procs.coordinator(server.url, "--lease-timeout", "2")
    procs.worker(server.url, "--concurrency", "2")
    with cwredis.Executor(url=server.url) as ex:
        assert list(ex.map(jobs_progress.chatty, range(30), progress="always")) == [2 * x for x in range(30)]
    err = capsys.readouterr().err
    assert "30/30" in err and "done=30" in err and "failed=0" in err
    with cwredis.ClientThread(None, url=server.url, error_callback=lambda j, e: None, forward_output=False) as t:
        for _ in range(3):
            t.submit(jobs_progress.slow_failure, 0.5)  # still running when wait() starts its bar
        t.wait(progress="always")
    assert "failed=3" in capsys.readouterr().err


def test_progress_true_shows_no_bar_when_stderr_is_not_a_terminal(server, procs, home, capsys):
    procs.coordinator(server.url, "--lease-timeout", "2")
    procs.worker(server.url)
    with cwredis.Executor(url=server.url) as ex:
        assert list(ex.map(jobs_progress.chatty, range(3), progress=True)) == [0, 2, 4]
    assert "job/s" not in capsys.readouterr().err

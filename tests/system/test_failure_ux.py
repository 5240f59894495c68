"""Issue 11, "when something goes wrong": each mistake a new user makes ends in a clear message, fast.

One scenario per item of the issue, on real processes (a server, a
coordinator and a worker from the module's ``cluster``, or started here).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

import cwredis
import cwredis.config
import jobs_failures
from cwredis.keys import Keys
from harness import BIN_DIR, child_pids, pid_alive
from helpers import admin_json, identity, wait_for
from sysutil import assert_one_line_user_error, closed_port, cw_admin

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


# ------------------------------------------------------------------ item 7: except ValueError


def test_remote_exception_is_caught_by_its_own_class_everywhere(cluster):
    errors: dict[str, cwredis.RemoteError] = {}
    with cwredis.ClientThread(None, url=cluster.url, error_callback=lambda j, e: errors.setdefault(j, e)) as t:
        jobid = t.submit(jobs_failures.raise_value_error, "boom")
    error = errors[jobid]
    assert isinstance(error, cwredis.RemoteError) and isinstance(error, ValueError)
    assert isinstance(error.exception, ValueError) and error.exception.args == ("boom",)
    assert error.jobid == jobid and error.reason == "exception" and "ValueError: boom" in str(error)

    t = cwredis.ClientThread(None, url=cluster.url)  # no error_callback: wait() raises
    t.start()
    try:
        t.submit(jobs_failures.raise_value_error, "from wait")
        with pytest.raises(ValueError, match="from wait"):
            t.wait(timeout=30)
    finally:
        t.stop()

    with cwredis.Executor(url=cluster.url) as ex:
        with pytest.raises(ValueError):
            ex.submit(jobs_failures.raise_value_error, "future").result(timeout=30)
        try:
            list(ex.map(jobs_failures.fail_if_odd, [2, 3], timeout=30))
        except ValueError as caught:  # the plain builtin, as a user writes it
            assert isinstance(caught, cwredis.RemoteError) and caught.exception.args == ("odd 3",)
        else:
            pytest.fail("map did not raise the remote ValueError")


def test_remote_exception_that_cannot_travel_still_has_its_class(cluster):
    with cwredis.Executor(url=cluster.url) as ex:
        needs_args = ex.submit(jobs_failures.raise_needs_args, 7).exception(timeout=30)
        unpicklable = ex.submit(jobs_failures.raise_unpicklable).exception(timeout=30)
    # NeedsArgs pickles but cannot be rebuilt from its args: the class is known, the instance is not.
    assert isinstance(needs_args, jobs_failures.NeedsArgs) and isinstance(needs_args, cwredis.RemoteError)
    assert needs_args.exception is None and "code 7: detail" in str(needs_args)
    assert isinstance(unpicklable, jobs_failures.Unpicklable) and unpicklable.exception is None
    assert "stays remote" in str(unpicklable)


# ------------------------------------------------------------------ item 9: map(return_exceptions=True)


@pytest.mark.parametrize("chunksize", [1, 2])
def test_map_return_exceptions_yields_each_failure_in_place(cluster, chunksize):
    with cwredis.Executor(url=cluster.url) as ex:
        out = list(ex.map(jobs_failures.fail_if_odd, [0, 1, 2, 3, 4], timeout=60, chunksize=chunksize,
                          return_exceptions=True))
    assert len(out) == 5
    if chunksize == 1:
        assert [out[0], out[2], out[4]] == [0, 20, 40]
        assert all(isinstance(out[i], cwredis.RemoteError) and isinstance(out[i], ValueError) for i in (1, 3))
        assert "odd 1" in str(out[1]) and "odd 3" in str(out[3])
    else:  # chunks [0, 1] [2, 3] [4]: a chunk fails as a whole
        assert all(isinstance(out[i], ValueError) for i in range(4)) and out[4] == 40


# ------------------------------------------------------------------ item 10: retry_on


def test_retry_on_retries_the_named_exceptions_with_back_off(cluster, tmp_path):
    flaky_runs, other_runs, last_runs = (tmp_path / "flaky", tmp_path / "other", tmp_path / "last")
    with cwredis.Executor(url=cluster.url, retry_on=(OSError,), max_attempts=3) as ex:
        recovers = ex.submit(jobs_failures.flaky, str(flaky_runs), 2)  # ConnectionResetError is an OSError
        not_named = ex.submit(jobs_failures.flaky, str(other_runs), 2, "ValueError")
        gives_up = ex.submit(jobs_failures.flaky, str(last_runs), 5)
        assert recovers.result(timeout=60) == 3
        with pytest.raises(ValueError):
            not_named.result(timeout=60)
        with pytest.raises(ConnectionResetError) as info:
            gives_up.result(timeout=60)
    assert info.value.reason == "exception"
    assert len(other_runs.read_text().splitlines()) == 1  # not in retry_on: failed at once, as before
    assert len(last_runs.read_text().splitlines()) == 3  # max_attempts runs in all
    starts = [float(t) for t in flaky_runs.read_text().split()]
    gaps = [b - a for a, b in zip(starts, starts[1:])]
    assert gaps[0] >= 0.4 and gaps[1] >= 0.9, gaps  # back-off: 0.5 s, then 1 s


def test_retry_on_takes_exception_classes_only(cluster):
    with pytest.raises(TypeError, match="exception classes"):
        cwredis.Executor(url=cluster.url, retry_on=("OSError",))


# ------------------------------------------------------------------ item 3: Ctrl-C on cw-local

#: The command cw-local runs: waits until both workers are live, says so, then idles (no job runs).
_IDLE_COMMAND = """
import json, subprocess, sys, time
while True:
    out = subprocess.run([sys.argv[1], "workers", "--json"], capture_output=True, text=True).stdout
    if out and len(json.loads(out)) == 2:
        break
    time.sleep(0.2)
print("READY", flush=True)
try:
    time.sleep(120)
except KeyboardInterrupt:  # the user's Ctrl-C reaches the command too; it ends quietly
    pass
"""


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        children = child_pids(todo.pop())
        found += children
        todo += children
    return found


def test_ctrl_c_on_cw_local_stops_everything_in_order_quietly_and_fast(procs, home, tmp_path):
    script = tmp_path / "idle.py"
    script.write_text(_IDLE_COMMAND)
    local = procs.run([str(BIN_DIR / "cw-local"), "-n", "2", "--", sys.executable, str(script),
                       str(BIN_DIR / "cw-admin")], name="cw-local")
    wait_for(lambda: "READY" in local.log(), timeout=60, message=f"cw-local ready:\n{local.log()}")
    pids = _descendants(local.pid)
    assert len(pids) >= 5, pids  # command, coordinator, its server, two workers (and their job children)
    started = time.monotonic()
    local.signal_group(signal.SIGINT)  # Ctrl-C at the terminal: the whole foreground process group
    local.wait(timeout=30)
    elapsed = time.monotonic() - started
    log = local.log()
    assert elapsed < 5, f"cw-local took {elapsed:.1f}s to stop:\n{log}"
    noisy = [line for line in log.splitlines()
             if re.search(r"WARNING|ERROR|Traceback|recover|cannot reach|retrying", line)]
    assert not noisy, "\n".join(noisy)
    order = [i for i, line in enumerate(log.splitlines()) if "stopped after" in line or "coordinator: signal" in line]
    assert len(order) == 3 and "coordinator" in log.splitlines()[order[-1]], log  # both workers, then coordinator
    wait_for(lambda: not [p for p in pids if pid_alive(p)], timeout=5,
             message=f"processes left behind: {[p for p in pids if pid_alive(p)]}")


# ------------------------------------------------------------------ item 4: cw-admin running, status


def test_admin_running_shows_where_and_how_long_and_status_counts_only_started_jobs(server, procs, home):
    """One slot; short jobs first teach the worker to claim ahead, then slow ones: only one runs at a time."""
    procs.coordinator(server.url, "--lease-timeout", "2")
    worker = procs.worker(server.url, "--concurrency", "1")
    with cwredis.Executor(url=server.url) as ex:
        list(ex.map(jobs_failures.sleep_for, [0.01] * 40, timeout=60))  # short: the worker now claims ahead
        slow = [ex.submit(jobs_failures.report_then_sleep, 1.5) for _ in range(4)]
        held, counted = 0, []
        while not all(f.done() for f in slow):
            held = max(held, sum(len(w) for w in _inflight_lists(server)))
            counted.append(admin_json(server.url, "status")["running"])
            time.sleep(0.1)
    rows: list[dict] = []
    with cwredis.ClientThread(None, url=server.url) as t:
        hung_id = t.submit(jobs_failures.report_then_sleep, 6)
        wait_for(lambda: rows.extend(r for r in admin_json(server.url, "running")
                                     if r["elapsed_s"] and r["progress"]) or rows, timeout=6,
                 message="cw-admin running shows the hung job with its elapsed time and progress")
    assert max(counted) <= 1, counted  # never a prefetched job counted as running
    row = rows[0]
    assert set(row) == {"id", "function", "worker", "host", "elapsed_s", "progress"}
    assert row["id"] == hung_id and row["function"].endswith("report_then_sleep")
    assert row["host"] == socket.gethostname() and str(worker.pid) in row["worker"]
    assert 0 < row["elapsed_s"] < 6 and row["progress"] == {"fraction": 0.5, "message": "half way"}
    assert held >= 2, f"the worker never claimed ahead ({held}): the scenario did not test prefetching"


def _inflight_lists(server) -> list[list[bytes]]:
    keys = Keys()
    client = server.client()
    try:
        return [client.lrange(keys.inflight(w.decode()), 0, -1) for w in client.zrange(keys.workers, 0, -1)]
    finally:
        client.close()


# ------------------------------------------------------------------ item 11: progress bars in a notebook

_NOTEBOOK_CLIENT = """
import sys
import IPython  # loaded, as in every Jupyter kernel (here the stand-in of tests/fake_ipython)
import cwredis, jobs_failures
with cwredis.Executor(url=sys.argv[1]) as ex:
    print(sum(ex.map(jobs_failures.fail_if_odd, [0, 2, 4], progress=True, timeout=60)))
"""


def test_progress_true_shows_a_bar_in_a_notebook(cluster, tmp_path):
    tests_dir = os.path.dirname(jobs_failures.__file__)
    script = tmp_path / "cell.py"
    script.write_text(_NOTEBOOK_CLIENT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(tests_dir, "fake_ipython"), tests_dir,
                                                      os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, str(script), cluster.url], capture_output=True, text=True, timeout=60,
                          env=env, stdin=subprocess.DEVNULL)  # stderr is a pipe, as in a kernel: no terminal
    assert done.returncode == 0 and done.stdout.strip() == "60", done.stderr
    assert "3/3" in done.stderr, f"no progress bar shown:\n{done.stderr}"


# ------------------------------------------------------------------ item 8: source lines of __main__ code

_CELL = '''
def scale(x):
    return check(x) * 2

def check(x):
    raise ValueError(f"bad input {x}")  # the line a user wants to see
'''

_NOTEBOOK_RUNNER = """
import linecache, sys
import cwredis
cell = sys.argv[2]
# What IPython does with a cell: its source lives in linecache only, under a name no file has.
linecache.cache["<ipython-input-7>"] = (len(cell), None, cell.splitlines(True), "<ipython-input-7>")
exec(compile(cell, "<ipython-input-7>", "exec"), globals())
with cwredis.Executor(url=sys.argv[1]) as ex:
    try:
        ex.submit(scale, 3).result(timeout=60)
    except ValueError as error:
        print(error.traceback)
"""


def test_remote_traceback_through_notebook_code_shows_its_source_lines(cluster, tmp_path):
    script = tmp_path / "kernel.py"
    script.write_text(_NOTEBOOK_RUNNER)
    done = subprocess.run([sys.executable, str(script), cluster.url, _CELL], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert 'File "<ipython-input-7>", line 3, in scale' in done.stdout, done.stdout
    assert "return check(x) * 2" in done.stdout, done.stdout
    assert 'raise ValueError(f"bad input {x}")  # the line a user wants to see' in done.stdout, done.stdout


# ------------------------------------------------------------------ item 1: a client that cannot start


def _wrong_urls(server) -> dict[str, tuple[str, str]]:
    """Each mistake: (URL, what the message must say)."""
    password = server.url.split("@")[0].rsplit(":", 1)[1]
    address = server.url.split("@")[1]
    return {"wrong password": (server.url.replace(password, "not-the-password"), "wrong password"),
            "no password": (f"redis://{address}", "the server needs a password and the URL has none"),
            "unknown host": ("redis://no-such-host.invalid:6379/0", "unknown host 'no-such-host.invalid'"),
            "nothing listening": (f"redis://127.0.0.1:{closed_port()}/0", "is cw-coordinator running?")}


@pytest.mark.parametrize("mistake", ["wrong password", "no password", "unknown host", "nothing listening"])
@pytest.mark.parametrize("api", [cwredis.ClientThread, cwredis.Executor])
def test_a_client_that_cannot_start_says_why_within_10s(server, home, mistake, api):
    url, says = _wrong_urls(server)[mistake]
    started = time.monotonic()
    with pytest.raises(cwredis.ConnectionError) as info:
        api(url=url)
    assert time.monotonic() - started < 10
    message = str(info.value)
    assert isinstance(info.value, ConnectionError) and isinstance(info.value, cwredis.CwredisError)
    assert says in message and cwredis.config.mask_url(url) in message, message
    assert "not-the-password" not in message


@pytest.mark.parametrize("mistake", ["wrong password", "nothing listening"])
def test_a_worker_that_cannot_reach_the_server_keeps_trying_and_logs_the_cause(server, procs, home, mistake):
    url, says = _wrong_urls(server)[mistake]
    worker = procs.worker(url)
    wait_for(lambda: says in worker.log(), timeout=15, message=f"the worker logs {says!r}:\n{worker.log()}")
    assert worker.alive(), worker.log()


def test_a_listener_that_never_answers_fails_the_client_within_10s(home):
    """A port that accepts connections but never speaks (a hung or foreign service): no 10 s socket
    timeout, then a retry -- the client's first contact is bounded by CLIENT_START_TIMEOUT_S."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)  # the kernel completes the handshakes; nobody ever reads or writes
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        started = time.monotonic()
        with pytest.raises(cwredis.ConnectionError) as info:
            cwredis.ClientThread(url=url)
        assert time.monotonic() - started < 10, time.monotonic() - started
    assert "127.0.0.1" in str(info.value)


def test_outcomes_the_redis_user_may_not_read_raise_a_clear_error_not_a_hang(server, home, procs):
    """A Redis user whose ACL lacks a command the client reads outcomes with (MGET, for a large result):
    ClientThread.wait() and Executor.map raise cwredis.ConnectionError naming the command and where
    cwredis lists what it needs, instead of waiting forever; once the command is granted, a new wait()
    delivers the result, once."""
    from cwredis import acl

    admin = server.client()
    allowed = [f"+{name}" for name in acl.ALLOWED_COMMANDS if name != "mget"]
    admin.execute_command("ACL", "SETUSER", "limited", "on", ">limited-pw", "~*", "&*", "-@all", *allowed)
    url = f"redis://limited:limited-pw@127.0.0.1:{server.port}/0"
    procs.coordinator(url)
    procs.worker(url)
    large = b"r" * 200_000  # its result is staged: the client reads it with MGET
    got: list[bytes] = []
    with cwredis.ClientThread(lambda job_id, value: got.append(value), url=url) as client:
        client.submit(identity, large)
        started = time.monotonic()
        with pytest.raises(cwredis.ConnectionError) as raised:
            client.wait(timeout=60)
        assert time.monotonic() - started < 30
        assert "mget" in str(raised.value) and "acl.py" in str(raised.value) and "limited-pw" not in str(raised.value)
        with cwredis.Executor(url=url) as executor:
            with pytest.raises(cwredis.ConnectionError, match="mget"):
                list(executor.map(identity, [large], timeout=60))
            admin.execute_command("ACL", "SETUSER", "limited", "+mget")
        client.wait(timeout=60)
    assert got == [large]

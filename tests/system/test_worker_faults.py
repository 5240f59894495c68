"""Worker faults of issue 8, each on real processes.

Each scenario runs a real valkey-server, a real coordinator and real
``python -m cwredis.worker`` processes (the client in the test process),
breaks something the worker must survive, and checks the contract's v2
guarantees through public behaviour only: exit codes, process lifetimes,
callbacks, ``cw-admin --json`` and Redis state named by ``cwredis.keys.Keys``.

1. a worker that cannot reach the server must still stop on SIGTERM/SIGINT
   (exit 0 within 5 s), and still enforce job timeouts;
3. a job process that dies while a process it forked holds its pipes must be
   noticed within a second or so (retry, then ``lost``);
4. a claim that reaches the server late (a stalled TCP flow, delivered after
   the worker gave up on it) must not strand jobs for longer than a lease;
6. a job handed to a parked worker that kills its worker must not run more
   than ``max_attempts`` times.

Network faults are played by :class:`tcp_proxy.TcpProxy` (a thread of the
test process between the worker and the server). Job functions live in
``tests/jobs_faults.py`` and ``tests/helpers.py``; marker files record each
run (pid, ppid, time, ...).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

import cwredis
import helpers
import jobs_faults
from helpers import Outcomes, admin_json, pid_alive, read_markers, start_coordinator, wait_for
from sysutil import closed_port
from tcp_proxy import TcpProxy

pytestmark = pytest.mark.system

#: The contract's bound for any role to stop on SIGTERM/SIGINT.
STOP_BOUND_S = 5.0
#: Scheduling slack added to a bound measured from the test process.
SLACK_S = 1.0


# -------------------------------------------------------------------- fixtures


@pytest.fixture
def secret(home: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A shared secret for this test's client and every process it starts (signing on, as v2 wants)."""
    value = secrets.token_hex(32)
    monkeypatch.setenv("CWREDIS_SECRET", value)
    return value


@pytest.fixture
def proxy(server):
    p = TcpProxy(server.port)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def strays():
    """PIDs of processes a job forked outside the harness's reach: SIGKILLed at teardown if still there."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"cwredis.child" in cmdline and pid_alive(pid):  # a job's fork, not a recycled PID
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


# --------------------------------------------------------------------- helpers


def _client(outcomes: Outcomes, url: str, **options) -> cwredis.ClientThread:
    return cwredis.ClientThread(outcomes.on_result, url=url, error_callback=outcomes.on_error, **options)


@contextlib.contextmanager
def _submitting(url: str, **options):
    """A client that only submits: stopped on leaving, without waiting for outcomes (the server may be gone)."""
    t = _client(Outcomes(), url, **options)
    t.start()
    try:
        yield t
    finally:
        t.stop()


def _exit_code_within(proc, seconds: float, what: str) -> int:
    try:
        return proc.wait(seconds)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"worker still running {seconds:g}s after {what}; log tail:\n"
                             + "\n".join(proc.log().splitlines()[-15:])) from None


def _signal_twice(proc, sig: int = signal.SIGTERM) -> float:
    """Send ``sig`` twice, 0.3 s apart (to a live process only); return when the second was sent."""
    proc.signal(sig)
    time.sleep(0.3)
    if proc.alive():
        proc.signal(sig)
    return time.monotonic()


def _marker_fields(path) -> list[list[str]]:
    return [line.split() for line in read_markers(path)]


# ---------------------------------------- 1. signals and timeouts while Redis is away


@pytest.mark.parametrize("how", ["sigterm-to-pid", "sigint-to-group"])
def test_worker_that_cannot_reach_the_server_stops_on_a_signal(home, procs, secret, how):
    """Fault 1: a worker started against a port nobody listens on keeps retrying;
    one SIGTERM (to its PID) or one Ctrl-C (SIGINT to its process group) ends it
    with exit code 0 within 5 s."""
    worker = procs.worker(f"redis://127.0.0.1:{closed_port()}/0")
    wait_for(lambda: worker.log().strip() or not worker.alive(), timeout=20,
             message="the worker starts and logs something")
    time.sleep(1.0)  # well into its reconnect loop
    assert worker.alive(), f"the worker gave up instead of retrying (exit {worker.returncode}):\n{worker.log()}"
    if how == "sigterm-to-pid":
        worker.signal(signal.SIGTERM)
    else:
        worker.signal_group(signal.SIGINT)
    assert _exit_code_within(worker, STOP_BOUND_S, f"one {how}") == 0, worker.log()


def test_worker_stops_on_two_signals_while_the_server_is_gone_mid_job(server, home, procs, keys, secret, tmp_path):
    """Fault 1: the server is killed while a worker runs a 30 s job; SIGTERM, then a
    second SIGTERM, stop the job (its process gone) and the worker (exit 0), both
    within 5 s of the second signal, although nothing can be recorded."""
    start_coordinator(procs, server, keys)
    worker = procs.worker(server.url)
    marker = tmp_path / "runs"
    with _submitting(server.url, timeout=60) as t:
        t.submit(helpers.marker_sleep_then, str(marker), 1, 30)
        wait_for(lambda: read_markers(marker), timeout=20, message="the job starts")
    job_pid = int(_marker_fields(marker)[0][0])
    server.kill()
    time.sleep(1.5)  # the worker's connections have failed by now
    second_signal_at = _signal_twice(worker)
    code = _exit_code_within(worker, STOP_BOUND_S + SLACK_S, "the second SIGTERM (server gone)")
    assert code == 0, worker.log()
    wait_for(lambda: not pid_alive(job_pid), timeout=max(0.2, STOP_BOUND_S - (time.monotonic() - second_signal_at)),
             message=f"the job's process {job_pid} gone within 5 s of the second signal")


def test_outage_while_records_load_neither_blocks_job_timeouts_nor_signals(
        server, home, procs, keys, secret, proxy, tmp_path):
    """Fault 1, the mid-run shape: the server becomes unreachable right after the
    worker was handed a job whose records (a function it has not seen) it must
    still load, while a job with a 4 s timeout runs beside it (and a third job
    finishes during the outage, with an outcome to record).

    Asserted: the timed-out job's process is killed within timeout + 2 s although
    Redis is away, and SIGTERM twice ends the worker with exit 0 within 5 s.
    """
    timeout_s = 4
    start_coordinator(procs, server, keys)
    worker = procs.worker(proxy.url_for(server), "--concurrency", "3")
    r = server.client()
    wait_for(lambda: r.zcard(keys.idle("default")) == 1, timeout=20, message="the idle worker parks")
    slow_marker, short_marker = tmp_path / "slow", tmp_path / "short"
    trigger = f"cw-outage-trigger-{uuid.uuid4().hex}"
    proxy.go_down_when_reply_contains(trigger.encode())
    with _submitting(server.url, timeout=timeout_s, max_attempts=1) as t:
        t.submit(helpers.marker_sleep_then, str(slow_marker), "slow", 30)
        t.submit(helpers.marker_sleep_then, str(short_marker), "short", 2.5)
        wait_for(lambda: read_markers(slow_marker) and read_markers(short_marker), timeout=20,
                 message="both jobs start")
        t.submit(jobs_faults.echo, trigger)
    # The proxy cuts the worker off the moment the reply carrying the third job reaches
    # it; should this worker never ask for it, cut it off anyway.
    fired = proxy.triggered.wait(5)
    if not fired:
        proxy.go_down()
    slow_pid, _, slow_started = _marker_fields(slow_marker)[0][:3]
    kill_due = float(slow_started) + timeout_s + 2  # wall clock: the marker's time
    problems = []
    while pid_alive(int(slow_pid)) and time.time() < kill_due:
        time.sleep(0.05)
    if pid_alive(int(slow_pid)):
        problems.append(f"the job that ran past its {timeout_s}s timeout was not killed within 2 s of it "
                        "while Redis was away")
    _signal_twice(worker)
    try:
        code = worker.wait(STOP_BOUND_S + SLACK_S)
        if code != 0:
            problems.append(f"the worker exited {code}, not 0")
    except subprocess.TimeoutExpired:
        problems.append("the worker was still running 5 s after the second SIGTERM")
    assert not problems, (f"{'; '.join(problems)} (outage {'right after the hand-off' if fired else 'forced'}); "
                          "worker log tail:\n" + "\n".join(worker.log().splitlines()[-15:]))


# --------------------------------------- 3. a job process dies, its fork holds its pipes


@pytest.mark.parametrize("how", ["fork-sigkill", "multiprocessing-segfault"])
def test_job_process_dying_while_its_fork_holds_the_pipes_is_noticed(
        server, home, procs, keys, secret, tmp_path, strays, how):
    """Fault 3: each run of the job forks a grandchild that sleeps 60 s holding the
    job process's pipes, then the job process dies (SIGKILL, or a segfault after
    starting a fork-based multiprocessing.Process).

    With max_attempts=2 and a 20 s lease (so only the worker itself can notice in
    time): the job fails ``lost`` within 10 s, having run exactly twice; a job
    submitted afterwards completes on the same worker; the grandchildren are gone;
    SIGTERM then ends the worker with exit 0 within 5 s.
    """
    start_coordinator(procs, server, keys, lease_s=20)
    worker = procs.worker(server.url)
    marker = tmp_path / "runs"
    outcomes = Outcomes()
    with _client(outcomes, server.url, max_attempts=2) as t:
        doomed = t.submit(jobs_faults.fork_then_die, str(marker), how)
        deadline = time.monotonic() + 10
        while doomed not in outcomes.errors and time.monotonic() < deadline:
            time.sleep(0.05)
        runs = _marker_fields(marker)
        strays.extend(int(fields[3]) for fields in runs)
        assert doomed in outcomes.errors, (
            f"no outcome 10 s after submitting a job whose process dies at once; it ran {len(runs)} time(s), "
            f"cw-admin show: {admin_json(server.url, 'show', doomed)}")
        after = t.submit(helpers.square, 7)
        t.wait(timeout=15)
        time.sleep(0.5)  # room for a third run to show up
    error = outcomes.errors[doomed][0]
    assert isinstance(error, cwredis.RemoteError)
    assert (error.jobid, error.reason) == (doomed, "lost"), error
    assert len(outcomes.errors[doomed]) == 1 and doomed not in outcomes.results
    runs = _marker_fields(marker)
    assert len(runs) == 2, f"expected exactly max_attempts=2 runs, got {runs}"
    assert outcomes.results == {after: [49]}, (outcomes.results, outcomes.errors)
    for fields in runs:
        grandchild = int(fields[3])
        wait_for(lambda: not pid_alive(grandchild), timeout=5,
                 message=f"the dead job's forked process {grandchild} is gone")
    assert worker.alive(), worker.log()
    worker.signal(signal.SIGTERM)
    assert _exit_code_within(worker, STOP_BOUND_S, "SIGTERM") == 0, worker.log()


# ------------------------------------------------- 4. a claim that reaches Redis late


def test_claim_delivered_after_the_worker_gave_up_on_it_strands_no_job(
        server, home, procs, keys, secret, proxy, tmp_path):
    """Fault 4: the TCP flow that carries a worker's claim stalls (its bytes held,
    not dropped) for longer than the 10 s socket timeout; the worker gives up on
    it and goes on over other connections; then the held bytes reach the server
    and the claim runs, late.

    Five 1 s jobs are submitted during the stall, to a worker of concurrency 1, so
    some are still queued when the late claim runs. Asserted: every job is
    delivered exactly once within run time + one lease (3 s) + slack of the
    late delivery, and at the end no job is ``running`` (cw-admin status).
    """
    lease_s, stall_s, job_s, n_jobs = 3, 11.5, 1.0, 5
    start_coordinator(procs, server, keys, lease_s=lease_s)
    worker = procs.worker(proxy.url_for(server))
    r = server.client()
    wait_for(lambda: r.zcard(keys.idle("default")) == 1, timeout=20, message="the idle worker parks")
    # Taking a job means naming its queue: the next request that does is held.
    proxy.stall_flow_carrying(keys.queue("default").encode())
    outcomes = Outcomes()
    with _client(outcomes, server.url) as t:
        expected: dict[str, int] = {}
        if not proxy.stall_caught.wait(5):  # a worker that claims only when there is work: give it some
            expected.update({t.submit(helpers.sleep_then, i, job_s): i for i in range(n_jobs)})
        assert proxy.stall_caught.wait(10), "precondition: the worker sent no request naming its queue"
        stalled_at = time.monotonic()
        if not expected:
            time.sleep(2)
            expected.update({t.submit(helpers.sleep_then, i, job_s): i for i in range(n_jobs)})
        time.sleep(max(0.0, stalled_at + stall_s - time.monotonic()))
        queued_at_release = r.llen(keys.queue("default"))
        proxy.release()
        released_at = time.monotonic()
        bound_s = n_jobs * job_s + lease_s + 10
        try:
            t.wait(timeout=bound_s)
        except TimeoutError:
            pass
        finished_in = time.monotonic() - released_at
        time.sleep(0.5)  # room for a duplicate to show up
        status = admin_json(server.url, "status")
        stuck = [j for j in expected if j not in outcomes.results and j not in outcomes.errors]
        assert not stuck, (
            f"{len(stuck)} of {n_jobs} jobs not delivered {bound_s:g}s after the stalled claim reached the "
            f"server ({queued_at_release} were queued then); cw-admin status: {status}; "
            f"e.g. {admin_json(server.url, 'show', stuck[0])}")
    outcomes.assert_exactly_once(expected)
    assert finished_in <= bound_s, finished_in
    assert status["running"] == 0, status
    assert worker.alive(), worker.log()


# -------------------------------------- 6. a handed-over job that kills its worker


def _parked_worker(procs, server, r, keys, t: cwredis.ClientThread):
    """A new worker that has run one job (its job process holds helpers' code) and is parked again."""
    worker = procs.worker(server.url)
    t.submit(helpers.square, 3)
    wait_for(lambda: r.zcard(keys.idle("default")) == 1 or not worker.alive(), timeout=20,
             message="the new worker runs a warm-up job and parks")
    return worker


def test_job_handed_to_a_parked_worker_that_kills_it_runs_max_attempts_times(
        server, home, procs, keys, secret, tmp_path):
    """Fault 6: a job is handed over (submit -> a parked, idle worker's inbox), and
    every run of it SIGKILLs its worker at once. A new worker is started each time
    one dies, and is parked (idle, queues empty) before the job comes back to it.

    With max_attempts=3: the job runs exactly 3 times and fails ``lost``; exactly
    three workers died. (test_faults' crash-loop test submits before any worker
    runs, so its job is always claimed, never handed over.)
    """
    start_coordinator(procs, server, keys)
    r = server.client()
    marker = tmp_path / "runs"
    outcomes = Outcomes()
    deaths: list[int] = []
    with _client(outcomes, server.url, max_attempts=3) as t:
        worker = _parked_worker(procs, server, r, keys, t)
        assert worker.alive(), worker.log()
        killer = t.submit(helpers.marker_kill_parent, str(marker))
        deadline = time.monotonic() + 60
        while killer not in outcomes.errors and time.monotonic() < deadline and len(deaths) <= 6:
            if not worker.alive():  # what systemd would do: restart it
                deaths.append(worker.returncode)
                worker = _parked_worker(procs, server, r, keys, t)
            time.sleep(0.05)
        assert killer in outcomes.errors, f"no outcome for the killer job; runs={read_markers(marker)}, deaths={deaths}"
        t.wait(timeout=20)
        time.sleep(1)  # another run would show up now
    error = outcomes.errors[killer][0]
    assert error.reason == "lost", error
    runs = read_markers(marker)
    assert len(runs) == 3, f"max_attempts=3, but the job ran {len(runs)} times: {runs}"
    assert deaths == [-signal.SIGKILL] * 3, deaths
    shown = admin_json(server.url, "show", killer)
    assert (shown["state"], shown["reason"]) == ("failed", "lost"), shown

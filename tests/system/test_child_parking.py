"""Child-level parking (cwredis/worker/parking.py, child_parking.py) on real processes.

After a lone job whose outcome its job process recorded itself, that process
parks on an inbox of its own (listed in the worker's ``parked_children``),
and submit.lua hands the next job straight to it. These tests check the
paths that hand-off adds: the job reaches the parked process, a process
that dies with or without a handed job loses nothing and runs nothing twice,
a cancellation and a timeout reach a job a parked process took, a parked
process thawed after its worker's lease lapsed does not run the stale
hand-off it reads then, a parked process whose code changed on disk runs
nothing (its job is given back and runs fresh), a graceful stop calls parked
processes back and leaves nothing listed, and a job whose signature the
parked process cannot verify is never run by it and ends as the contract
says (``rejected`` after ``max_attempts`` rejections, none of them an attempt).

Each test starts its own worker on a queue of its own beside the module's
server and coordinator (``cluster``).
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from pathlib import Path

import pytest

import cwredis
import jobs_parking
from cwredis.job import STATE, TOKEN
from helpers import admin_json, pid_alive, wait_for
from sysutil import Outcomes, UserModule, unique

pytestmark = pytest.mark.system

JOB_TIMEOUT_S = 60


def start_worker(procs, url: str, queue: str, concurrency: int = 2, secret: str | None = None):
    env = {"CWREDIS_SECRET": secret} if secret else None
    return procs.worker(url, "--queue", queue, "--concurrency", str(concurrency), env=env)


def parked(r, keys, worker) -> list[bytes]:
    """The inboxes of ``worker``'s job processes listed as parked (worker ids are host:pid:suffix)."""
    names = list(r.scan_iter(match=keys.parked_children(f"*:{worker.pid}:*")))
    assert len(names) <= 1, names
    return r.lrange(names[0], 0, -1) if names else []


def lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []


def worker_parked(r, keys, worker) -> bool:
    """Is ``worker`` listed idle on a queue (parked)?"""
    return any(member.split(b":")[1] == str(worker.pid).encode()
               for key in r.scan_iter(match=keys.idle("*")) for member in r.zrange(key, 0, -1))


def lease_left_ms(r, keys, worker) -> float:
    """How long ``worker``'s lease still runs, by the server's clock (inf: not registered)."""
    seconds, micros = r.time()
    deadlines = [score for member, score in r.zrange(keys.workers, 0, -1, withscores=True)
                 if member.split(b":")[1] == str(worker.pid).encode()]
    return deadlines[0] - (seconds * 1000 + micros // 1000) if deadlines else float("inf")


def park_a_child(t, r, keys, worker, marker: Path) -> int:
    """Once the worker parked (so the job is handed to it, not claimed), run one lone job; wait until its
    process is listed parked; that process's pid."""
    wait_for(lambda: worker_parked(r, keys, worker), timeout=10, message="the worker to park")
    job = t.submit(jobs_parking.pid_of, str(marker))
    wait_for(lambda: job in t.outcomes.results, timeout=JOB_TIMEOUT_S, message="the first job's result")
    wait_for(lambda: len(parked(r, keys, worker)) == 1, timeout=10, message="its job process to park")
    return int(lines(marker)[-1])


class Client:
    """A ClientThread and what it was told."""

    def __init__(self, url: str, queue: str, **options) -> None:
        self.outcomes = Outcomes()
        self.thread = cwredis.ClientThread(self.outcomes.on_result, url=url, error_callback=self.outcomes.on_error,
                                           queue=queue, **options)

    def __enter__(self) -> "Client":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.thread.stop()

    def submit(self, fn, *args) -> str:
        return self.thread.submit(fn, *args)


@pytest.mark.parametrize("concurrency", [1, 2])
def test_a_lone_job_goes_to_the_parked_job_process_which_parks_again(cluster, procs, keys, tmp_path, concurrency):
    """With one job process too (the default): its worker, unparked by each hand-off, is re-parked by it."""
    queue, marker = unique("park"), tmp_path / "pids"
    w = start_worker(procs, cluster.url, queue, concurrency)
    r = cluster.redis
    with Client(cluster.url, queue) as t:
        pid = park_a_child(t, r, keys, w, marker)
        [inbox] = parked(r, keys, w)
        for _ in range(3):
            job = t.submit(jobs_parking.pid_of, str(marker))
            wait_for(lambda: job in t.outcomes.results, timeout=JOB_TIMEOUT_S, message="a job's result")
            assert t.outcomes.results[job] == pid
            wait_for(lambda: parked(r, keys, w) == [inbox], timeout=10, message="the process to park again")
    assert lines(marker) == [str(pid)] * 4
    assert not r.exists(inbox)  # each hand-off was read: nothing waits in the inbox


def test_a_job_process_killed_by_a_handed_job_is_retried_and_delivered_once(cluster, procs, keys, tmp_path):
    """The job kills its process after the parked process took it: the worker knew (Took), so it is a lost
    attempt, retried, and its one result is delivered once."""
    queue, pids, runs = unique("park-die"), tmp_path / "pids", tmp_path / "runs"
    w = start_worker(procs, cluster.url, queue)
    with Client(cluster.url, queue) as t:
        park_a_child(t, cluster.redis, keys, w, pids)
        job = t.submit(jobs_parking.die_on_first_run, str(runs))
        wait_for(lambda: job in t.outcomes.results or job in t.outcomes.errors, timeout=JOB_TIMEOUT_S,
                 message="the job's outcome")
        time.sleep(0.5)  # a second delivery would come now
    assert t.outcomes.results == {next(iter(t.outcomes.results)): int(lines(pids)[0]), job: "second run"}
    assert [kind for kind, jid in t.outcomes.calls if jid == job] == ["result"]
    assert len(lines(runs)) == 2
    assert admin_json(cluster.url, "show", job)["attempts"] == 2


def test_a_parked_job_process_that_dies_before_reading_its_job_loses_nothing(cluster, procs, keys, tmp_path):
    """Stopped (SIGSTOP) while parked, it is handed a job it cannot read, then SIGKILLed: the job, in the
    worker's in-flight list but never taken, goes back unrun with its attempt refunded, and runs once."""
    queue, pids, runs = unique("park-kill"), tmp_path / "pids", tmp_path / "runs"
    r = cluster.redis
    w = start_worker(procs, cluster.url, queue)
    with Client(cluster.url, queue) as t:
        pid = park_a_child(t, r, keys, w, pids)
        os.kill(pid, signal.SIGSTOP)
        try:
            job = t.submit(jobs_parking.pid_of, str(runs))
            wait_for(lambda: r.hget(keys.job(job), STATE) == b"running", timeout=10, message="the hand-off")
            assert parked(r, keys, w) == []  # it went to the stopped process's inbox
        finally:
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda: job in t.outcomes.results, timeout=JOB_TIMEOUT_S, message="the job's result")
        time.sleep(0.5)  # a second delivery would come now
    assert t.outcomes.errors == {}
    assert lines(runs) == [str(t.outcomes.results[job])] and t.outcomes.results[job] != pid
    assert [jid for _, jid in t.outcomes.calls].count(job) == 1
    assert admin_json(cluster.url, "show", job)["attempts"] == 1  # the unread hand-off was refunded
    assert "gave back 1 job(s)" in w.log() and w.alive()


def test_a_hand_off_read_by_a_thawed_process_after_its_job_ran_elsewhere_is_not_run_again(cluster, procs, keys,
                                                                                            tmp_path):
    """The worker and its job process are stopped (SIGSTOP) while that process blocks in its read of its inbox:
    the server completes the hand-off, the lease lapses, the coordinator requeues the job and another worker
    runs it. Thawed, the process reads the stale hand-off long after it parked: it confirms it, finds it
    requeued, and runs nothing; the job ran once and was delivered once, and the thawed worker runs the next."""
    queue, pids, runs = unique("park-thaw"), tmp_path / "pids", tmp_path / "runs"
    r = cluster.redis
    frozen = start_worker(procs, cluster.url, queue, concurrency=1)
    # Its lease is the coordinator's 2 s only once it has renewed with that setting (started before the
    # module's coordinator wrote it, it keeps the default 30 s until it has).
    wait_for(lambda: lease_left_ms(r, keys, frozen) < 3_000, timeout=30, message="the worker to hold a 2 s lease")
    with Client(cluster.url, queue) as t:
        pid = park_a_child(t, r, keys, frozen, pids)
        [inbox] = parked(r, keys, frozen)
        frozen.signal_group(signal.SIGSTOP)
        os.kill(pid, signal.SIGSTOP)  # (a job process has a process group of its own)
        try:
            job = t.submit(jobs_parking.pid_of, str(runs))
            wait_for(lambda: r.hget(keys.job(job), STATE) == b"running", timeout=10, message="the hand-off")
            assert not r.exists(inbox), "precondition: the stopped process's blocking read took the job"
            wait_for(lambda: r.hget(keys.job(job), STATE) != b"running", timeout=30,
                     message="the coordinator to requeue the job of the stopped worker")
            other = start_worker(procs, cluster.url, queue, concurrency=1)
            wait_for(lambda: job in t.outcomes.results, timeout=JOB_TIMEOUT_S, message="the job's result")
        finally:
            os.kill(pid, signal.SIGCONT)
            frozen.signal_group(signal.SIGCONT)
        wait_for(lambda: "since requeued; not running it" in frozen.log(), timeout=10,
                 message="the thawed process to drop the stale hand-off")
        time.sleep(0.5)  # a second run or delivery would come now
        other.stop()
        after = t.submit(jobs_parking.pid_of, str(pids))  # only the thawed worker serves the queue now
        wait_for(lambda: after in t.outcomes.results, timeout=JOB_TIMEOUT_S, message="the thawed worker's next job")
    assert lines(runs) == [str(t.outcomes.results[job])] and t.outcomes.results[job] != pid
    assert [jid for _, jid in t.outcomes.calls].count(job) == 1 and t.outcomes.errors == {}
    assert r.hget(keys.job(job), TOKEN) == b"2"  # the second attempt's result: the requeue's
    assert frozen.alive(), frozen.log()


def test_cancelling_a_job_a_parked_process_took_kills_it(cluster, procs, keys, tmp_path):
    queue, pids, runs = unique("park-cancel"), tmp_path / "pids", tmp_path / "runs"
    w = start_worker(procs, cluster.url, queue)
    with Client(cluster.url, queue) as t:
        pid = park_a_child(t, cluster.redis, keys, w, pids)
        job = t.submit(jobs_parking.mark_then_sleep, str(runs), 60)
        wait_for(lambda: runs.exists(), timeout=JOB_TIMEOUT_S, message="the long job to start")
        assert lines(runs) == [str(pid)]  # the parked process took it
        assert t.thread.cancel(job)
        started = time.monotonic()
        wait_for(lambda: not pid_alive(pid), timeout=5, message="the job's process to go")
        assert time.monotonic() - started < 5
        wait_for(lambda: job in t.outcomes.errors, timeout=10, message="the cancelled outcome")
    assert t.outcomes.errors[job].reason == "cancelled"
    shown = admin_json(cluster.url, "show", job)
    assert (shown["state"], shown["reason"]) == ("failed", "cancelled")
    assert lines(runs) == [str(pid)]


def test_the_timeout_of_a_job_a_parked_process_took_is_enforced(cluster, procs, keys, tmp_path):
    """The worker does not wait on a parked process's pipe; a job with a timeout wakes it (attention pipe)."""
    queue, pids, runs = unique("park-timeout"), tmp_path / "pids", tmp_path / "runs"
    w = start_worker(procs, cluster.url, queue)
    with Client(cluster.url, queue) as first:
        pid = park_a_child(first, cluster.redis, keys, w, pids)
    with Client(cluster.url, queue, timeout=1.0, max_attempts=1) as t:
        job = t.submit(jobs_parking.mark_then_sleep, str(runs), 60)
        wait_for(lambda: runs.exists(), timeout=JOB_TIMEOUT_S, message="the long job to start")
        started = time.monotonic()
        wait_for(lambda: job in t.outcomes.errors, timeout=10, message="the timeout")
        assert time.monotonic() - started < 1.0 + 1.0  # its timeout, and slack for a slow machine
    assert lines(runs) == [str(pid)]  # the parked process took it
    assert t.outcomes.errors[job].reason == "timeout"
    assert not pid_alive(pid)


def test_a_parked_process_whose_code_changed_runs_nothing_and_the_job_runs_fresh(cluster, procs, keys, tmp_path,
                                                                                 monkeypatch):
    """Fresh code: the parked process takes the job, finds a module it loaded changed, runs nothing; the worker
    replaces it and gives the job back (refunded), and it runs once, on the new code."""
    queue = unique("park-fresh")
    user = UserModule(tmp_path, monkeypatch, f"fresh_{queue.replace('-', '_')}",
                      "import os\n\ndef f(x):\n    return x + 1, os.getpid()\n")
    mod = user.mod
    w = start_worker(procs, cluster.url, queue)
    with Client(cluster.url, queue) as t:
        first = t.submit(mod.f, 1)
        wait_for(lambda: first in t.outcomes.results, timeout=JOB_TIMEOUT_S, message="the first result")
        wait_for(lambda: len(parked(cluster.redis, keys, w)) == 1, timeout=10, message="its process to park")
        user.edit("import os\n\ndef f(x):\n    return x + 100, os.getpid()\n")
        second = t.submit(mod.f, 1)
        wait_for(lambda: second in t.outcomes.results, timeout=JOB_TIMEOUT_S, message="the second result")
    (value, pid), (fresh, new_pid) = t.outcomes.results[first], t.outcomes.results[second]
    assert (value, fresh) == (2, 101) and new_pid != pid
    assert f"{user.path.name} changed on disk" in w.log()
    assert admin_json(cluster.url, "show", second)["attempts"] == 1  # given back unrun, then run once
    assert cluster.redis.hget(keys.job(second), TOKEN) == b"2"  # the hand-off's attempt, then the claim's


def test_a_graceful_stop_calls_parked_processes_back_and_leaves_nothing_listed(cluster, procs, keys, tmp_path):
    queue, pids, runs = unique("park-stop"), tmp_path / "pids", tmp_path / "runs"
    r = cluster.redis
    w = start_worker(procs, cluster.url, queue)
    with Client(cluster.url, queue) as t:
        pid = park_a_child(t, r, keys, w, pids)
        w.signal(signal.SIGTERM)
        assert w.wait(5 + 1) == 0
        assert not pid_alive(pid)
        assert parked(r, keys, w) == []
        job = t.submit(jobs_parking.pid_of, str(runs))  # nothing of the stopped worker takes it
        time.sleep(0.3)
        assert not runs.exists() and admin_json(cluster.url, "show", job)["state"] == "pending"
        start_worker(procs, cluster.url, queue)
        wait_for(lambda: job in t.outcomes.results, timeout=JOB_TIMEOUT_S, message="the job's result")
    assert len(lines(runs)) == 1


def test_a_job_a_parked_process_cannot_verify_is_not_run_and_ends_rejected(cluster, procs, keys, tmp_path):
    """Signed with another secret: the parked process passes it to its worker unrun; the worker rejects it
    (no attempt used) until it fails ``rejected`` after max_attempts rejections, and quarantines itself."""
    queue, pids, runs = unique("park-forged"), tmp_path / "pids", tmp_path / "runs"
    r = cluster.redis
    w = start_worker(procs, cluster.url, queue)
    with Client(cluster.url, queue) as t:
        park_a_child(t, r, keys, w, pids)
    other = Client(cluster.url, queue, secret=secrets.token_urlsafe(32))
    with other:
        forged = other.submit(jobs_parking.pid_of, str(runs))
        wait_for(lambda: admin_json(cluster.url, "show", forged)["state"] == "failed", timeout=JOB_TIMEOUT_S,
                 message="the job to fail")
    shown = admin_json(cluster.url, "show", forged)
    assert (shown["reason"], shown["attempts"]) == ("rejected", 0)
    assert not runs.exists()
    wait_for(lambda: "quarantined" in w.log(), timeout=10, message="the worker's quarantine")
    assert w.alive()

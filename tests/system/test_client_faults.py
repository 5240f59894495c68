"""Client-side faults on real processes (issue 8, faults 7 and 8).

1. A server that loses its last writes (power loss: the append-only file is
   fsynced once a second), simulated by restoring a copy of its data dir taken
   before the submits and restarting it: every job whose submit returned is
   submitted again by its client within 10 s and delivered exactly once --
   through ``ClientThread`` and ``Executor.map``, and also when the job had
   already run and its outcome was lost with it.
2. Leftovers: a stopped client leaves no outcome list or counter behind.
3. A submit of several batches that the server refuses part way: the batches
   already queued are still delivered, the error names the rest.

The client runs in the test process; server, coordinator and workers are
real processes (``tests/conftest.py``).
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest
import redis

import cwredis
import helpers
from cwredis import config
from cwredis.errors import CwredisError
from cwredis.scripts import Scripts
from helpers import Outcomes, read_markers, start_coordinator, wait_for

pytestmark = pytest.mark.system

#: The contract: a client notices lost jobs within 10 s of reaching the server again.
RESUBMIT_WITHIN_S = 10


def _client(outcomes: Outcomes, server, **options) -> cwredis.ClientThread:
    return cwredis.ClientThread(outcomes.on_result, url=server.url, error_callback=outcomes.on_error, **options)


def _snapshot(server, dest: Path) -> Path:
    """A copy of the server's data dir as of now: what a power loss keeps of the writes that follow."""
    shutil.copytree(server.dir, dest)
    return dest


def _lose_writes_since(server, snapshot: Path) -> None:
    """Power loss: kill -9 the server, put back the data dir of ``snapshot``, start it again."""
    server.kill()
    shutil.rmtree(server.dir)
    shutil.copytree(snapshot, server.dir)
    server.start()


def _job_count(admin: redis.Redis, keys, job_ids) -> int:
    return int(admin.exists(*[keys.job(job_id) for job_id in job_ids]))


# ------------------------------------------------- 1. the server loses its last writes


def test_client_thread_submits_again_the_jobs_a_server_lost_and_delivers_each_once(
        server, home, procs, keys, tmp_path):
    start_coordinator(procs, server, keys)
    admin = server.client()
    outcomes = Outcomes()
    with _client(outcomes, server) as t:
        snapshot = _snapshot(server, tmp_path / "before-submits")
        expected = {t.submit(helpers.square, i): i * i for i in range(100)}
        assert _job_count(admin, keys, expected) == 100
        function_blob = keys.blob(t.submitter.prepare_function(helpers.square)[1])
        _lose_writes_since(server, snapshot)
        assert _job_count(admin, keys, expected) == 0, "the restored server still holds the jobs"
        assert not admin.exists(function_blob), "the restored server still holds the function"
        wait_for(lambda: _job_count(admin, keys, expected) == 100, timeout=RESUBMIT_WITHIN_S,
                 message="the client submits every lost job again")
        assert admin.exists(function_blob), "the jobs came back without their function"
        procs.worker(server.url, "--concurrency", "2")
        t.wait(timeout=60)
        time.sleep(0.5)  # room for a duplicate to show up
    outcomes.assert_exactly_once(expected)


def test_executor_map_survives_a_server_losing_its_last_writes(server, home, procs, keys, tmp_path):
    start_coordinator(procs, server, keys)
    admin = server.client()
    queue = keys.queue(config.DEFAULT_QUEUE)
    with cwredis.Executor(url=server.url) as ex:
        snapshot = _snapshot(server, tmp_path / "before-submits")
        squares = ex.map(helpers.square, range(100), timeout=60)  # all 100 are queued before map returns
        assert admin.llen(queue) == 100
        _lose_writes_since(server, snapshot)
        assert admin.llen(queue) == 0, "the restored server still holds the jobs"
        wait_for(lambda: admin.llen(queue) == 100, timeout=RESUBMIT_WITHIN_S,
                 message="the executor's client submits every lost job again")
        procs.worker(server.url, "--concurrency", "2")
        assert list(squares) == [i * i for i in range(100)]
        assert ex.client.done_count == 100


def test_outcomes_lost_with_their_jobs_are_run_again_and_delivered_once(server, home, procs, keys, tmp_path):
    """Jobs that ran and whose outcomes waited in Redis (too big to publish, and the
    client busy in a callback) when the server lost them: they run again."""
    start_coordinator(procs, server, keys)
    procs.worker(server.url, "--concurrency", "2")
    admin = server.client()
    marker = tmp_path / "runs"
    outcomes = Outcomes()
    held = threading.Event()
    release = threading.Event()

    def on_result(job_id, result):
        outcomes.on_result(job_id, result)
        if result == "hold":  # keeps the results thread here: later outcomes stay in Redis only
            held.set()
            release.wait(60)

    big = "x" * 10_000  # past the 8 KiB publish limit: only a header is published, the list has the rest
    with cwredis.ClientThread(on_result, url=server.url, error_callback=outcomes.on_error) as t:
        expected = {t.submit(helpers.identity, "hold"): "hold"}
        wait_for(held.is_set, timeout=30, message="the results thread is held in a callback")
        snapshot = _snapshot(server, tmp_path / "before-submits")
        lost = {t.submit(helpers.write_marker_then, str(marker), f"{i}-{big}"): f"{i}-{big}" for i in range(20)}
        wait_for(lambda: int(admin.hget(keys.stats, "done") or 0) == 1 + len(lost), timeout=60,
                 message="the 20 jobs are done, their outcomes wait in Redis")
        _lose_writes_since(server, snapshot)
        assert _job_count(admin, keys, lost) == 0, "the restored server still holds the jobs"
        assert admin.llen(keys.results(t.client_id)) == 1, "the restored server holds more than the first outcome"
        release.set()
        t.wait(timeout=30)
        time.sleep(0.5)  # room for a duplicate to show up
    expected.update(lost)
    outcomes.assert_exactly_once(expected)
    assert len(read_markers(marker)) >= 2 * len(lost), "each lost job runs again"


# ------------------------------------------------------------------ 2. leftovers


def test_stopped_clients_leave_no_outcome_list_or_counter(server, home, procs, keys):
    start_coordinator(procs, server, keys)
    procs.worker(server.url, "--concurrency", "2")
    admin = server.client()
    client_ids = []
    for n in range(30):
        if n % 2:
            with cwredis.Executor(url=server.url) as ex:
                assert list(ex.map(helpers.square, range(3))) == [0, 1, 4]
            client_ids.append(ex.client.client_id)
        else:
            outcomes = Outcomes()
            with _client(outcomes, server) as t:
                expected = {t.submit(helpers.square, i): i * i for i in range(3)}
            outcomes.assert_exactly_once(expected)
            client_ids.append(t.client_id)
    left = [cid for cid in client_ids if admin.exists(keys.results(cid), keys.result_seq(cid))]
    assert not left, f"{len(left)} of {len(client_ids)} stopped clients left an outcome list or counter"


# --------------------------------------------- 3. a multi-batch submit failing part way


def test_submit_refused_part_way_delivers_the_batches_already_queued(server, home, procs, keys, monkeypatch):
    # No coordinator: it runs scripts too, and the server refuses them for a moment here.
    admin = server.client()
    real_submit = Scripts.submit
    calls = []

    def submit_refused_from_the_second_batch(self, client, **kwargs):
        calls.append(len(kwargs["jobs"]))
        if len(calls) == 2:  # the server stops allowing scripts between the first batch and the second
            admin.execute_command("ACL", "SETUSER", "default", "-evalsha", "-eval")
        return real_submit(self, client, **kwargs)

    monkeypatch.setattr(Scripts, "submit", submit_refused_from_the_second_batch)
    outcomes = Outcomes()
    with _client(outcomes, server) as t:
        n = 2 * config.SUBMIT_BATCH + 200
        pickled = [t.submitter.pickle_args(helpers.square, (i,), {}) for i in range(n)]
        with pytest.raises((CwredisError, redis.ResponseError)) as refused:
            t.submit_prepared(t.submitter.prepare_function(helpers.square), pickled)
        admin.execute_command("ACL", "SETUSER", "default", "+@all")
        assert calls == [config.SUBMIT_BATCH, config.SUBMIT_BATCH], "a batch was sent after the refusal"
        assert t.outstanding == config.SUBMIT_BATCH, "the client forgot the batch already queued"
        assert any(f"{config.SUBMIT_BATCH} of {n} jobs were queued" in note
                   for note in getattr(refused.value, "__notes__", [])), refused.value
        procs.worker(server.url, "--concurrency", "2")
        t.wait(timeout=60)
        time.sleep(0.5)  # room for a late or duplicate callback to show up
    assert admin.llen(keys.queue(config.DEFAULT_QUEUE)) == 0
    assert int(admin.hget(keys.stats, "done") or 0) == config.SUBMIT_BATCH, "jobs of a refused batch ran"
    assert not outcomes.duplicates() and not outcomes.errors
    assert sorted(v for values in outcomes.results.values() for v in values) == \
        [i * i for i in range(config.SUBMIT_BATCH)]

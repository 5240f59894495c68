"""High availability through Sentinel, on real processes: a primary, two replicas, three sentinels.

1. The primary is killed (SIGKILL) in the middle of a 20,000-job map with
   real workers and a coordinator, all connected by a ``redis+sentinel://``
   URL: a replica is promoted, clients, workers and the coordinator follow
   it, every result arrives exactly once and in order, and no role exits.
2. With both replicas frozen (SIGSTOP) no replica can confirm a submit: it
   does not return (it is not durable yet) until one can, and the job then
   runs and is delivered exactly once. Likewise an outcome: the worker (never
   the job's child, which cannot wait for a replica) records it, and sends it
   again until a replica confirms it.
3. ``cw-admin`` works through the same URL and, like every role, names the
   Sentinel set -- never the password -- when none of the sentinels answers.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Iterator

import pytest

import cwredis
import helpers
import jobs_payloads
from cwredis.keys import DEFAULT_KEYS
from harness import cw_admin, free_port
from helpers import Outcomes
from sentinel_set import SentinelSet

pytestmark = pytest.mark.system

JOBS = 20_000
#: Results the map yields before the primary is killed: it dies with most of the map still to run.
KILL_AFTER = 4_000
#: Bound on the whole map, failover included (it normally takes a few seconds of it).
MAP_TIMEOUT_S = 90
#: Lease timeout of the test's coordinator and workers.
LEASE_S = 5
#: How long the replicas stay frozen: past the client's WAIT timeout (1 s) and its first retries.
FROZEN_S = 3.0


@pytest.fixture
def sentinel_set(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[SentinelSet]:
    deployment = SentinelSet(tmp_path / "sentinel-set")
    try:
        deployment.start()
        yield deployment
    finally:
        if helpers.has_failed(request.node):
            print(deployment.logs())
        deployment.close()


def test_killing_the_primary_mid_map_loses_and_repeats_no_result(sentinel_set, home, procs):
    url = sentinel_set.url
    coordinator = procs.coordinator(url, "--lease-timeout", str(LEASE_S))
    workers = [procs.worker(url, "--concurrency", "2") for _ in range(2)]
    with cwredis.Executor(url=url) as ex:
        results = []
        killed_at = 0.0
        for value in ex.map(helpers.identity, range(JOBS), timeout=MAP_TIMEOUT_S):
            results.append(value)
            if len(results) == KILL_AFTER:
                old_primary = sentinel_set.node_on(sentinel_set.primary_port())  # the primary now
                old_primary.kill()
                killed_at = time.monotonic()
        done, failed = ex.client.done_count, ex.client.failed_count
    assert killed_at, "the map ended before the primary was killed"
    assert results == list(range(JOBS))  # every result, once, in order
    assert (done, failed) == (JOBS, 0), f"{done} results and {failed} errors delivered for {JOBS} jobs"
    new_port = sentinel_set.primary_port()
    assert new_port is not None and new_port != old_primary.port, "no replica was promoted"
    for proc in (coordinator, *workers):
        assert proc.alive(), f"{proc.name} exited {proc.returncode}:\n{proc.log()[-3000:]}"
    # The workers really wrote to the promoted replica (their outcomes: the map could not finish
    # otherwise), and logged riding out the outage rather than failing.
    assert any("reconnected" in w.log() for w in workers), workers[0].log()[-3000:]
    # The coordinator saw the primary move and gave the workers a lease to renew there: none declared dead.
    assert f"to 127.0.0.1:{new_port} (a failover)" in coordinator.log(), coordinator.log()[-3000:]
    assert "stopped renewing its lease" not in coordinator.log(), coordinator.log()[-3000:]
    assert sentinel_set.password not in "".join(p.log() for p in procs.started)


def test_a_submit_no_replica_confirms_does_not_return_until_one_does(sentinel_set, home, procs, caplog):
    caplog.set_level(logging.WARNING, logger="cwredis")
    url = sentinel_set.url
    procs.worker(url)
    outcomes = Outcomes()
    returned: list[tuple[str, float]] = []
    with cwredis.ClientThread(outcomes.on_result, url=url, error_callback=outcomes.on_error) as t:
        for replica in sentinel_set.replicas:
            os.kill(replica.pid, signal.SIGSTOP)
        try:
            frozen_at = time.monotonic()
            submitter = threading.Thread(target=lambda: returned.append(
                (t.submit(helpers.square, 7), time.monotonic() - frozen_at)), daemon=True)
            submitter.start()
            submitter.join(FROZEN_S)
            assert not returned, "a submit returned while no replica could confirm it"
        finally:
            for replica in sentinel_set.replicas:
                os.kill(replica.pid, signal.SIGCONT)
        submitter.join(30)
        assert returned, "the submit did not return once the replicas were back"
        t.wait(timeout=60)
        time.sleep(0.5)  # room for a duplicate callback to show up
    job_id, seconds = returned[0]
    assert seconds >= FROZEN_S
    assert "NotReplicatedError: no replica confirmed a submit of 1 job(s)" in caplog.text, caplog.text
    outcomes.assert_exactly_once({job_id: 49})


def test_an_outcome_no_replica_confirms_is_sent_again_by_the_worker(sentinel_set, home, procs):
    worker = procs.worker(sentinel_set.url)
    outcomes = Outcomes()
    with cwredis.ClientThread(outcomes.on_result, url=sentinel_set.url, error_callback=outcomes.on_error) as t:
        job_id = t.submit(helpers.sleep_then, 7, 0.5)  # returns once a replica has it; then it runs
        for replica in sentinel_set.replicas:
            os.kill(replica.pid, signal.SIGSTOP)
        try:
            time.sleep(FROZEN_S + 1.0)  # the job ends meanwhile; its outcome's WAIT times out
        finally:
            for replica in sentinel_set.replicas:
                os.kill(replica.pid, signal.SIGCONT)
        t.wait(timeout=60)
        time.sleep(0.5)  # room for a duplicate callback to show up
    outcomes.assert_exactly_once({job_id: 7})
    assert "NotReplicatedError: no replica confirmed 1 outcome(s)" in worker.log(), worker.log()[-3000:]
    assert worker.alive()


def test_admin_works_through_the_sentinels_and_masks_the_password(sentinel_set, home):
    done = cw_admin("status", "--json", env={"CWREDIS_URL": sentinel_set.url})
    assert done.returncode == 0, done.stderr
    hosts = ",".join(f"127.0.0.1:{free_port()}" for _ in range(2))  # nothing listens there
    password = sentinel_set.password
    dead = f"redis+sentinel://:{password}@{hosts}/cw/0"
    failed = cw_admin("status", env={"CWREDIS_URL": dead})
    assert failed.returncode != 0
    assert password not in failed.stderr + failed.stdout
    assert f"the Sentinel set {hosts} (service cw)" in failed.stderr, failed.stderr


def test_large_arguments_are_confirmed_by_a_replica_with_their_submit(sentinel_set, home, procs):
    """Large arguments are written beside submit.lua (staged), and the WAIT after the batch covers them:
    once a submit returns, a replica holds each job's arguments key. A worker then runs every job with
    its own arguments, once."""
    payloads = [bytes([i]) * (1 << 20) for i in range(3)]
    with cwredis.Executor(url=sentinel_set.url) as ex:
        futures = [ex.submit(jobs_payloads.fingerprint, payload, i) for i, payload in enumerate(payloads)]
        replicas = [replica.client() for replica in sentinel_set.replicas]
        for future in futures:
            key = DEFAULT_KEYS.staged_args(future.job_id)
            assert any(replica.exists(key) for replica in replicas), f"no replica holds {key}"
        procs.worker(sentinel_set.url)
        got = [future.result(MAP_TIMEOUT_S) for future in futures]
    assert [g[1:] for g in got] == [(1 << 20, hashlib.sha256(p).hexdigest(), i) for i, p in enumerate(payloads)]

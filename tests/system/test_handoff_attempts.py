"""Attempts count runs started: a job handed to a worker that died before reading it uses none.

A worker killed while parked stays listed as parked until its lease runs out,
so submit.lua goes on handing it new jobs -- charged an attempt at hand-off,
as a parked worker starts them the moment it reads them. This one never reads
them. The coordinator's sweep of the dead worker finds them still in its
inbox: never started, so it refunds their charge, and the next worker runs
them. (Before, such a job with ``max_attempts=1`` failed ``lost`` without
ever having run; in kill storms, jobs were failed ``lost`` after fewer runs
than ``max_attempts``.)
"""

from __future__ import annotations

import pytest

import cwredis
import helpers
from helpers import Outcomes, admin_json, start_coordinator, wait_for

pytestmark = pytest.mark.system


def test_a_job_handed_to_a_killed_parked_worker_uses_no_attempt(server, home, procs, keys):
    start_coordinator(procs, server, keys)  # a short lease: the dead worker is swept within seconds
    r = server.client()
    outcomes = Outcomes()
    with cwredis.ClientThread(outcomes.on_result, url=server.url, error_callback=outcomes.on_error,
                              max_attempts=1) as t:
        doomed = procs.worker(server.url)
        wait_for(lambda: r.zcard(keys.idle("default")) == 1 or not doomed.alive(), timeout=20,
                 message="the worker parks")
        assert doomed.alive(), doomed.log()
        (dead_id,) = [w.decode() for w in r.zrange(keys.idle("default"), 0, -1)]
        doomed.kill()  # SIGKILL, by PID: its lease and its parking outlive it
        job_id = t.submit(helpers.square, 4)
        fields = r.hgetall(keys.job(job_id))
        assert fields[b"s"] == b"running" and fields[b"w"] == dead_id.encode()
        assert fields[b"n"] == b"1"  # charged at hand-off
        assert r.llen(keys.inbox(dead_id)) == 1  # and never read
        procs.worker(server.url)
        t.wait(timeout=30)  # the dead worker's lease runs out, the sweep requeues the job, the new worker runs it
    assert not outcomes.errors, {j: [e.reason for e in errs] for j, errs in outcomes.errors.items()}
    assert outcomes.results == {job_id: [16]}
    shown = admin_json(server.url, "show", job_id)
    assert (shown["state"], shown["attempts"]) == ("done", 1), shown

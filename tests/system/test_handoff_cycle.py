"""One reconciliation must not start a cycle of give-backs (seen in the latency benchmark).

One job at a time, a parked worker with two job processes: after a single
reconciliation (an outage's end, a stray found), every following job was
given back by the worker ("gave back 1 job(s) it had taken but was not
running", about every 0.5 s, for ever) and ran half a second late. The
reconciliation unparked the worker while its fetcher was blocked on the inbox,
the claim in the same round trip parked it again, and the next hand-off was
read by that blocking read, begun before the reconciliation: dropped as
stale, given back at the loop's next turn -- by a reconciliation that again
came while the fetcher was blocked in a read begun before it. Here a real
worker (its loop, fetcher and lease threads, two job processes) on a real
server is reconciled once, then runs jobs one at a time.
"""

from __future__ import annotations

import logging
import threading

import pytest

from cwredis import ClientThread
from cwredis.worker import Worker
from helpers import TEST_SECRET, Outcomes, square, wait_for

pytestmark = pytest.mark.system

JOBS = 10


def test_one_reconciliation_does_not_start_a_cycle_of_give_backs(server, home, keys, caplog):
    caplog.set_level(logging.WARNING, logger="cwredis.worker")
    r = server.client()
    worker = Worker(server.url, concurrency=2, secret=TEST_SECRET.encode())
    thread = threading.Thread(target=worker.run, name="worker", daemon=True)
    thread.start()
    outcomes = Outcomes()
    done = threading.Event()

    def on_result(job_id, result):
        outcomes.on_result(job_id, result)
        done.set()

    try:
        with ClientThread(on_result, url=server.url, error_callback=outcomes.on_error) as t:
            def one_job(x: int) -> str:
                done.clear()
                job_id = t.submit(square, x)
                assert done.wait(20), f"job {x} got no callback within 20 s"
                return job_id

            one_job(0)  # the job processes are up
            wait_for(lambda: r.zscore(keys.idle("default"), worker.worker_id) is not None, timeout=10,
                     message="the worker parks")
            worker.intake.needs_reconcile = True  # what Worker.link_ok asks for when an outage ends
            worker._stop.wake()
            wait_for(lambda: not worker.intake.needs_reconcile, timeout=10, message="the reconciliation runs")
            caplog.clear()
            ids = [one_job(x) for x in range(1, JOBS + 1)]
    finally:
        worker._stop.on_signal()  # graceful: the loop stops its job processes and unregisters
        thread.join(15)
    assert not thread.is_alive(), "the worker did not stop"
    gave_back = [rec.getMessage() for rec in caplog.records if "gave back" in rec.getMessage()]
    assert gave_back == [], gave_back
    assert not outcomes.errors and outcomes.duplicates() == {}
    assert {j: outcomes.results[j] for j in ids} == {j: [x * x] for j, x in zip(ids, range(1, JOBS + 1))}
    # Each ran as handed: its first attempt's token, never given back and claimed again.
    assert [r.hget(keys.job(j), "k") for j in ids] == [b"1"] * JOBS

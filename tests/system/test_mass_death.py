"""A rack dying at once: hundreds of workers stop renewing their leases together (issue 13, item 1).

The 300 workers are lease holders registered by the test through claim.lua
-- exactly what a worker's claim does -- each holding one claimed job, and
then never renewing, as if their node lost power. The coordinator is a real
process; it must put every job back on its queue within two lease timeouts,
and a real worker then runs each of them once.
"""

from __future__ import annotations

import time

import pytest

import cwredis
import helpers
from cwredis.scripts import Scripts
from helpers import Outcomes, start_coordinator, wait_for

pytestmark = pytest.mark.system

DEAD_WORKERS = 300
LEASE_S = 2.0


def test_three_hundred_workers_dying_at_once_are_all_recovered_within_two_leases(server, home, procs, keys):
    queue = "rack"
    outcomes = Outcomes()
    r = server.client()
    start_coordinator(procs, server, keys, lease_s=LEASE_S)
    scripts = Scripts(r, keys)
    with cwredis.ClientThread(outcomes.on_result, url=server.url, error_callback=outcomes.on_error,
                              queue=queue) as t:
        expected = {t.submit(helpers.square, i): i * i for i in range(DEAD_WORKERS)}
        for n in range(DEAD_WORKERS):  # each takes one job and then dies with it
            reply = scripts.parse_claim(scripts.claim(r, worker_id=f"rack-node-{n}", queues=[queue],
                                                      lease_ms=int(LEASE_S * 1000), max_count=1))
            assert len(reply.claimed) == 1
        died = time.monotonic()
        assert r.llen(keys.queue(queue)) == 0 and r.zcard(keys.workers) >= DEAD_WORKERS
        wait_for(lambda: r.llen(keys.queue(queue)) == DEAD_WORKERS, timeout=4 * LEASE_S + 10,
                 message="every job of the dead rack back on its queue")
        recovered_after = time.monotonic() - died
        assert recovered_after <= 2 * LEASE_S + 0.5, f"recovered only after {recovered_after:.1f}s"
        procs.worker(server.url, "--queue", queue, "--concurrency", "2")
        t.wait(timeout=120)
    outcomes.assert_exactly_once(expected)
    # Swept workers are forgotten soon after (a sweep does not keep visiting hundreds of dead ones).
    wait_for(lambda: not any(w.startswith(b"rack-node-") for w in r.zrange(keys.workers, 0, -1)),
             timeout=4 * LEASE_S + 10, message="the dead workers to be forgotten")

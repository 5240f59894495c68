"""An idle cluster writes next to nothing (issue 13, item 2): at most 16 B/s of append-only file per idle worker.

A parked worker's blocking read of its inbox times out every second; it used
to claim then, which re-parked it (about 340 B/s per idle worker). Now it only
looks (reads) whether it is still parked with its queues empty. Its
heartbeats used to rewrite its whole description and its time to live each
time (about 430 B, three times a lease: 43 B/s at the default 30 s lease); a
heartbeat now writes the lease alone when nothing changed.

What an idle worker writes is heartbeats, three per lease, so its bytes per
second scale with 1 / lease. The test runs a 3 s lease (a heartbeat a second:
several in a short window) and scales the measured rate to the default 30 s
lease, where the target applies. ``benchmarks/run.py --only idle_workers``
measures it at the real 30 s lease for 1,000 workers.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cwredis import config
from helpers import start_coordinator, wait_for

pytestmark = pytest.mark.system

IDLE_WORKERS = 3
LEASE_S = 3.0
WINDOW_S = 6.0  # six heartbeats per worker
TARGET_B_PER_S_AT_DEFAULT_LEASE = 16


def aof_bytes(data_dir: Path) -> int:
    return sum(p.stat().st_size for p in data_dir.rglob("*.aof*") if p.is_file())


def test_an_idle_worker_writes_at_most_16_bytes_a_second_at_the_default_lease(server, home, procs, keys):
    start_coordinator(procs, server, keys, lease_s=LEASE_S)
    r = server.client()
    for _ in range(IDLE_WORKERS):
        procs.worker(server.url)
    wait_for(lambda: len(r.keys(keys.parked("*"))) == IDLE_WORKERS, timeout=30,
             message="every worker parked")
    time.sleep(2 * LEASE_S / config.RENEWALS_PER_LEASE)  # past the start-up writes and first heartbeats
    deadlines = dict(r.zrange(keys.workers, 0, -1, withscores=True))
    before = aof_bytes(server.dir)
    time.sleep(WINDOW_S)
    written = aof_bytes(server.dir) - before
    renewed = {w: score - deadlines[w] for w, score in r.zrange(keys.workers, 0, -1, withscores=True)}
    # They did heartbeat all along (a worker that stopped renewing would write nothing, and pass).
    assert len(renewed) == IDLE_WORKERS
    assert all(ms >= (WINDOW_S - LEASE_S / 2) * 1000 for ms in renewed.values()), renewed
    per_worker_per_s = written / IDLE_WORKERS / WINDOW_S
    at_default_lease = per_worker_per_s * LEASE_S / config.DEFAULT_LEASE_S
    print(f"\nidle AOF writes: {written} bytes in {WINDOW_S:g}s for {IDLE_WORKERS} workers at a {LEASE_S:g}s lease "
          f"({per_worker_per_s:.0f} B/s per worker; {at_default_lease:.1f} B/s at the default lease)")
    assert at_default_lease <= TARGET_B_PER_S_AT_DEFAULT_LEASE, f"{written} bytes of AOF in {WINDOW_S:g}s"

"""An idle cluster writes next to nothing (issue 13, item 2, the re-parking part).

A parked worker's blocking read of its inbox times out every second; it used
to claim then, which re-parked it: a transaction of about 340 bytes a second
in the append-only file, per idle worker (1.1 GB an hour for 1,000). Now it
only looks (reads) whether it is still parked with its queues empty.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from helpers import start_coordinator, wait_for

pytestmark = pytest.mark.system

IDLE_WORKERS = 3
WINDOW_S = 5.0


def aof_bytes(data_dir: Path) -> int:
    return sum(p.stat().st_size for p in data_dir.rglob("*.aof*") if p.is_file())


def test_idle_workers_do_not_write_to_the_append_only_file_every_second(server, home, procs, keys):
    # The default 30 s lease: heartbeats every 10 s, at most one per worker in the window.
    start_coordinator(procs, server, keys, lease_s=30)
    r = server.client()
    for _ in range(IDLE_WORKERS):
        procs.worker(server.url)
    wait_for(lambda: len(r.keys(keys.parked("*"))) == IDLE_WORKERS, timeout=30,
             message="every worker parked")
    time.sleep(1.5)  # past the first block timeouts and the start-up writes
    before = aof_bytes(server.dir)
    time.sleep(WINDOW_S)
    written = aof_bytes(server.dir) - before
    per_worker_per_s = written / IDLE_WORKERS / WINDOW_S
    print(f"\nidle AOF writes: {written} bytes in {WINDOW_S:g}s for {IDLE_WORKERS} workers "
          f"({per_worker_per_s:.0f} B/s per worker)")
    # Re-parking every second wrote about 340 B/s per worker; one heartbeat (about 330 B) may land.
    assert written <= IDLE_WORKERS * 400, f"{written} bytes of AOF in {WINDOW_S:g}s from idle workers"

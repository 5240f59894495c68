"""Faults of the server's state, on real processes.

1. A server at its ``maxmemory`` (``noeviction``): ``submit`` raises
   ``cwredis.ServerFullError`` with nothing of the refused call queued, memory
   stays near the limit, and the worker and coordinator go on draining; once
   drained, a submit succeeds again.
"""

from __future__ import annotations

import time

import pytest

import cwredis
import helpers
from helpers import Outcomes, start_coordinator, wait_for

pytestmark = pytest.mark.system

#: How long a test waits for its jobs to be delivered.
JOB_TIMEOUT_S = 60
#: Room above the server's memory use when the test starts: the limit the test sets.
ROOM_BYTES = 2 * 1024 * 1024
#: Padding per job while filling memory: a few hundred jobs reach the limit.
PADDING_BYTES = 16 * 1024


def _client(outcomes: Outcomes, server, **options) -> cwredis.ClientThread:
    return cwredis.ClientThread(outcomes.on_result, url=server.url, error_callback=outcomes.on_error, **options)


def _job_ids(r, keys) -> set[str]:
    """Ids of every job record in the server."""
    prefix = keys.job("")
    return {key.decode()[len(prefix):] for key in r.scan_iter(match=keys.job("*"), count=1000)}


def _used_memory(r) -> int:
    return int(r.info("memory")["used_memory"])


# -------------------------------------------------------------- 1. memory limit


def test_server_at_its_memory_limit_refuses_submits_whole_and_the_cluster_drains(server, home, procs, keys):
    r = server.client()
    coordinator = start_coordinator(procs, server, keys)
    worker = procs.worker(server.url, "--concurrency", "2")
    limit = _used_memory(r) + ROOM_BYTES
    r.config_set("maxmemory-policy", "noeviction")
    r.config_set("maxmemory", limit)
    outcomes = Outcomes()
    accepted: dict[str, int] = {}
    padding = b"x" * PADDING_BYTES
    with _client(outcomes, server) as t:
        # Faster than the worker drains (each job sleeps), until the server refuses one.
        refused: cwredis.ServerFullError | None = None
        for i in range(20 * ROOM_BYTES // PADDING_BYTES):
            try:
                accepted[t.submit(lambda pad, x: (time.sleep(0.02), x)[1], padding, i)] = i
            except cwredis.ServerFullError as exc:
                refused = exc
                break
        used = _used_memory(r)
        assert refused is not None, (
            f"{len(accepted)} submits of {PADDING_BYTES} bytes all accepted; used memory {used} bytes, "
            f"limit {limit}")
        assert isinstance(refused, RuntimeError)
        assert "maxmemory" in str(refused), str(refused)
        assert used < 1.5 * limit, f"used memory {used} bytes ran past the limit of {limit}"
        # Nothing of the refused call: every job record and queue entry is one whose submit returned.
        assert _job_ids(r, keys) == set(accepted)
        queued = {entry.decode() for entry in r.lrange(keys.queue("default"), 0, -1)}
        assert queued <= set(accepted), queued - set(accepted)

        # The cluster drains at the limit: every accepted job runs, one callback each.
        t.wait(timeout=JOB_TIMEOUT_S)
        outcomes.assert_exactly_once(accepted)
        # The worker (worker.py, being rebuilt elsewhere) must not exit at the limit: its scripts run
        # (allow-oom), and what it asks connection.is_transient about an OOM reply is now "transient".
        assert worker.alive(), f"worker exited {worker.returncode} at the memory limit:\n{worker.log()[-3000:]}"
        assert coordinator.alive(), f"coordinator exited {coordinator.returncode}:\n{coordinator.log()[-3000:]}"

        # Drained: submits succeed again.
        def submit_again() -> str | None:
            try:
                return t.submit(helpers.square, 7)
            except cwredis.ServerFullError:
                return None

        again = wait_for(submit_again, timeout=20, interval=0.2, message="a submit succeeds after the drain")
        t.wait(timeout=JOB_TIMEOUT_S)
    assert outcomes.results[again] == [49]
    assert worker.alive() and coordinator.alive()

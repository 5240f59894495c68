"""Faults of the server's state, on real processes: a server at its memory limit, and poison in the keyspace.

1. A server at its ``maxmemory`` (``noeviction``): ``submit`` raises
   ``cwredis.ServerFullError`` with nothing of the refused call queued, memory
   stays near the limit, and the worker and coordinator go on draining; once
   drained, a submit succeeds again.
2. A queue entry naming a key of the wrong type: the worker drops it with a
   warning and runs the other jobs, exactly once.
3. An expired worker whose in-flight list holds such an entry: the
   coordinator still recovers every other expired worker and promotes delayed
   jobs.
"""

from __future__ import annotations

import time
import uuid

import pytest

import cwredis
import helpers
from cwredis.scripts import Scripts
from cwredis.script_types import Requeue
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


# ---------------------------------------------------- 2. a wrong-type queue entry


def test_queue_entry_naming_a_key_of_the_wrong_type_is_dropped_and_the_worker_goes_on(
        server, home, procs, keys):
    r = server.client()
    queue = f"poison-{uuid.uuid4().hex[:8]}"
    poison_id = f"poison-{uuid.uuid4().hex[:8]}"
    r.rpush(keys.job(poison_id), "not", "a", "hash")  # its "job record" is a LIST
    outcomes = Outcomes()
    with _client(outcomes, server, queue=queue) as t:
        before = {t.submit(helpers.square, i): i * i for i in range(3)}
        r.rpush(keys.queue(queue), poison_id)  # the oldest end: taken first
        after = {t.submit(helpers.square, i): i * i for i in range(3, 6)}
        worker = procs.worker(server.url, "--queue", queue, "--concurrency", "2")
        t.wait(timeout=JOB_TIMEOUT_S)
        time.sleep(0.5)  # room for a duplicate callback to show up
    outcomes.assert_exactly_once({**before, **after})
    assert worker.alive(), f"worker exited {worker.returncode}:\n{worker.log()[-3000:]}"
    log = worker.log()
    warnings = [line for line in log.splitlines() if poison_id in line]
    assert any("WARNING" in line for line in warnings), f"no warning naming {poison_id}:\n{log[-3000:]}"
    assert "Traceback" not in log, log[-3000:]
    in_flight = [entry for key in r.scan_iter(match=keys.inflight("*")) for entry in r.lrange(key, 0, -1)]
    assert poison_id.encode() not in in_flight and r.llen(keys.queue(queue)) == 0
    assert r.type(keys.job(poison_id)) == b"list"  # dropped from the queue, the key itself left alone


# ------------------------------------------ 3. an expired worker holding poison


def test_sweep_recovers_other_expired_workers_and_promotes_past_a_poisoned_in_flight_list(
        server, home, procs, keys):
    r = server.client()
    scripts = Scripts(r, keys)
    queue = f"sweep-{uuid.uuid4().hex[:8]}"
    poison_id = f"poison-{uuid.uuid4().hex[:8]}"
    seconds, micros = r.time()
    now_ms = seconds * 1000 + micros // 1000
    outcomes = Outcomes()
    with _client(outcomes, server, queue=queue) as t:
        expected = {t.submit(helpers.square, i): i * i for i in range(4)}
        # Two workers that claimed and died a minute ago; the poisoned one expired first, so a
        # sweep that stops at an error never reaches the other.
        scripts.claim(r, worker_id="dead-poisoned", queues=[queue], lease_ms=1000, max_count=1,
                      now_ms=now_ms - 60_000)
        r.rpush(keys.job(poison_id), "not", "a", "hash")
        r.lpush(keys.inflight("dead-poisoned"), poison_id)
        claimed = scripts.parse_claim(scripts.claim(
            r, worker_id="dead-clean", queues=[queue], lease_ms=1000, max_count=3, now_ms=now_ms - 50_000)).claimed
        # The last job it held timed out before it died: a retry waiting in the delayed set, due now.
        retry = claimed[-1]
        assert scripts.requeue(r, worker_id="dead-clean", jobs=[Requeue(retry.id, retry.token, queue, "retry", 1000)],
                               now_ms=now_ms - 50_000) == [1]
        assert r.zscore(keys.delayed, retry.id) is not None
        coordinator = start_coordinator(procs, server, keys)
        worker = procs.worker(server.url, "--queue", queue)
        t.wait(timeout=JOB_TIMEOUT_S)
        time.sleep(0.5)  # room for a duplicate callback to show up
    outcomes.assert_exactly_once(expected)
    assert r.zscore(keys.delayed, retry.id) is None
    assert coordinator.alive(), f"coordinator exited {coordinator.returncode}:\n{coordinator.log()[-3000:]}"
    assert worker.alive(), worker.log()[-3000:]
    wait_for(lambda: r.llen(keys.inflight("dead-poisoned")) == 0, timeout=10,
             message="the poisoned in-flight list is swept")
    log = coordinator.log()
    assert any("dead-poisoned" in line and "WARNING" in line and "dropped" in line for line in log.splitlines()), \
        log[-3000:]


def test_roles_warn_when_the_server_is_near_its_connection_limit(server, home, procs):
    """Connections run out before CPU does: a worker starting near maxclients says so, with the fix."""
    admin = server.client()
    others = [server.client() for _ in range(8)]  # the rest of a busy cluster
    for other in others:
        other.ping()
    limit = int(admin.info("clients")["connected_clients"]) + 2  # room for the worker's first connections
    admin.config_set("maxclients", limit)
    try:
        worker = procs.worker(server.url)
        wait_for(lambda: "connections in use" in worker.log(), timeout=20,
                 message=f"the worker to warn about the connection budget:\n{worker.log()}")
        assert "maxclients" in worker.log() and "ulimit -n" in worker.log()
    finally:
        admin.config_set("maxclients", 10000)
        for other in others:
            other.close()


"""A Valkey Cluster as the server: any node's URL works, and a shard failover loses nothing.

One loopback cluster per module (3 primaries, 3 replicas, see
``tests/cluster_harness.py``). The namespace's keys all live in the slot of
its hash tag; the URLs given to the roles name other nodes on purpose: a
primary that does not serve that slot, and a replica. The failover tests
move the slot to another node (the last one killing its primary) and so come last.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterator

import pytest

import cwredis
from cluster_harness import LoopbackCluster
from cwredis.keys import Keys
from harness import Procs, admin_json
from helpers import Outcomes, boom, square, square_after, wait_for
from sysutil import unique

#: Bound on one smoke run's jobs, and on the failover test's whole map.
JOB_TIMEOUT_S = 60
#: Jobs of the failover test, and how long each runs.
FAILOVER_JOBS, FAILOVER_JOB_S = 60, 0.1

#: Signs of the issue's symptoms in a role's log: a redirection or slot error surfacing, a crash.
SYMPTOMS = re.compile(r"MOVED|CROSSSLOT|Traceback")


@pytest.fixture(scope="module")
def valkey_cluster(tmp_path_factory: pytest.TempPathFactory, module_home: Path) -> Iterator[LoopbackCluster]:
    nodes = LoopbackCluster(tmp_path_factory.mktemp("cluster"))
    nodes.start()
    try:
        yield nodes
    finally:
        nodes.close()


def urls(valkey_cluster: LoopbackCluster) -> dict[str, str]:
    """URLs of nodes that do not serve the namespace's slot: a primary (without and with /0) and a replica."""
    owner = valkey_cluster.owner_of(Keys().hash_tag)
    other = next(node for node in valkey_cluster.primaries if node is not owner)
    replica = valkey_cluster.replica_of(other)
    return {"other-primary": other.url, "other-primary/0": other.url + "/0", "replica/0": replica.url + "/0"}


@pytest.mark.parametrize("form", ["other-primary", "other-primary/0", "replica/0"])
def test_every_role_works_through_any_node(valkey_cluster, form, tmp_path):
    """Coordinator, worker, Executor.map, ClientThread callbacks (a failing job among them) and
    cw-admin status, all given the URL of a node that does not serve the slot: every result
    arrives once, the failure as an error, status counts it, and no role logs a redirection or a crash."""
    url = urls(valkey_cluster)[form]
    queue = unique("cluster")
    failed_before = admin_json(url, "status")["failed"]
    with Procs(tmp_path / "logs") as procs:
        coordinator = procs.coordinator(url, "--lease-timeout", "2")
        worker = procs.worker(url, "--queue", queue, "--concurrency", "2")
        with cwredis.Executor(url=url, queue=queue) as executor:
            assert list(executor.map(square, range(20), timeout=JOB_TIMEOUT_S)) == [x * x for x in range(20)]
        seen = Outcomes()
        with cwredis.ClientThread(seen.on_result, url=url, error_callback=seen.on_error, queue=queue,
                                  max_attempts=1) as client:
            ok = {client.submit(square, x): x * x for x in range(5)}
            bad = client.submit(boom, "on purpose")
            client.wait(timeout=JOB_TIMEOUT_S)
        status = admin_json(url, "status")
        logs = coordinator.log() + worker.log()
    assert seen.results == {job: [value] for job, value in ok.items()}
    assert list(seen.errors) == [bad] and len(seen.errors[bad]) == 1
    assert "on purpose" in str(seen.errors[bad][0])
    assert status["failed"] == failed_before + 1, status
    assert status["queues"][queue]["pending"] == 0, status
    assert not SYMPTOMS.search(logs), logs


@pytest.mark.parametrize("failover", ["manual", "kill"])
def test_a_shard_failover_mid_map_loses_nothing(valkey_cluster, failover, tmp_path):
    """The primary serving the namespace hands over to its replica during a map with real workers
    and coordinator -- ``manual``: CLUSTER FAILOVER (the old primary turns replica: READONLY,
    MOVED, ended subscriptions); ``kill``: SIGKILL (lost connections, then the replica's
    election) -- and every job's result arrives exactly once with the right value."""
    url = urls(valkey_cluster)["other-primary"]
    owner = valkey_cluster.owner_of(Keys().hash_tag)
    successor = next(node for node in valkey_cluster.nodes if node.alive() and node is not owner
                     and valkey_cluster.role(node) == "slave" and owner.port in _primary_port(node))
    queue = unique("failover")
    seen = Outcomes()
    with Procs(tmp_path / "logs") as procs:
        procs.coordinator(url, "--lease-timeout", "2")
        for _ in range(2):
            procs.worker(url, "--queue", queue, "--concurrency", "2")
        with cwredis.ClientThread(seen.on_result, url=url, error_callback=seen.on_error, queue=queue) as client:
            expected = {client.submit(square_after, x, FAILOVER_JOB_S): x * x for x in range(FAILOVER_JOBS)}
            wait_for(lambda: seen.count() >= FAILOVER_JOBS // 4, timeout=JOB_TIMEOUT_S,
                     message=f"a quarter of the results before the failover:\n{procs.dump_logs()}")
            if failover == "kill":
                owner.kill()
            else:
                successor.client().execute_command("CLUSTER", "FAILOVER")
            assert seen.count() < FAILOVER_JOBS, "the map ended before the failover"
            client.wait(timeout=JOB_TIMEOUT_S)
    wait_for(lambda: valkey_cluster.owner_of(Keys().hash_tag) is successor, timeout=10,
             message="every live node names the replica as the slot's primary")
    seen.assert_exactly_once(expected)


def _primary_port(replica) -> list[int]:
    """The port of the primary ``replica`` follows, as a one-element list (empty if none)."""
    port = replica.client().info("replication").get("master_port")
    return [int(port)] if port else []

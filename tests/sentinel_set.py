"""A Sentinel deployment on loopback for tests and benchmarks: a primary, replicas, sentinels.

Built on the shared harness (``harness.Server``): every process is the
wheel's ``valkey-server`` (sentinels with ``--sentinel``) on a free
127.0.0.1 port, each with its own directory, stopped by its PID. Passwords
never go on a command line: data nodes read their config on stdin (as
``harness.Server`` does); a sentinel must be able to rewrite its config, so
it gets a file (mode 0600) in its own directory.

Every config is the commented example in ``deploy/sentinel/`` with only
addresses, ports, directories, the password and the sentinels' timings
replaced, so the tests run the deployment users copy (append-only file and
``min-replicas-to-write 1`` included). The timings are short so that a
failover takes about two seconds: a sentinel calls the primary down after
``DOWN_AFTER_MS`` without an answer.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from pathlib import Path

import redis

from cwredis.server import find_server_binary
from harness import SERVER_STOP_TIMEOUT_S, Server, free_port, log_tail

#: The commented example deployment these configs are made from (so the tests run what it says).
EXAMPLE_DIR = Path(__file__).resolve().parents[1] / "deploy" / "sentinel"
#: The example's placeholder password.
EXAMPLE_PASSWORD = "CHANGE-ME-to-a-long-random-string"
SERVICE = "cw"
#: A sentinel calls the primary subjectively down after this long without an answer (the example: 5 s).
DOWN_AFTER_MS = 1000
#: Bounds a failover attempt; a failed one is retried after twice this (the example: 60 s).
FAILOVER_TIMEOUT_MS = 4000
#: How long the replicas get to sync and the sentinels to find each other (normally about 2 s).
SET_START_TIMEOUT_S = 30.0


def from_example(name: str, password: str, settings: dict[str, str], extra: list[str]) -> str:
    """The example config ``name`` with each directive named in ``settings`` (its first one or two words)
    replaced by the value given, the placeholder password replaced, and ``extra`` lines appended."""
    lines = []
    for line in (EXAMPLE_DIR / name).read_text().splitlines():
        words = line.split()
        if words and not line.startswith("#"):
            key = " ".join(words[:2]) if words[0] == "sentinel" else words[0]
            line = settings.get(key, line)
        lines.append(line.replace(EXAMPLE_PASSWORD, f'"{password}"'))
    return "\n".join(lines + extra) + "\n"


class DataNode(Server):
    """A primary or replica: the harness's server, configured from deploy/sentinel's example."""

    def __init__(self, base_dir: Path, password: str, primary_port: int | None) -> None:
        super().__init__(base_dir)
        self.password = password
        self.url = f"redis://:{password}@127.0.0.1:{self.port}/0"
        self.primary_port = primary_port

    def config(self) -> str:
        settings = {"bind": "bind 127.0.0.1", "port": f"port {self.port}",
                    "replicaof": f"replicaof 127.0.0.1 {self.primary_port}"}
        # Loopback speed-ups the example does without: sync replicas without a disk copy, at once.
        extra = [f'dir "{self.dir}"', 'save ""', "repl-diskless-sync yes", "repl-diskless-sync-delay 0"]
        name = "primary.conf" if self.primary_port is None else "replica.conf"
        return from_example(name, self.password, settings, extra)


class SentinelProc:
    """One sentinel: ``valkey-server sentinel.conf --sentinel``, its config file in its own 0700 dir."""

    def __init__(self, base_dir: Path, password: str, primary_port: int, quorum: int) -> None:
        self.port = free_port()
        self.dir = Path(base_dir)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.conf = self.dir / "sentinel.conf"
        self.log_path = self.dir / "sentinel.log"
        text = from_example("sentinel.conf", password, {
            "bind": "bind 127.0.0.1", "port": f"port {self.port}", "dir": f'dir "{self.dir}"',
            "sentinel monitor": f"sentinel monitor {SERVICE} 127.0.0.1 {primary_port} {quorum}",
            "sentinel down-after-milliseconds": f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}",
            "sentinel failover-timeout": f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}",
        }, [])
        fd = os.open(self.conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        self.password = password
        self.popen: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen([find_server_binary(), str(self.conf), "--sentinel"],
                                          stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                          start_new_session=True)

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=2,
                           socket_connect_timeout=1)

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
        if self.popen is not None:
            self.popen.wait(timeout=SERVER_STOP_TIMEOUT_S)


class SentinelSet:
    """A primary, ``replicas`` replicas and ``sentinels`` sentinels (quorum: a majority), all on loopback."""

    def __init__(self, base_dir: Path, *, replicas: int = 2, sentinels: int = 3) -> None:
        self.password = secrets.token_hex(16)
        self.primary = DataNode(base_dir / "node-0", self.password, None)
        self.replicas = [DataNode(base_dir / f"node-{i + 1}", self.password, self.primary.port)
                         for i in range(replicas)]
        self.sentinels = [SentinelProc(base_dir / f"sentinel-{i}", self.password, self.primary.port,
                                       sentinels // 2 + 1) for i in range(sentinels)]
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        self.url = f"redis+sentinel://:{self.password}@{hosts}/{SERVICE}/0"

    @property
    def nodes(self) -> list[DataNode]:
        return [self.primary, *self.replicas]

    def start(self) -> None:
        """Start every node and sentinel; return once the replicas are in sync and the sentinels agree."""
        for node in self.nodes:
            node.start()
        for sentinel in self.sentinels:
            sentinel.start()
        deadline = time.monotonic() + SET_START_TIMEOUT_S
        probe = self.primary.client()
        while time.monotonic() < deadline:
            replication = probe.info("replication")
            online = [v for k, v in replication.items() if k.startswith("slave") and isinstance(v, dict)
                      and v.get("state") == "online"]
            if len(online) == len(self.replicas) and self._sentinels_agree():
                return
            time.sleep(0.1)
        raise RuntimeError(f"the Sentinel set did not come up:\n{self.logs()}")

    def _sentinels_agree(self) -> bool:
        """Every sentinel names the primary and knows the other sentinels and the replicas."""
        for sentinel in self.sentinels:
            client = sentinel.client()
            try:
                state = client.sentinel_master(SERVICE)
            except (redis.ConnectionError, redis.ResponseError):
                return False
            finally:
                client.close()
            if (int(state["port"]) != self.primary.port or state["num-other-sentinels"] < len(self.sentinels) - 1
                    or state["num-slaves"] < len(self.replicas)):
                return False
        return True

    def primary_port(self) -> int | None:
        """The port the first sentinel that answers names as the primary's now."""
        for sentinel in self.sentinels:
            client = sentinel.client()
            try:
                return int(client.sentinel_get_master_addr_by_name(SERVICE)[1])
            except (redis.ConnectionError, redis.ResponseError, TypeError):
                continue
            finally:
                client.close()
        return None

    def node_on(self, port: int) -> DataNode:
        return next(node for node in self.nodes if node.port == port)

    def logs(self) -> str:
        parts = [f"===== node {n.port} =====\n{n.log_tail()}" for n in self.nodes]
        parts += [f"===== sentinel {s.port} =====\n{log_tail(s.log_path)}" for s in self.sentinels]
        return "\n".join(parts)

    def close(self) -> None:
        """SIGKILL every sentinel and node this set started (by PID)."""
        for sentinel in self.sentinels:
            sentinel.kill()
        for node in self.nodes:
            node.close()

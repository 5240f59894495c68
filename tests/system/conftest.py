"""Fixtures only the system tests need: one server + coordinator + worker per module.

Starting Python processes is the slow part of a system test, so tests that
only need "a working cluster" share one per module (``cluster``); tests that
need a particular worker (a queue, a secret, a start after submitting) start
it themselves with the harness's function-scoped ``procs``.

The module-wide processes run with an isolated ``CWREDIS_HOME``, without
``CWREDIS_URL`` and with the run's ``CWREDIS_SECRET``, like the harness's
``home`` fixture.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest
import redis

from harness import Proc, Procs, Server
from helpers import TEST_SECRET, has_failed

#: Short leases keep failure detection (and so these tests) fast.
LEASE_S = 2


@dataclass
class Cluster:
    server: Server
    procs: Procs
    url: str
    coordinator: Proc
    worker: Proc
    redis: redis.Redis

    def check_alive(self) -> None:
        assert self.coordinator.alive(), f"module coordinator died:\n{self.coordinator.log()[-3000:]}"
        assert self.worker.alive(), f"module worker died:\n{self.worker.log()[-3000:]}"


@pytest.fixture(scope="module")
def module_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("cwredis-home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CWREDIS_HOME", str(path))
        mp.delenv("CWREDIS_URL", raising=False)
        mp.setenv("CWREDIS_SECRET", TEST_SECRET)
        yield path


@pytest.fixture(scope="module")
def module_server(tmp_path_factory: pytest.TempPathFactory, module_home: Path) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("module-server"))
    srv.start()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture(scope="module")
def module_procs(tmp_path_factory: pytest.TempPathFactory, module_home: Path) -> Iterator[Procs]:
    p = Procs(tmp_path_factory.mktemp("module-logs"))
    try:
        yield p
    finally:
        p.cleanup()


@pytest.fixture(scope="module")
def cluster(module_server, module_procs) -> Cluster:
    """A server, a coordinator (``--lease-timeout 2``) and one worker (concurrency 2, queue default)."""
    coordinator = module_procs.coordinator(module_server.url, "--lease-timeout", str(LEASE_S))
    worker = module_procs.worker(module_server.url, "--concurrency", "2")
    return Cluster(server=module_server, procs=module_procs, url=module_server.url,
                   coordinator=coordinator, worker=worker, redis=module_server.client())


@pytest.fixture(autouse=True)
def _module_logs_on_failure(request: pytest.FixtureRequest):
    """Print the module-wide processes' log tails when a test using them fails."""
    shared = request.getfixturevalue("module_procs") if "module_procs" in request.fixturenames else None
    yield
    if shared is not None and has_failed(request.node):
        print("\n===== module-wide processes =====\n" + shared.dump_logs())


__all__ = ["Cluster", "LEASE_S"]

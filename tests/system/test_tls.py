"""``rediss://``: every role over TLS, to one server and to any node of a cluster; bad certificates refused.

The wheel's server has no TLS, so a TLS front (``tests/tls_proxy.py``, its
own process) terminates it: the roles are given only the front's port, so a
role that spoke plaintext, or skipped the certificate check, could not get
through. The certificates come from a throwaway CA (``trustme``); the roles
are told of it the way a user would, with ``?ssl_ca_certs=`` in the URL.
"""

from __future__ import annotations

import re
import select
import socket
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import trustme

import cwredis
from cluster_harness import LoopbackCluster
from cwredis.keys import Keys
from harness import Procs, Server, admin_json, cw_admin, free_port
from helpers import Outcomes, boom, square
from sysutil import unique
from users import User, make_user, require_root_and_setpriv, scratch_dir

#: Bound on each test's jobs.
JOB_TIMEOUT_S = 60
#: The uid of the other user of the machine in the loopback-listener test.
STRANGER_UID = 64102
#: The TLS front's program, and how long it may take to listen.
TLS_PROXY = str(Path(__file__).resolve().parent.parent / "tls_proxy.py")
PROXY_START_S = 20
#: Signs of trouble in a role's log: a redirection surfacing, a crash, a TLS failure.
SYMPTOMS = re.compile(r"MOVED|Traceback|SSLError| ERROR ")


class TlsFront:
    """The TLS proxy process: one listening port per target port, all with one certificate."""

    def __init__(self, directory: Path, ca: trustme.CA, targets: list[int], *, names: tuple[str, ...]) -> None:
        self.pem = directory / "front.pem"
        ca.issue_cert(*names).private_key_and_cert_chain_pem.write_to_path(str(self.pem))
        self.ports = [free_port() for _ in targets]
        self.targets = targets
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        pairs = [f"{port}:{target}" for port, target in zip(self.ports, self.targets)]
        self.proc = subprocess.Popen([sys.executable, TLS_PROXY, str(self.pem), str(self.pem), *pairs],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        assert self.proc.stdout is not None
        ready = select.select([self.proc.stdout], [], [], PROXY_START_S)[0]
        line = self.proc.stdout.readline() if ready else b"(nothing within the time allowed)"
        if line.strip() != b"ready":
            self.close()
            raise RuntimeError(f"the TLS front did not start: {line!r}")

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> tuple[trustme.CA, Path]:
    authority = trustme.CA()
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    authority.cert_pem.write_to_path(str(path))
    return authority, path


def tls_url(password: str, host: str, port: int, ca_file: Path | None) -> str:
    query = f"?ssl_ca_certs={ca_file}" if ca_file else ""
    return f"rediss://:{password}@{host}:{port}/0{query}"


@pytest.fixture(scope="module")
def single(tmp_path_factory, module_home, ca) -> Iterator[tuple[Server, TlsFront]]:
    server = Server(tmp_path_factory.mktemp("tls-server"))
    server.start()
    front = TlsFront(tmp_path_factory.mktemp("tls-front"), ca[0], [server.port], names=("localhost", "127.0.0.1"))
    try:
        front.start()
        yield server, front
    finally:
        front.close()
        server.close()


def run_every_role(url: str, tmp_path: Path) -> tuple[Outcomes, dict, str, dict[str, int], str]:
    """Coordinator, a one-slot worker (its job process parks: the lone-job path), Executor.map, sequential
    ClientThread submits with one failing job, cw-admin status; what each saw, and the roles' logs."""
    queue = unique("tls")
    seen = Outcomes()
    with Procs(tmp_path / "logs") as procs:
        coordinator = procs.coordinator(url, "--lease-timeout", "2")
        worker = procs.worker(url, "--queue", queue)
        with cwredis.Executor(url=url, queue=queue) as executor:
            mapped = list(executor.map(square, range(40), timeout=JOB_TIMEOUT_S))
        with cwredis.ClientThread(seen.on_result, url=url, error_callback=seen.on_error, queue=queue,
                                  max_attempts=1) as client:
            expected = {}
            for x in range(10):  # one at a time: each goes to the parked job process
                expected[client.submit(square, x)] = x * x
                client.wait(timeout=JOB_TIMEOUT_S)
            bad = client.submit(boom, "on purpose")
            client.wait(timeout=JOB_TIMEOUT_S)
        status = admin_json(url, "status")
        logs = coordinator.log() + worker.log()
    assert mapped == [x * x for x in range(40)]
    return seen, expected, bad, status, logs  # type: ignore[return-value]


def check(seen: Outcomes, expected: dict, bad: str, status: dict, logs: str) -> None:
    assert seen.results == {job: [value] for job, value in expected.items()}
    assert list(seen.errors) == [bad] and len(seen.errors[bad]) == 1
    assert "on purpose" in str(seen.errors[bad][0])
    assert status["failed"] >= 1 and status["workers"] >= 1, status
    assert not SYMPTOMS.search(logs), logs


def test_every_role_works_over_tls(single, ca, tmp_path):
    """Every role given only a rediss:// URL (host name and IP address both checked against the
    certificate): every result arrives once, the failure as an error, status answers, no log trouble."""
    server, front = single
    for host in ("localhost", "127.0.0.1"):
        url = tls_url(server.password, host, front.ports[0], ca[1])
        check(*run_every_role(url, tmp_path / host))


@pytest.mark.parametrize("case", ["unknown CA", "wrong host name"])
def test_a_certificate_that_does_not_check_out_is_refused_with_a_clear_error(single, ca, tmp_path, case):
    """A server whose certificate is not signed by a CA we trust, or names another host: cw-admin exits 2
    naming the certificate problem, a client refuses to start saying the same, and the password is not
    printed."""
    server, front = single
    if case == "unknown CA":
        url = tls_url(server.password, "localhost", front.ports[0], None)
        words = "certificate verify failed"
    else:
        stranger = TlsFront(tmp_path, ca[0], [server.port], names=("other.example",))
        stranger.start()
        try:
            url = tls_url(server.password, "localhost", stranger.ports[0], ca[1])
            done = cw_admin("status", env={"CWREDIS_URL": url})
            with pytest.raises(cwredis.ConnectionError) as raised:
                cwredis.ClientThread(lambda *a: None, url=url)
        finally:
            stranger.close()
        _assert_refused(done, raised, server.password, "Hostname mismatch")
        return
    done = cw_admin("status", env={"CWREDIS_URL": url})
    with pytest.raises(cwredis.ConnectionError) as raised:
        cwredis.ClientThread(lambda *a: None, url=url)
    _assert_refused(done, raised, server.password, words)


def _assert_refused(done, raised, password: str, words: str) -> None:
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert words.lower() in done.stderr.lower(), done.stderr
    assert words.lower() in str(raised.value).lower(), str(raised.value)
    assert password not in done.stderr + done.stdout + str(raised.value)


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory, module_home, ca) -> Iterator[tuple[LoopbackCluster, TlsFront]]:
    """Three primaries behind TLS fronts, each announcing its front's port (no replicas: a replica
    would replicate from its primary's announced port, which speaks TLS, and this server does not)."""
    ports = [free_port() for _ in range(3)]
    nodes = LoopbackCluster(tmp_path_factory.mktemp("tls-cluster"), replicas=False, announced_ports=ports)
    front = TlsFront(tmp_path_factory.mktemp("tls-cluster-front"), ca[0], [n.port for n in nodes.primaries],
                     names=("localhost", "127.0.0.1"))
    front.ports = ports
    try:
        nodes.start()
        front.start()
        yield nodes, front
    finally:
        front.close()
        nodes.close()


def test_every_role_works_over_tls_through_any_cluster_node(tls_cluster, ca, tmp_path):
    """The URL names a TLS front of a primary that does not serve the namespace's slot: every role finds
    the slot's primary (whose announced address is its TLS front), checks its certificate, and works."""
    nodes, front = tls_cluster
    owner = nodes.owner_of(Keys().hash_tag)
    other = next(i for i, node in enumerate(nodes.primaries) if node is not owner)
    url = tls_url(nodes.password, "127.0.0.1", front.ports[other], ca[1])
    check(*run_every_role(url, tmp_path))
    assert owner.client().dbsize() > 0, "nothing was written on the slot's primary"
    assert all(node.client().dbsize() == 0 for node in nodes.primaries if node is not owner)



@pytest.fixture
def stranger() -> Iterator[User]:
    """Another user of the machine (uid 64102), with a scratch directory of its own."""
    require_root_and_setpriv()
    for scratch in scratch_dir():
        yield make_user("stranger", STRANGER_UID, scratch)


def test_a_strangers_tls_listener_on_loopback_gets_no_password_even_unverified(single, stranger):
    """Another user's TLS listener on a loopback port, relaying to a socket we watch, reached with
    certificate checks turned off (``?ssl_cert_reqs=none``): cw-admin and a client refuse it before the
    TLS handshake, naming the other user's uid, and nothing reaches the relay's far end."""
    server, _ = single
    pem = stranger.home / "stranger.pem"
    trustme.CA().issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(str(pem))
    stranger.owns(pem, 0o600)
    port = free_port()
    with socket.create_server(("127.0.0.1", 0)) as watched:
        watched.setblocking(False)
        relay = subprocess.Popen(stranger.argv([sys.executable, TLS_PROXY, pem, pem,
                                                f"{port}:{watched.getsockname()[1]}"]),
                                 env=stranger.env(), stdout=subprocess.PIPE, start_new_session=True)
        try:
            assert relay.stdout is not None and select.select([relay.stdout], [], [], PROXY_START_S)[0]
            assert relay.stdout.readline().strip() == b"ready"
            url = f"rediss://:{server.password}@127.0.0.1:{port}/0?ssl_cert_reqs=none"
            done = cw_admin("status", env={"CWREDIS_URL": url})
            with pytest.raises(cwredis.ConnectionError) as raised:
                cwredis.ClientThread(lambda *a: None, url=url)
        finally:
            relay.kill()
            relay.wait(10)
        with pytest.raises(BlockingIOError):
            watched.accept()
    _assert_refused(done, raised, server.password, f"belongs to uid {STRANGER_UID}")

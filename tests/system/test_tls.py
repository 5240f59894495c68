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
    """The TLS proxy process (as ``user``, or us): one listening port per target port, one certificate."""

    def __init__(self, pem: Path, targets: list[int], *, ports: list[int] | None = None,
                 user: User | None = None) -> None:
        self.pem = pem
        self.targets = targets
        self.ports = ports or [free_port() for _ in targets]
        self.user = user
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> "TlsFront":
        argv = [sys.executable, TLS_PROXY, str(self.pem), str(self.pem),
                *(f"{port}:{target}" for port, target in zip(self.ports, self.targets))]
        self.proc = subprocess.Popen(self.user.argv(argv) if self.user else argv,
                                     env=self.user.env() if self.user else None, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        assert self.proc.stdout is not None
        ready = select.select([self.proc.stdout], [], [], PROXY_START_S)[0]
        line = self.proc.stdout.readline() if ready else b"(nothing within the time allowed)"
        if line.strip() != b"ready":
            self.__exit__()
            raise RuntimeError(f"the TLS front did not start: {line!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def certificate(ca: trustme.CA, pem: Path, *names: str) -> Path:
    """A key and certificate for ``names``, signed by ``ca``, written to ``pem``."""
    ca.issue_cert(*names).private_key_and_cert_chain_pem.write_to_path(str(pem))
    return pem


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
    pem = certificate(ca[0], tmp_path_factory.mktemp("tls-front") / "front.pem", "localhost", "127.0.0.1")
    try:
        with TlsFront(pem, [server.port]) as front:
            yield server, front
    finally:
        server.close()


def assert_every_role_works(url: str, tmp_path: Path) -> None:
    """Coordinator, a one-slot worker (its job process parks: the lone-job path), Executor.map, sequential
    ClientThread submits with one failing job, cw-admin status: every result once, the failure as an
    error, status answers, and no role's log shows trouble."""
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
    assert seen.results == {job: [value] for job, value in expected.items()}
    assert list(seen.errors) == [bad] and len(seen.errors[bad]) == 1
    assert "on purpose" in str(seen.errors[bad][0])
    assert status["failed"] >= 1 and status["workers"] >= 1, status
    assert not SYMPTOMS.search(logs), logs


def assert_refused(url: str, password: str, words: str) -> None:
    """cw-admin exits 2 and a client refuses to start, both saying ``words``; the password shows nowhere."""
    done = cw_admin("status", env={"CWREDIS_URL": url})
    with pytest.raises(cwredis.ConnectionError) as raised:
        cwredis.ClientThread(lambda *a: None, url=url)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert words.lower() in done.stderr.lower(), done.stderr
    assert words.lower() in str(raised.value).lower(), str(raised.value)
    assert password not in done.stderr + done.stdout + str(raised.value)


def test_every_role_works_over_tls(single, ca, tmp_path):
    """Every role given only a rediss:// URL (host name and IP address both checked against the
    certificate): every result arrives once, the failure as an error, status answers, no log trouble."""
    server, front = single
    for host in ("localhost", "127.0.0.1"):
        assert_every_role_works(tls_url(server.password, host, front.ports[0], ca[1]), tmp_path / host)


@pytest.mark.parametrize("case", ["unknown CA", "wrong host name"])
def test_a_certificate_that_does_not_check_out_is_refused_with_a_clear_error(single, ca, tmp_path, case):
    """A server whose certificate is not signed by a CA we trust, or names another host: cw-admin exits 2
    naming the certificate problem, a client refuses to start saying the same, and the password is not
    printed."""
    server, front = single
    if case == "unknown CA":
        assert_refused(tls_url(server.password, "localhost", front.ports[0], None), server.password,
                       "certificate verify failed")
        return
    with TlsFront(certificate(ca[0], tmp_path / "other.pem", "other.example"), [server.port]) as other:
        assert_refused(tls_url(server.password, "localhost", other.ports[0], ca[1]), server.password,
                       "Hostname mismatch")


@pytest.fixture(scope="module")
def tls_cluster(tmp_path_factory, module_home, ca) -> Iterator[tuple[LoopbackCluster, TlsFront]]:
    """Three primaries behind TLS fronts, each announcing its front's port (no replicas: a replica
    would replicate from its primary's announced port, which speaks TLS, and this server does not)."""
    ports = [free_port() for _ in range(3)]
    nodes = LoopbackCluster(tmp_path_factory.mktemp("tls-cluster"), replicas=False, announced_ports=ports)
    pem = certificate(ca[0], tmp_path_factory.mktemp("tls-cluster-front") / "front.pem", "localhost", "127.0.0.1")
    try:
        nodes.start()
        with TlsFront(pem, [n.port for n in nodes.primaries], ports=ports) as front:
            yield nodes, front
    finally:
        nodes.close()


def test_every_role_works_over_tls_through_any_cluster_node(tls_cluster, ca, tmp_path):
    """The URL names a TLS front of a primary that does not serve the namespace's slot: every role finds
    the slot's primary (whose announced address is its TLS front), checks its certificate, and works."""
    nodes, front = tls_cluster
    owner = nodes.owner_of(Keys().hash_tag)
    other = next(i for i, node in enumerate(nodes.primaries) if node is not owner)
    assert_every_role_works(tls_url(nodes.password, "127.0.0.1", front.ports[other], ca[1]), tmp_path)
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
    pem = stranger.owns(certificate(trustme.CA(), stranger.home / "stranger.pem", "localhost"), 0o600)
    with socket.create_server(("127.0.0.1", 0)) as watched:
        watched.setblocking(False)
        with TlsFront(pem, [watched.getsockname()[1]], user=stranger) as relay:
            assert_refused(f"rediss://:{server.password}@127.0.0.1:{relay.ports[0]}/0?ssl_cert_reqs=none",
                           server.password, f"belongs to uid {STRANGER_UID}")
        with pytest.raises(BlockingIOError):
            watched.accept()

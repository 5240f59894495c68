"""The embedded default: ``cw-coordinator`` with no URL starts, guards and restarts its own server.

Every test runs with the harness's ``home`` (a temporary ``CWREDIS_HOME``,
no ``CWREDIS_URL``/``CWREDIS_SECRET``), so workers and clients started
without a URL must find the server through ``$CWREDIS_HOME/url`` and sign
with ``$CWREDIS_HOME/secret``.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

import cwredis
import helpers
from helpers import admin_json, wait_for
from sysutil import Outcomes, pings, server_pids

pytestmark = pytest.mark.system

LEASE_S = 2
START_TIMEOUT_S = 30
JOB_TIMEOUT_S = 60



@pytest.fixture
def embedded_ports():
    """Ports of embedded servers this test's coordinators started; any left running is SIGKILLed.

    (The harness kills the coordinators' process groups; a server started in a
    session of its own would otherwise outlive the test.)
    """
    ports: list[int] = []
    yield ports
    for port in ports:
        for pid in server_pids(port):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def start_embedded(procs, home: Path, ports: list[int]):
    """Start ``cw-coordinator`` without a URL; return (proc, url) once its server answers."""
    coordinator = procs.coordinator(None, "--lease-timeout", str(LEASE_S))
    url_file = home / "url"

    def ready():
        if not coordinator.alive():
            raise AssertionError(f"coordinator exited {coordinator.returncode}:\n{coordinator.log()}")
        try:
            url = url_file.read_text().strip()
        except OSError:
            return None
        return url if url and pings(url) else None

    url = wait_for(ready, timeout=START_TIMEOUT_S, interval=0.1, message="embedded server up, URL file written")
    port = urlsplit(url).port
    if port not in ports:
        ports.append(port)
    return coordinator, url


def stop_and_check_server_gone(coordinator, port: int, sig: int = signal.SIGTERM) -> None:
    assert server_pids(port), "no server process found for the embedded port"
    coordinator.signal(sig)
    assert coordinator.wait(timeout=30) == 0, coordinator.log()
    wait_for(lambda: not server_pids(port), timeout=15, message="embedded server process to exit")


def test_embedded_server_files_password_and_signing(home, procs, tmp_path, embedded_ports, monkeypatch):
    monkeypatch.delenv("CWREDIS_SECRET")  # the embedded default generates one
    coordinator, url = start_embedded(procs, home, embedded_ports)
    parts = urlsplit(url)
    assert parts.scheme == "redis" and parts.hostname == "127.0.0.1", url
    assert parts.password, f"embedded URL carries no password: {url}"
    for name in ("url", "secret"):
        mode = stat.S_IMODE((home / name).stat().st_mode)
        assert mode == 0o600, f"$CWREDIS_HOME/{name} has mode {oct(mode)}"
    assert (home / "secret").read_bytes().strip(), "empty secret file"

    # The server requires the password.
    with socket.create_connection(("127.0.0.1", parts.port), timeout=5) as sock:
        sock.sendall(b"PING\r\n")
        reply = sock.recv(200)
    assert reply.startswith(b"-NOAUTH"), f"PING without a password answered {reply!r}"

    # Worker and client with no URL find the server (and the secret) through the files.
    worker = procs.worker(None)
    seen = Outcomes()
    with cwredis.ClientThread(seen.on_result, error_callback=seen.on_error) as t:
        jobid = t.submit(helpers.square, 4)
        large = t.submit(helpers.identity, b"x" * 200_000)  # its result is staged: the ACL lets it through
        t.wait(timeout=JOB_TIMEOUT_S)
    assert seen.errors == {} and seen.results == {jobid: 16, large: b"x" * 200_000}

    # Signing is on: a worker without the secret (told to run insecure) runs the job, but the
    # client refuses its unsigned result...
    other_home = tmp_path / "home-without-secret"
    other_home.mkdir()
    procs.worker(url, "--queue", "unsigned", "--insecure", env={"CWREDIS_HOME": str(other_home)})
    seen = Outcomes()
    with cwredis.ClientThread(seen.on_result, error_callback=seen.on_error, queue="unsigned") as t:
        jobid = t.submit(helpers.square, 5)
        t.wait(timeout=JOB_TIMEOUT_S)
    assert seen.results == {} and seen.errors[jobid].reason == "rejected", seen.errors
    # ...and the worker refuses an unsigned payload from an insecure client without the secret.
    monkeypatch.setenv("CWREDIS_HOME", str(other_home))
    monkeypatch.setenv("CWREDIS_INSECURE", "1")
    seen = Outcomes()
    with cwredis.ClientThread(seen.on_result, url=url, error_callback=seen.on_error) as t:
        jobid = t.submit(helpers.square, 6)
        t.wait(timeout=JOB_TIMEOUT_S)
    assert seen.results == {} and seen.errors[jobid].reason == "rejected", seen.errors
    assert worker.alive()

    stop_and_check_server_gone(coordinator, parts.port)


def test_restart_reuses_port_and_password_and_keeps_jobs(home, procs, embedded_ports):
    coordinator, url = start_embedded(procs, home, embedded_ports)
    port = urlsplit(url).port
    seen = Outcomes()
    t = cwredis.ClientThread(seen.on_result, error_callback=seen.on_error, queue="after-restart")
    t.start()
    try:
        jobid = t.submit(helpers.square, 9)  # no worker on this queue: it waits in Redis
        stop_and_check_server_gone(coordinator, port)

        _, url_again = start_embedded(procs, home, embedded_ports)
        assert url_again == url, "port or password changed across a restart"
        shown = admin_json(url, "show", jobid)
        assert shown["state"] == "pending", shown

        procs.worker(None, "--queue", "after-restart")
        wait_for(lambda: admin_json(url, "show", jobid)["state"] == "done", timeout=JOB_TIMEOUT_S,
                 message="job submitted before the restart to run")
        # The client that submitted before the restart reconnects and gets the result.
        t.wait(timeout=JOB_TIMEOUT_S)
        assert seen.errors == {} and seen.results == {jobid: 81}
    finally:
        t.stop()


def test_server_killed_under_the_coordinator_is_restarted(home, procs, embedded_ports):
    coordinator, url = start_embedded(procs, home, embedded_ports)
    port = urlsplit(url).port
    (first_pid,) = server_pids(port)
    os.kill(first_pid, signal.SIGKILL)
    wait_for(lambda: (set(server_pids(port)) - {first_pid}) and pings(url), timeout=START_TIMEOUT_S,
             interval=0.1, message="coordinator to restart its server on the same port")
    assert coordinator.alive(), coordinator.log()
    assert (home / "url").read_text().strip() == url

    procs.worker(None)
    seen = Outcomes()
    with cwredis.ClientThread(seen.on_result, error_callback=seen.on_error) as t:
        jobid = t.submit(helpers.square, 12)
        t.wait(timeout=JOB_TIMEOUT_S)
    assert seen.errors == {} and seen.results == {jobid: 144}

    # SIGINT stops it cleanly too.
    stop_and_check_server_gone(coordinator, port, signal.SIGINT)

"""The embedded server's defences (issue 9): least privilege, one server per data dir, new passwords.

Every test runs with the harness's ``home`` (a temporary ``CWREDIS_HOME``,
no ``CWREDIS_URL``/``CWREDIS_SECRET``): the coordinator starts its own
server with ``home`` as data dir, and workers and clients find it through
``$CWREDIS_HOME/url`` and sign with ``$CWREDIS_HOME/secret``. Servers are
found by their working directory (valkey-server runs in its data dir), and
any left over is SIGKILLed by PID at teardown.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

import cwredis
import helpers
from helpers import wait_for
from sysutil import Outcomes, cw_admin, free_port, pings, unique

pytestmark = pytest.mark.system

LEASE_S = 2
START_TIMEOUT_S = 30
JOB_TIMEOUT_S = 60


def servers_in(data_dir: Path) -> list[int]:
    """PIDs of live valkey/redis servers whose working directory is ``data_dir``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
            cwd = os.readlink(f"/proc/{entry}/cwd")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if ("valkey" in comm or "redis" in comm) and state not in ("Z", "X") and Path(cwd) == data_dir.resolve():
            found.append(int(entry))
    return found


@pytest.fixture
def leftover_servers(home):
    """SIGKILLs, by PID, any server still running in ``home`` when the test ends."""
    yield
    for pid in servers_in(home):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass



def start_embedded(procs, home: Path, *extra_args: str, old_url: str = ""):
    """Start ``cw-coordinator`` without a URL; return (proc, url) once a URL other than ``old_url`` answers."""
    coordinator = procs.coordinator(None, "--lease-timeout", str(LEASE_S), *extra_args)

    def ready():
        if not coordinator.alive():
            raise AssertionError(f"coordinator exited {coordinator.returncode}:\n{coordinator.log()}")
        try:
            url = (home / "url").read_text().strip()
        except OSError:
            return None
        return url if url and url != old_url and pings(url) else None

    url = wait_for(ready, timeout=START_TIMEOUT_S, interval=0.1, message="embedded server up, URL file written")
    return coordinator, url


def stop_coordinator(coordinator, home: Path) -> None:
    coordinator.signal(signal.SIGTERM)
    assert coordinator.wait(timeout=30) == 0, coordinator.log()
    wait_for(lambda: not servers_in(home), timeout=15, message="embedded server process to exit")


def forget_password(data_dir: Path) -> None:
    """What ``cw-slurm start`` does to the data dir (cwredis.server.discard_password, unit-tested on its own)."""
    state_file = data_dir / "server.json"
    state = json.loads(state_file.read_text())
    del state["password"]
    state_file.write_text(json.dumps(state))


def run_one(x: int, **client_options) -> None:
    seen = Outcomes()
    with cwredis.ClientThread(seen.on_result, error_callback=seen.on_error, **client_options) as t:
        jobid = t.submit(helpers.square, x)
        t.wait(timeout=JOB_TIMEOUT_S)
    assert seen.errors == {} and seen.results == {jobid: x * x}


# ------------------------------------------------------------------ least privilege (item 7)

#: What the password must not do: reconfigure, persist a config, add users, wipe, stop, spy.
REFUSED = [
    ("CONFIG", "SET", "appendonly", "no"),
    ("CONFIG", "SET", "bind", "0.0.0.0"),
    ("CONFIG", "GET", "*"),
    ("CONFIG", "REWRITE"),
    ("ACL", "SETUSER", "intruder", "on", ">pw", "+@all", "~*"),
    ("ACL", "LIST"),
    ("FLUSHALL",),
    ("FLUSHDB",),
    ("SHUTDOWN", "NOSAVE"),
    ("MONITOR",),
    ("REPLICAOF", "127.0.0.1", "1"),
    ("MODULE", "LIST"),
    ("BGREWRITEAOF",),
    ("SCRIPT", "FLUSH"),
    ("CLIENT", "KILL", "ID", "1"),
    ("FUNCTION", "FLUSH"),
    ("KEYS", "*"),
    ("EVAL", "return redis.call('FLUSHALL')", "0"),  # scripts are checked too
]


def test_password_cannot_reconfigure_or_stop_the_embedded_server(home, procs, leftover_servers):
    coordinator, url = start_embedded(procs, home)
    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        for command in REFUSED:
            with pytest.raises(redis.ResponseError, match="permission|ACL"):
                client.execute_command(*command)
        # DEBUG is off in the server's own config too; either way it is refused.
        with pytest.raises(redis.ResponseError):
            client.execute_command("DEBUG", "SLEEP", "0")
        assert client.ping()
    finally:
        client.close()

    # Everything cwredis itself sends is allowed: a worker and a client run a job end to end.
    procs.worker(None)
    run_one(4)
    stop_coordinator(coordinator, home)


# ------------------------------------------------------------------------- the Unix socket


def test_roles_on_the_servers_host_use_its_unix_socket(home, procs, leftover_servers):
    import stat

    coordinator, url = start_embedded(procs, home)
    local = json.loads((home / "url.local").read_text())
    assert local["url"] == url and local["socket_url"].startswith("unix://")
    assert stat.S_IMODE((home / "url.local").stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "server.sock").stat().st_mode) == 0o700
    assert cwredis.config.resolve_url() == local["socket_url"]
    procs.worker(None)
    run_one(5)  # worker and client both on the socket
    stop_coordinator(coordinator, home)


# -------------------------------------------------------------- one server per data dir (item 11)


def test_coordinator_killed_and_restarted_adopts_its_server(home, procs, leftover_servers):
    coordinator, url = start_embedded(procs, home)
    (server_pid,) = servers_in(home)
    queue = unique("adopted")
    seen = Outcomes()
    with cwredis.ClientThread(seen.on_result, error_callback=seen.on_error, queue=queue) as t:
        jobid = t.submit(helpers.square, 7)  # no worker on this queue yet: it waits in Redis

        coordinator.signal(signal.SIGKILL)
        coordinator.wait(timeout=10)
        assert servers_in(home) == [server_pid], "the server should outlive a SIGKILLed coordinator"

        again, url_again = start_embedded(procs, home)
        assert url_again == url
        assert servers_in(home) == [server_pid], "a second server started on the same data dir"

        procs.worker(None, "--queue", queue)
        t.wait(timeout=JOB_TIMEOUT_S)
    assert seen.errors == {} and seen.results == {jobid: 49}
    assert servers_in(home) == [server_pid]
    stop_coordinator(again, home)  # the adopted server stops with its new coordinator


def test_second_coordinator_on_a_data_dir_refuses(home, procs, leftover_servers):
    first, _ = start_embedded(procs, home)
    second = procs.coordinator(None, "--port", str(free_port()))
    assert second.wait(timeout=15) == 1, second.log()
    assert f"pid {first.pid}" in second.log(), second.log()
    assert len(servers_in(home)) == 1 and first.alive()
    stop_coordinator(first, home)


def test_server_left_with_an_old_password_is_stopped_not_adopted(home, procs, leftover_servers):
    coordinator, url = start_embedded(procs, home)
    (old_pid,) = servers_in(home)
    coordinator.signal(signal.SIGKILL)
    coordinator.wait(timeout=10)
    forget_password(home)  # as `cw-slurm start` does

    _, new_url = start_embedded(procs, home, old_url=url)
    assert urlsplit(new_url).password != urlsplit(url).password
    new_servers = servers_in(home)
    assert len(new_servers) == 1 and new_servers != [old_pid], new_servers


# ------------------------------------------------- a new password per allocation, followed by roles


def test_new_password_and_port_reach_running_worker_and_client(home, procs, leftover_servers):
    coordinator, url = start_embedded(procs, home)
    worker = procs.worker(None)
    seen = Outcomes()
    with cwredis.ClientThread(seen.on_result, error_callback=seen.on_error) as t:
        first = t.submit(helpers.square, 2)
        wait_for(lambda: first in seen.results, timeout=JOB_TIMEOUT_S, message="first job done")

        stop_coordinator(coordinator, home)
        forget_password(home)  # as `cw-slurm start` does: a new allocation, a new password
        _, new_url = start_embedded(procs, home, "--port", str(free_port()), old_url=url)
        old, new = urlsplit(url), urlsplit(new_url)
        assert new.password != old.password and new.port != old.port

        second = t.submit(helpers.square, 3)  # the client and the worker find the new server by the URL file
        t.wait(timeout=JOB_TIMEOUT_S)
    assert seen.errors == {} and seen.results == {first: 4, second: 9}
    assert worker.alive(), worker.log()


# ------------------------------------------------ the password only to our own listener (item 5)

ATTACKER_UID = 64102
VICTIM_UID = 64101

#: The attacker's listener: records every connection and every byte it receives.
ATTACKER = """
import socket, sys, threading
port, record = int(sys.argv[1]), sys.argv[2]
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", port))
server.listen()
open(record + ".ready", "w").close()
def serve(conn):
    with conn, open(record, "ab") as out:
        out.write(b"<connection>"); out.flush()
        while data := conn.recv(4096):
            out.write(data); out.flush()
while True:
    threading.Thread(target=serve, args=(server.accept()[0],), daemon=True).start()
"""


def as_user(uid: int, argv: list[str]) -> list[str]:
    return ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *argv]


@pytest.mark.parametrize("victim_uid", [VICTIM_UID, 0], ids=["victim-uid-64101", "victim-root"])
def test_password_is_not_sent_to_another_users_listener(victim_uid, procs):
    import secrets
    import shutil
    import sys

    if os.getuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to act as two users")
    shared = Path("/tmp") / f"cw-two-users-{secrets.token_hex(4)}"  # root's tmp_path is 0700: not here
    shared.mkdir(mode=0o755)
    try:
        victim_home, attacker_dir = shared / "victim-home", shared / "attacker"
        victim_home.mkdir(mode=0o700)
        attacker_dir.mkdir(mode=0o700)
        os.chown(attacker_dir, ATTACKER_UID, ATTACKER_UID)
        # The victim's home as the coordinator left it when it stopped: URL (port, password) and secret.
        port, password = free_port(), secrets.token_urlsafe(24)
        for name, text in (("url", f"redis://:{password}@127.0.0.1:{port}/0\n"),
                           ("secret", secrets.token_urlsafe(32) + "\n")):
            (victim_home / name).write_text(text)
            os.chmod(victim_home / name, 0o600)
            os.chown(victim_home / name, victim_uid, victim_uid)
        os.chown(victim_home, victim_uid, victim_uid)

        record = attacker_dir / "received"
        procs.run(as_user(ATTACKER_UID, [sys.executable, "-c", ATTACKER, str(port), str(record)]), name="attacker")
        wait_for(lambda: Path(f"{record}.ready").exists(), timeout=15, message="attacker listening")

        env = {"CWREDIS_HOME": str(victim_home), "CWREDIS_SECRET": secrets.token_urlsafe(32)}
        if victim_uid:
            # Another uid cannot reach root's interpreter and falls back to the system one,
            # which may be older than 3.11.3: redis-py then imports async_timeout (for its
            # asyncio client only), which asyncio.timeout stands in for here.
            shim = shared / "shim"
            shim.mkdir(mode=0o755)
            (shim / "async_timeout.py").write_text("from asyncio import timeout  # noqa: F401\n")
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(shim), os.environ.get("PYTHONPATH")]))
        worker_argv = [sys.executable, "-m", "cwredis.worker"]
        worker = procs.run(as_user(victim_uid, worker_argv) if victim_uid else worker_argv, env=env,
                           name="victim-worker")
        wait_for(lambda: record.exists() and record.read_bytes().count(b"<connection>") >= 2, timeout=30,
                 message="the victim's worker to try the attacker's port (and retry)")
        if victim_uid == 0:  # cw-admin, which cannot go on without the server, says why
            done = cw_admin("status", env=env)
            assert done.returncode == 2 and f"belongs to uid {ATTACKER_UID}" in done.stderr, done.stderr
        received = record.read_bytes()
        assert password.encode() not in received, f"the password reached the attacker: {received!r}"
        assert worker.alive(), worker.log()
        assert f"belongs to uid {ATTACKER_UID}" in worker.log(), worker.log()
    finally:
        procs.cleanup()
        shutil.rmtree(shared, ignore_errors=True)

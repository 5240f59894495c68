"""The embedded server's defences (issue 9): least privilege, one server per data dir, new passwords.

Every test runs with the harness's ``home`` (a temporary ``CWREDIS_HOME``,
no ``CWREDIS_URL``/``CWREDIS_SECRET``): the coordinator starts its own
server with ``home`` as data dir, and workers and clients find it through
``$CWREDIS_HOME/url`` and sign with ``$CWREDIS_HOME/secret``. Servers are
found by their working directory (valkey-server runs in its data dir), and
any left over is SIGKILLed by PID at teardown.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis

import cwredis
import helpers
from helpers import wait_for
from sysutil import Outcomes, free_port, unique

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


def pings(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


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
    from cwredis.server import discard_password

    coordinator, url = start_embedded(procs, home)
    (old_pid,) = servers_in(home)
    coordinator.signal(signal.SIGKILL)
    coordinator.wait(timeout=10)
    discard_password(home)  # what `cw-slurm start` does

    _, new_url = start_embedded(procs, home, old_url=url)
    assert urlsplit(new_url).password != urlsplit(url).password
    new_servers = servers_in(home)
    assert len(new_servers) == 1 and new_servers != [old_pid], new_servers

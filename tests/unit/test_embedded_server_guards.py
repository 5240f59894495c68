"""The pieces behind the embedded server's defences, without a server: state, identity, locks, listeners, URLs."""

from __future__ import annotations

import json
import os
import socket
import threading

import pytest

from cwredis import config, slurm
from cwredis.connection import connect
from cwredis.errors import ConfigError
from cwredis.listener import is_loopback, listener_uids
from cwredis.serverproc import DataDirLock, ProcessId


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CWREDIS_HOME", str(tmp_path))
    monkeypatch.delenv("CWREDIS_URL", raising=False)
    return tmp_path


def test_cw_slurm_start_gives_the_next_server_a_new_password(home, monkeypatch):
    data = home / "data"
    data.mkdir()
    (data / "server.json").write_text(json.dumps({"port": 4321, "password": "old-password", "bind": "10.0.0.1"}))

    def no_sbatch(*args, **kwargs):
        raise slurm.SlurmError("no SLURM in a unit test")

    monkeypatch.setattr(slurm, "submit", no_sbatch)
    assert slurm.main(["start", "-n", "1"]) == 1
    state = json.loads((data / "server.json").read_text())
    assert "password" not in state and state["port"] == 4321


def test_a_process_is_known_by_pid_and_start_time():
    me = ProcessId.of(os.getpid())
    assert me is not None and me.is_alive()
    assert not ProcessId(me.pid, me.ticks + 1).is_alive()  # the same PID, recycled: not the same process


def test_a_second_coordinator_lock_on_a_data_dir_names_the_first(tmp_path):
    first = DataDirLock(tmp_path)
    first.acquire()
    try:
        with pytest.raises(ConfigError, match=f"pid {os.getpid()}"):
            DataDirLock(tmp_path).acquire()
    finally:
        first.release()
    again = DataDirLock(tmp_path)
    again.acquire()  # free once released
    again.release()


def test_listener_owner_is_read_from_proc_net_tcp():
    if listener_uids("127.0.0.1", 1) is None:
        pytest.skip("no /proc/net/tcp")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert listener_uids("127.0.0.1", port) == {os.getuid()}
        assert listener_uids("127.0.0.2", port) == set()  # bound to another address: does not take it
    assert listener_uids("127.0.0.1", port) == set()


def test_loopback_addresses():
    assert all(is_loopback(a) for a in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"))
    assert not any(is_loopback(a) for a in ("10.1.2.3", "::", "0.0.0.0", "localhost"))


def test_only_a_url_from_the_url_file_is_followed(home, monkeypatch):
    (home / "url").write_text("redis://:pw@127.0.0.1:1234/0\n")
    assert isinstance(config.resolve_url(), config.UrlFromFile)
    assert not isinstance(config.resolve_url("redis://127.0.0.1:1/0"), config.UrlFromFile)
    monkeypatch.setenv("CWREDIS_URL", "redis://127.0.0.1:2/0")
    assert not isinstance(config.resolve_url(), config.UrlFromFile)


def test_a_refused_connection_rereads_the_url_file(home):
    """The server moved (a restart on a new port, with a new password): the next connect follows the file."""
    with socket.socket() as new_server:
        new_server.bind(("127.0.0.1", 0))
        new_server.listen()
        new_port = new_server.getsockname()[1]
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            old_port = closed.getsockname()[1]  # closed again: nothing listens there
        (home / "url").write_text(f"redis://:old@127.0.0.1:{old_port}/0\n")
        client = connect(config.resolve_url(), "test")
        (home / "url").write_text(f"redis://:new@127.0.0.1:{new_port}/0\n")

        received = []

        def answer_once():
            conn, _ = new_server.accept()
            with conn:
                received.append(conn.recv(4096))
                conn.sendall(b"-ERR stop here\r\n")

        thread = threading.Thread(target=answer_once)
        thread.start()
        with pytest.raises(Exception):
            client.ping()
        thread.join(timeout=10)
        client.close()
    assert received and b"new" in received[0] and b"old" not in received[0], received


def test_roles_on_the_servers_host_take_its_unix_socket_while_it_is_current(home):
    tcp = "redis://:pw@10.0.0.1:1234/0"
    sock = f"unix://:pw@{home}/server.sock?db=0"
    (home / "url").write_text(tcp + "\n")
    local = {"host": socket.gethostname(), "url": tcp, "socket_url": sock}
    (home / "url.local").write_text(json.dumps(local))
    assert config.resolve_url() == sock
    (home / "url.local").write_text(json.dumps(dict(local, host="another-node")))
    assert config.resolve_url() == tcp
    (home / "url.local").write_text(json.dumps(dict(local, url="redis://:older@10.0.0.1:999/0")))
    assert config.resolve_url() == tcp  # a stale url.local never wins over a newer url

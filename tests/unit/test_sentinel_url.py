"""``redis+sentinel://`` URLs: parsing, and every role's error message naming the Sentinel set, never the password.

The roles' error paths are reached for real: a malformed URL through each
role's entry point (cw-worker, cw-coordinator, cw-admin -- the dashboard
starts through cw-admin --, ClientThread, Executor), and a well-formed URL
whose sentinels do not listen (free loopback ports) through the first
contact of a client and of cw-admin and through the outage log line that
workers and the coordinator write.
"""

from __future__ import annotations

import logging
import signal
from typing import Iterator

import pytest
import redis

import cwredis
from cwredis import admin, config, coordinator, sentinel
from cwredis.connection import connect, is_transient
from cwredis.reachability import Reconnector
from cwredis.errors import ConfigError
from cwredis.worker import cli as worker_cli
from harness import free_port
from helpers import TEST_SECRET

PASSWORD = "pa:ss@w0rd-s3cret"  # with ':' and '@', which a naive parser would split on
QUOTED = "pa%3Ass%40w0rd-s3cret"

MALFORMED = [
    f"redis+sentinel://:{QUOTED}@127.0.0.1:26379/",                 # no service
    f"redis+sentinel://:{QUOTED}@127.0.0.1:26379",                  # no path at all
    f"redis+sentinel://:{QUOTED}@127.0.0.1:port/cw",                # a port that is no number
    f"redis+sentinel://:{QUOTED}@127.0.0.1:26379,:26380/cw",        # a sentinel without a host
    f"redis+sentinel://:{QUOTED}@127.0.0.1:26379/cw/zero",          # a database that is no number
    f"redis+sentinel://:{QUOTED}@127.0.0.1:26379/cw/0/extra",       # too deep a path
    f"redis+sentinel://:{QUOTED}@127.0.0.1:26379/cw?password={QUOTED}",  # a query it does not take
]


@pytest.fixture
def isolated(tmp_path, monkeypatch) -> Iterator[None]:
    """A private CWREDIS_HOME and secret; the process's signal handlers restored afterwards
    (cw-coordinator's main installs its own)."""
    monkeypatch.setenv("CWREDIS_HOME", str(tmp_path))
    monkeypatch.setenv("CWREDIS_SECRET", TEST_SECRET)
    monkeypatch.delenv("CWREDIS_URL", raising=False)
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def dead_sentinel_url() -> tuple[str, str]:
    """A well-formed URL whose two sentinels do not listen, and how messages name that set."""
    hosts = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    return f"redis+sentinel://:{QUOTED}@{hosts}/cw/0", f"the Sentinel set {hosts} (service cw)"


def assert_masked(text: str) -> None:
    assert PASSWORD not in text and QUOTED not in text, text
    assert "***" in text, text


# ------------------------------------------------------------------------ parsing


def test_a_sentinel_url_names_its_sentinels_service_database_and_password():
    parsed = sentinel.parse(f"redis+sentinel://:{QUOTED}@10.0.0.1:26379,sentinel-b,[::1]:26381/my%20svc/3")
    assert parsed == sentinel.SentinelUrl(
        [("10.0.0.1", 26379), ("sentinel-b", sentinel.DEFAULT_SENTINEL_PORT), ("::1", 26381)],
        "my svc", 3, None, PASSWORD)
    assert sentinel.parse("redis+sentinel://alice:pw@h:1/cw") == sentinel.SentinelUrl([("h", 1)], "cw", 0,
                                                                                      "alice", "pw")
    assert sentinel.parse("redis+sentinel://h:1/cw").password is None


@pytest.mark.parametrize("url", MALFORMED)
def test_a_malformed_sentinel_url_is_a_config_error_with_the_password_masked(url):
    with pytest.raises(ConfigError) as caught:
        connect(url, "test")
    assert_masked(str(caught.value))
    assert "invalid Sentinel URL redis+sentinel://:***@127.0.0.1:" in str(caught.value)


def test_a_url_urllib_cannot_split_is_a_config_error_too():
    with pytest.raises(ConfigError) as caught:
        connect(f"redis://:{QUOTED}@[::1:6379/0", "test")
    assert_masked(str(caught.value))


def test_mask_url_masks_the_password_of_a_sentinel_url():
    masked = config.mask_url(f"redis+sentinel://:{PASSWORD}@127.0.0.1:26379,127.0.0.1:26380/cw/0")
    assert masked == "redis+sentinel://:***@127.0.0.1:26379,127.0.0.1:26380/cw/0"


#: Passwords with what ends a URL's host for urllib ('/', '?', '#'), not percent-encoded.
UNENCODED = ["pa/ss-s3cret", "pa?ss-s3cret", "pa#ss-s3cret", "p/a?s#s@w:rd-s3cret"]


@pytest.mark.parametrize("password", UNENCODED)
def test_a_password_with_url_delimiters_is_masked_and_read_whole(password):
    for url in (f"redis+sentinel://:{password}@127.0.0.1:26379,127.0.0.1:26380/cw/0",
                f"redis://:{password}@127.0.0.1:6379/0"):
        assert config.mask_url(url) == url.replace(password, "***")
    parsed = sentinel.parse(f"redis+sentinel://:{password}@127.0.0.1:26379,127.0.0.1:26380/cw/0")
    assert parsed.password == password and parsed.service == "cw" and len(parsed.sentinels) == 2


@pytest.mark.parametrize("password", UNENCODED)
def test_a_malformed_url_with_such_a_password_shows_no_piece_of_it(password):
    with pytest.raises(ConfigError) as caught:
        connect(f"redis+sentinel://:{password}@127.0.0.1:26379,:26380/cw/0", "test")
    message = str(caught.value)
    assert message.startswith("invalid Sentinel URL redis+sentinel://:***@127.0.0.1:26379,:26380/cw/0: a sentinel "
                              "address ':26380' has no host"), message
    assert "s3cret" not in message and f":{password[:2]}" not in message, message


def test_a_sentinel_url_gives_a_client_of_the_services_primary_with_the_password_for_both():
    client = connect(f"redis+sentinel://:{QUOTED}@127.0.0.1:1,127.0.0.1:2/cw/2", "test")
    pool = client.connection_pool
    assert sentinel.needs_replica_ack(client)
    assert pool.service_name == "cw" and pool.connection_kwargs["db"] == 2
    assert pool.connection_kwargs["password"] == PASSWORD
    assert pool.connection_kwargs["client_name"] == "cwredis-test"
    assert [s.connection_pool.connection_kwargs["password"] for s in pool.sentinel_manager.sentinels] == \
        [PASSWORD, PASSWORD]
    assert not sentinel.needs_replica_ack(connect("redis://127.0.0.1:1/0", "test"))


# --------------------------------------------------- every role's error paths


@pytest.mark.parametrize("url", MALFORMED[:3])
@pytest.mark.parametrize("role, run", [
    ("cw-worker", lambda url: worker_cli.main([url])),
    ("cw-coordinator", lambda url: coordinator.main([url])),
    ("cw-admin", lambda url: admin.main(["--url", url, "status"])),
    ("cw-admin", lambda url: admin.main(["--url", url, "dashboard"])),
])
def test_every_command_reports_a_malformed_sentinel_url_masked(isolated, capsys, role, run, url):
    assert run(url) != 0
    err = capsys.readouterr().err
    assert f"{role}: invalid Sentinel URL" in err, err
    assert_masked(err)


@pytest.mark.parametrize("url", MALFORMED[:3])
@pytest.mark.parametrize("make", [
    lambda url: cwredis.ClientThread(print, url=url),
    lambda url: cwredis.Executor(url=url),
])
def test_clients_report_a_malformed_sentinel_url_masked(isolated, make, url):
    with pytest.raises(ConfigError) as caught:
        make(url)
    assert_masked(str(caught.value))


def test_a_client_whose_sentinels_do_not_answer_names_the_set_masked(isolated, monkeypatch):
    monkeypatch.setattr(config, "CLIENT_START_TIMEOUT_S", 0.5)
    url, where = dead_sentinel_url()
    with pytest.raises(cwredis.ConnectionError) as caught:
        cwredis.ClientThread(print, url=url)
    message = str(caught.value)
    assert_masked(message)
    assert f"no sentinel of {where} named a primary that is up" in message, message


def test_admin_whose_sentinels_do_not_answer_names_the_set_masked(isolated, capsys):
    url, where = dead_sentinel_url()
    assert admin.main(["--url", url, "status"]) != 0
    err = capsys.readouterr().err
    assert_masked(err)
    assert where in err, err


@pytest.mark.parametrize("role", ["worker", "coordinator"])
def test_the_outage_log_line_of_workers_and_the_coordinator_names_the_set_masked(role, caplog):
    url, where = dead_sentinel_url()
    client = connect(url, role)
    with pytest.raises(redis.ConnectionError) as caught:
        client.ping()
    assert is_transient(caught.value)  # MasterNotFoundError: they ride it out
    with caplog.at_level(logging.WARNING, logger="cwredis"):
        Reconnector(url, role).failed(caught.value, sleep=False)
    assert_masked(caplog.text)
    assert f"{role}: cannot reach Redis at redis+sentinel://:***@" in caplog.text
    assert where in caplog.text, caplog.text


def test_an_unacknowledged_batch_is_a_transient_error():
    sentinel.check_acknowledged(1, "a batch")
    with pytest.raises(sentinel.NotReplicatedError) as caught:
        sentinel.check_acknowledged(0, "a submit of 500 job(s)")
    assert is_transient(caught.value)
    assert "no replica confirmed a submit of 500 job(s)" in str(caught.value)


def test_the_coordinators_watch_holds_off_for_one_lease_after_the_primary_moves(monkeypatch):
    client = connect("redis+sentinel://127.0.0.1:1/cw", "coordinator")
    proxy = client.connection_pool.proxy  # where redis-py keeps the primary it resolved last
    clock = [100.0]
    monkeypatch.setattr(sentinel.time, "monotonic", lambda: clock[0])
    watch = sentinel.PrimaryWatch(client, hold_s=30.0)
    assert not watch.holding()  # nothing resolved yet
    proxy.master_address = ("127.0.0.1", 7000)
    assert not watch.holding()  # the first primary seen is no failover
    proxy.master_address = ("127.0.0.1", 7001)
    assert watch.holding()
    clock[0] += 29.9
    assert watch.holding()
    clock[0] += 0.2
    assert not watch.holding()
    proxy.master_address = ("127.0.0.1", 7002)
    watch.failed()  # the new primary refuses writes for a while (NOREPLICAS): the hold runs from its end
    clock[0] += 20.0
    watch.failed()
    clock[0] += 29.9
    assert watch.holding()
    clock[0] += 0.2
    assert not watch.holding()
    watch.failed()  # an outage with no failover starts no hold
    assert not watch.holding()
    assert not sentinel.PrimaryWatch(connect("redis://127.0.0.1:1/0", "coordinator"), hold_s=30.0).holding()


def test_pinned_and_subscription_connections_ask_the_sentinels_for_the_primary(server, monkeypatch):
    """redis-py resolves the primary only in connect(); Pinned and Subscription connect through
    send_packed_command, which would go to the pool's default localhost:6379 instead."""
    from cwredis.connection import Pinned, Subscription

    client = connect(f"redis+sentinel://:{server.password}@127.0.0.1:1/cw/0", "test")
    asked = []
    monkeypatch.setattr(client.connection_pool.sentinel_manager, "discover_master",
                        lambda service: asked.append(service) or ("127.0.0.1", server.port))
    pinned = Pinned(client)
    assert pinned.execute("PING") == b"PONG"
    Subscription(client, "cw-test-channel").close()
    assert client.ping()
    assert asked == ["cw", "cw", "cw"]  # once per connection made
    assert client.connection_pool.master_address == ("127.0.0.1", server.port)
    pinned.close()
    client.close()

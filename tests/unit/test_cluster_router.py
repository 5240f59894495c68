"""cwredis.cluster on its own: what the router remembers, and what a connection does with it.

The connection tests use the harness's single (non-cluster) server; the
cluster itself is exercised in ``tests/system/test_cluster.py``.
"""

from __future__ import annotations

import pytest
import redis
from redis.crc import key_slot

from cwredis import cluster
from cwredis.cluster import ClusterAwareConnection, ClusterRouter
from cwredis.connection import Pinned, connect
from cwredis.keys import Keys

SEED = ("127.0.0.1", 7000)


def test_the_router_starts_at_the_default_namespaces_slot():
    router = ClusterRouter(SEED)
    assert router.slot == key_slot(b"{cw}") == key_slot(Keys().job("x").encode()) == key_slot(b"{cw}:stats")
    assert router.is_cluster is None and router.primary is None and router.candidates() == [SEED]


def test_moved_adopts_the_slot_and_primary_it_names_and_ages_every_connection():
    router = ClusterRouter(SEED)
    router.moved(1234, ("127.0.0.1", 7002))
    assert (router.is_cluster, router.slot, router.primary, router.epoch) == (True, 1234, ("127.0.0.1", 7002), 1)
    assert router.candidates() == [SEED, ("127.0.0.1", 7002)]
    router.moved(1234, ("127.0.0.1", 7002))  # the same news from another connection: no second reconnect round
    assert router.epoch == 1


def test_forget_clears_a_clusters_primary_and_never_touches_a_single_server():
    single = ClusterRouter(SEED)
    single.is_cluster = False
    single.forget()
    assert single.epoch == 0
    router = ClusterRouter(SEED)
    router.learn(("127.0.0.1", 7001), [("127.0.0.1", 7001), SEED, ("127.0.0.1", 7004)])
    assert router.candidates() == [SEED, ("127.0.0.1", 7001), ("127.0.0.1", 7004)]
    router.forget()
    router.forget()  # a second error before anyone reconnected: one lookup suffices
    assert (router.primary, router.epoch) == (None, 1)
    router.demote(SEED)
    assert router.candidates()[-1] == SEED


@pytest.fixture
def counted(monkeypatch):
    """How often connections asked ``INFO cluster``."""
    asked = []
    real = ClusterAwareConnection._cluster_enabled

    def counting(self):
        asked.append(self)
        return real(self)

    monkeypatch.setattr(ClusterAwareConnection, "_cluster_enabled", counting)
    return asked


def test_a_single_server_is_asked_once_per_client(server, counted):
    """Detection costs one round trip for a client's first connection, none for later ones or commands."""
    client = connect(server.url, "test")
    pinned = Pinned(client)
    for _ in range(3):
        assert client.ping() and pinned.execute("PING") == b"PONG"
    router = client.connection_pool.connection_kwargs["router"]
    assert router.is_cluster is False and len(counted) == 1
    pinned.close()
    client.close()


def test_a_connection_opened_before_the_router_changed_reconnects_to_the_new_primary(server, counted):
    """After a MOVED (here: naming the same server), each connection of the client reconnects once."""
    client = connect(server.url, "test")
    pinned = Pinned(client)
    before = pinned.execute("CLIENT", "ID")
    router = client.connection_pool.connection_kwargs["router"]
    router.moved(router.slot, ("127.0.0.1", server.port))
    after = pinned.execute("CLIENT", "ID")
    assert after != before and pinned.execute("CLIENT", "ID") == after
    assert len(counted) == 1  # the new connection went straight to the named primary
    pinned.close()
    client.close()


def test_a_cluster_node_that_does_not_answer_is_named_with_a_cluster_hint(server):
    client = connect(server.url, "test")
    router = client.connection_pool.connection_kwargs["router"]
    router.moved(router.slot, ("127.0.0.1", 1))  # nothing listens on port 1
    with pytest.raises(cluster.ClusterNodeDown, match=r"node 127\.0\.0\.1:1 does not answer.*cluster-node-timeout"):
        client.ping()
    assert router.primary is None  # the next connect looks the primary up again
    client.close()


def test_a_moved_reply_is_explained_as_the_cluster_moving_the_slot():
    from cwredis.reachability import explain

    exc = redis.exceptions.MovedError("4105 127.0.0.1:7002")
    assert explain(exc, "redis://127.0.0.1:7000") == ("the Valkey/Redis Cluster moved slot 4105 to 127.0.0.1:7002 "
                                                      "(a failover or resharding); following it")


def test_sharded_pub_sub_is_plain_pub_sub_on_a_single_server(server):
    """One code path: a Subscription (SSUBSCRIBE) gets what SPUBLISH sends, from a client or a script."""
    from cwredis.connection import Subscription

    client = connect(server.url, "test")
    channel = Keys().channel("c1")
    subscription = Subscription(client, channel)
    try:
        client.spublish(channel, b"from a client")
        client.eval("redis.call('SPUBLISH', KEYS[1], ARGV[1])", 1, channel, b"from a script")
        assert [subscription.next(5.0), subscription.next(5.0), subscription.next(0.1)] == [
            b"from a client", b"from a script", None]
    finally:
        subscription.close()
        client.close()


def test_cluster_slots_names_the_primary_of_our_slot_and_every_node(monkeypatch):
    """CLUSTER SLOTS as the server sends it: [start, end, [host, port, id], replicas...]; an empty
    or "?" host is the address this connection reached."""
    reply = [
        [0, 5460, [b"10.0.0.1", 7000, b"id0"], [b"10.0.0.4", 7003, b"id3"]],
        [5461, 16383, [b"", 7001, b"id1"], [b"?", 7004, b"id4"]],
    ]
    connection = ClusterAwareConnection(router=ClusterRouter(SEED), host="10.0.0.9", port=7009)
    monkeypatch.setattr(connection, "_ask", lambda *args: reply)
    primary, nodes = connection._slot_owner()
    assert connection.router.slot == 4105 and primary == ("10.0.0.1", 7000)
    assert nodes == [("10.0.0.1", 7000), ("10.0.0.4", 7003), ("10.0.0.9", 7001), ("10.0.0.9", 7004)]
    connection.router.slot = 9000
    assert connection._slot_owner()[0] == ("10.0.0.9", 7001)
    monkeypatch.setattr(connection, "_ask", lambda *args: reply[:1])
    with pytest.raises(redis.exceptions.ClusterDownError, match="no node serves slot 9000"):
        connection._slot_owner()

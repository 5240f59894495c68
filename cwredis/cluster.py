"""Valkey/Redis Cluster: any node's URL works; connections go to the primary of the namespace's slot.

Every key (and channel) of a namespace carries one hash tag (``{cw}``, see
:mod:`cwredis.keys`), so the whole namespace lives in one slot, served by one
primary. A connection therefore needs no per-command routing, only the right
server: :class:`ClusterAwareConnection` asks the node it was pointed at
(``INFO cluster``) whether it is a cluster node, and if so (``CLUSTER
SLOTS``) which primary serves the slot, and connects there. What it learned
is kept in the client's :class:`ClusterRouter`, shared by all connections of
the client's pool: the first connection of a client pays the question (one
round trip on a single server, three on a cluster), later ones go straight
to the primary, and no command pays anything.

When the slot moves -- a ``MOVED`` reply (resharding, or a failover the
cluster finished), ``READONLY``/``UNBLOCKED`` (our primary became a replica),
``CLUSTERDOWN``/``TRYAGAIN`` (a failover or migration under way), or the
connection lost (the primary died) -- the router forgets the primary (after
``MOVED``: takes the address it names) and bumps its epoch. Each of the
client's connections, at its next command, sees that it was opened in an
older epoch and reconnects, asking the known nodes again. The command that
met the error is raised as before: every role already treats these errors
as transient and retries on its own terms (:func:`cwredis.connection.is_transient`).

Why not redis-py's ``RedisCluster``: it routes each command by key (a
CRC16 and a table lookup per command, for a namespace that is one slot),
retries commands itself after connection errors and redirections (a Lua
transition whose reply was lost could run twice; cwredis decides per call
what may be repeated), and has no ``connection_pool`` of one server, which
:class:`~cwredis.connection.Pinned`, :class:`~cwredis.connection.Subscription`,
blocking reads and pipelines use. A connection class, as redis-py's own
``SentinelManagedConnection`` does for Sentinel, keeps all of them unchanged.

A client of a namespace other than the default one is first sent to the
default namespace's primary; the first ``MOVED`` then names its own.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis
from redis.crc import key_slot

from .guarded import GuardedConnection, ListenerChecked
from .keys import DEFAULT_KEYS

log = logging.getLogger("cwredis")

Address = tuple[str, int]

#: Replies after which the primary must be looked up again (MOVED names the new one itself).
_RELOOKUP_ERRORS: tuple[type[BaseException], ...] = (
    redis.exceptions.AskError,          # ASK: the slot is migrating (MOVED is a subclass, handled first)
    redis.exceptions.ReadOnlyError,     # READONLY: our primary is a replica now
    redis.exceptions.ClusterDownError,  # CLUSTERDOWN: a failover is under way
    redis.exceptions.TryAgainError,     # TRYAGAIN: the slot is migrating
)
#: The same for reply codes redis-py has no class for.
_RELOOKUP_CODES = frozenset({"UNBLOCKED"})  # a blocking read cut short: the server became a replica


class ClusterNodeDown(redis.ConnectionError):
    """A cluster node (our slot's primary, or every node we know) cannot be reached; transient."""


def _reason(exc: BaseException) -> str:
    cause = exc.__context__ or exc.__cause__
    return (getattr(cause, "strerror", None) or str(exc).strip() or type(exc).__name__).rstrip(".")


class ClusterRouter:
    """What one client knows: is the server a cluster node, which primary serves our slot, which nodes exist.

    Shared by the connections of one client's pool (they run in several
    threads, hence the lock). ``epoch`` counts what was forgotten: a
    connection opened in an older epoch reconnects.
    """

    def __init__(self, seed: Address, slot_key: str = DEFAULT_KEYS.hash_tag) -> None:
        self.slot = key_slot(slot_key.encode())
        self.is_cluster: bool | None = None  # None: not asked yet
        self.primary: Address | None = None
        self.nodes: list[Address] = [seed]
        self.epoch = 0
        self._logged: Address | None = None
        self._lock = threading.Lock()

    def learn(self, primary: Address, nodes: list[Address]) -> None:
        """The primary of our slot and the nodes a cluster node named."""
        with self._lock:
            self.is_cluster, self.primary = True, primary
            self.nodes = list(dict.fromkeys([*self.nodes, *nodes]))
            changed, self._logged = primary != self._logged, primary
        if changed:
            log.info("Valkey/Redis Cluster: slot %d is served by %s:%d", self.slot, *primary)

    def moved(self, slot: int, primary: Address) -> None:
        """A MOVED reply: ``slot`` is ours (a client's namespace has one), served by ``primary``."""
        with self._lock:
            if (slot, primary) != (self.slot, self.primary):  # not news another connection brought already
                self.epoch += 1
            self.is_cluster, self.slot, self.primary = True, slot, primary
            if primary not in self.nodes:
                self.nodes.append(primary)
            changed, self._logged = primary != self._logged, primary
        if changed:
            log.info("Valkey/Redis Cluster: slot %d moved to %s:%d", slot, *primary)

    def forget(self) -> None:
        """Our primary failed, or may no longer serve the slot: look it up again on the next connect."""
        with self._lock:
            if self.is_cluster and self.primary is not None:
                self.primary = None
                self.epoch += 1

    def candidates(self) -> list[Address]:
        """Nodes to ask, in order."""
        with self._lock:
            return list(self.nodes)

    def demote(self, node: Address) -> None:
        """``node`` did not answer: ask it last next time."""
        with self._lock:
            if node in self.nodes:
                self.nodes.remove(node)
                self.nodes.append(node)


class _ClusterRouting(redis.connection.AbstractConnection):
    """What makes a connection cluster-aware; mixed into a redis-py connection class (below, twice).

    (It derives from redis-py's ``AbstractConnection`` only so that its
    ``super()`` calls, which reach the class it is mixed into, type-check.)

    On a cluster the connection goes to the primary serving the client's
    slot; on a single server it is its base class, having asked ``INFO
    cluster`` once per client. See the module docstring for the protocol.
    """

    def __init__(self, *, router: ClusterRouter, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.router = router
        self._epoch = -1

    def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        router = self.router
        if self._sock:
            return
        # Epoch first: a change meanwhile makes us stale. Set before the handshake's commands are sent.
        self._epoch, primary = router.epoch, router.primary
        try:
            if router.is_cluster is False:
                super().connect_check_health(check_health, retry_socket_connect)
            elif primary is not None:
                self._open(primary, check_health, retry_socket_connect)
            else:
                self._find_primary(check_health, retry_socket_connect)
        except BaseException as exc:
            self.disconnect()  # not left open on a node that may be the wrong one
            if not isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
                raise  # NOPERM for CLUSTER SLOTS, CLUSTERDOWN (no node serves the slot): as they are
            router.forget()
            if router.is_cluster and not isinstance(exc, redis.AuthenticationError):
                # Not explain()'s "nothing listening on <the URL's node>": that node may be fine.
                raise ClusterNodeDown(f"Valkey/Redis Cluster node {self.host}:{self.port} does not answer "
                                      f"({_reason(exc)}); if it served slot {router.slot}, a replica takes "
                                      "over after the cluster's cluster-node-timeout") from exc
            raise

    def _open(self, node: Address | None, check_health: bool, retry_socket_connect: bool) -> None:
        """Connect to ``node`` (None: the URL's own node, following the URL file if there is one)."""
        if node is None:
            super().connect_check_health(check_health, retry_socket_connect)
            return
        self.host, self.port = node
        self._connect_to_node(check_health, retry_socket_connect)

    def _connect_to_node(self, check_health: bool, retry_socket_connect: bool) -> None:
        """Connect to ``self.host``/``self.port``, an address the cluster gave."""
        super().connect_check_health(check_health, retry_socket_connect)

    def _find_primary(self, check_health: bool, retry_socket_connect: bool) -> None:
        """Ask the URL's node, then the other known ones, which primary serves our slot; connect to it."""
        router = self.router
        last: BaseException | None = None
        for index, node in enumerate(router.candidates()):
            try:
                self._open(None if index == 0 and router.is_cluster is None else node, check_health,
                           retry_socket_connect)
                if router.is_cluster is None and not self._cluster_enabled():
                    router.is_cluster = False  # a single server: this connection is the right one
                    return
                primary, nodes = self._slot_owner()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self.disconnect()
                router.demote(node)
                last = exc
                continue
            router.learn(primary, nodes)
            if (self.host, self.port) != primary:
                self.disconnect()
                self._open(primary, check_health, retry_socket_connect)
            return
        assert last is not None
        raise last

    def _ask(self, *args: object) -> Any:
        self.send_command(*args, check_health=False)
        return super().read_response()

    def _cluster_enabled(self) -> bool:
        text = self._ask("INFO", "cluster")
        return b"cluster_enabled:1" in (text if isinstance(text, bytes) else str(text).encode())

    def _slot_owner(self) -> tuple[Address, list[Address]]:
        """The primary serving our slot, and every node, from this node's ``CLUSTER SLOTS``.

        Each range is ``[start, end, [host, port, id, ...], replicas...]``; an
        empty or ``?`` host means "the address you reached me at".
        """
        owner: Address | None = None
        nodes: list[Address] = []
        for start, end, *servers in self._ask("CLUSTER", "SLOTS"):
            addresses = [(self._host_of(server[0]), int(server[1])) for server in servers]
            nodes += addresses
            if int(start) <= self.router.slot <= int(end) and addresses:
                owner = addresses[0]
        if owner is None:
            raise redis.exceptions.ClusterDownError(f"CLUSTERDOWN no node serves slot {self.router.slot}")
        return owner, nodes

    def _host_of(self, host: bytes | str) -> str:
        text = host.decode() if isinstance(host, bytes) else str(host)
        return self.host if text in ("", "?") else text

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if self._sock is not None and self._epoch != self.router.epoch:
            self.disconnect()  # opened before the router forgot our primary: reconnect (and look it up)
        super().send_packed_command(command, check_health)

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            reply = super().read_response(*args, **kwargs)
        except redis.exceptions.MovedError as exc:
            self._reconnect_later()
            self.router.moved(exc.slot_id, (exc.host, int(exc.port)))
            raise
        except _RELOOKUP_ERRORS:
            self._forget_primary()
            raise
        except redis.ResponseError as exc:
            if str(exc).split(" ", 1)[0] in _RELOOKUP_CODES:
                self._forget_primary()
            raise
        except (redis.ConnectionError, redis.TimeoutError):
            self.router.forget()
            raise
        if isinstance(reply, list) and reply and reply[0] == b"sunsubscribe":
            self._forget_primary()  # the server dropped a sharded subscription: its slot moved
        return reply

    def _reconnect_later(self) -> None:
        """This connection's server is the wrong one: reconnect before the next command (not now, in the
        middle of a pipeline's replies)."""
        if self.router.is_cluster is not False:
            self._epoch = -1

    def _forget_primary(self) -> None:
        self._reconnect_later()
        self.router.forget()


class ClusterAwareConnection(_ClusterRouting, GuardedConnection):
    """A ``redis://`` connection (guarded, see :class:`GuardedConnection`) that finds our slot's primary."""

    def _connect_to_node(self, check_health: bool, retry_socket_connect: bool) -> None:
        # Past GuardedConnection's URL-file follower: a cluster's addresses come from the cluster.
        super(GuardedConnection, self).connect_check_health(check_health, retry_socket_connect)


class ClusterAwareSSLConnection(_ClusterRouting, redis.SSLConnection, ListenerChecked):
    """A ``rediss://`` connection that finds our slot's primary (managed clusters mostly speak TLS).

    Every node's certificate is checked as redis-py checks the URL's own:
    against the CA and for the host name (the address the cluster gives for
    the node, so the certificate must name it, as managed offerings' do).
    Its TCP socket is :class:`ListenerChecked` before the handshake
    (redis-py's ``SSLConnection`` wraps what the next class's ``_connect`` returns).
    """

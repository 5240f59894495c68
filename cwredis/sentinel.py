"""High availability through Redis/Valkey Sentinel: ``redis+sentinel://`` URLs.

``redis+sentinel://[[USER]:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB]``
names a set of sentinels and the service (the primary's name in their
configuration) they watch. Every role connects through redis-py's Sentinel
support: each new connection asks the sentinels where the primary is now, so
after a failover the next connection goes to the promoted replica. The
URL's password goes to the sentinels and to the data nodes alike.

What this module adds to redis-py's:

* :class:`PrimaryConnection`: redis-py's ``SentinelManagedConnection``
  resolves the primary only in ``connect()``; a connection first used
  through ``send_packed_command`` (as :class:`cwredis.connection.Pinned` and
  ``Subscription`` do) would go to the pool's default ``localhost:6379``
  instead. Ours resolves it on every (re)connect, and like
  :class:`~cwredis.guarded.GuardedConnection` sends the password on a
  loopback address only to a listener of our own uid.
* Replica acknowledgement: a submit batch and a worker's outcome batch are
  acknowledged (a submit returns, an outcome is taken as recorded) only after
  ``WAIT 1`` says a replica has them, so one that was acknowledged survives
  the loss of the primary. :func:`check_acknowledged` turns a ``WAIT`` that
  timed out into :class:`NotReplicatedError`, a transient error: the caller
  sends the batch again (submits are idempotent by job id, outcomes fenced
  by attempt token) until a replica confirms it.
* :class:`PrimaryWatch`: tells the coordinator when the primary changed, so
  that it waits one lease before declaring workers dead (their last lease
  renewals may not have reached the promoted replica).

``WAIT`` is sent only on this path; the embedded server's ACL
(:mod:`cwredis.acl`) does not list it because no role ever reaches the
embedded server through sentinels.
"""

from __future__ import annotations

import logging
import time
from typing import Any, NamedTuple
from urllib.parse import unquote

import redis
from redis.sentinel import MasterNotFoundError, Sentinel, SentinelConnectionPool, SentinelManagedConnection

from .config import mask_url
from .connection import describe
from .guarded import GuardedConnection
from .errors import ConfigError

log = logging.getLogger("cwredis")

SCHEME = "redis+sentinel"
#: A sentinel's port when the URL gives none (Sentinel's own default).
DEFAULT_SENTINEL_PORT = 26379
#: Seconds a sentinel may take to answer "where is the primary?" before the next one is asked:
#: short, so that one unreachable sentinel host does not hold up every reconnect.
SENTINEL_TIMEOUT_S = 2.0
#: How long ``WAIT 1`` waits for a replica to confirm a batch. Normally it answers within a
#: millisecond or two; past this the batch counts as not acknowledged and is sent again.
#: Below every socket timeout of the roles (a worker's calls get 3 s), so WAIT never looks
#: like a dead connection.
REPLICA_ACK_TIMEOUT_MS = 1000
#: Replicas that must confirm a batch before it is acknowledged.
REPLICAS_TO_ACK = 1


class SentinelUrl(NamedTuple):
    """A parsed ``redis+sentinel://`` URL."""

    sentinels: list[tuple[str, int]]
    service: str
    db: int
    username: str | None
    password: str | None


class NotReplicatedError(redis.exceptions.ConnectionError):
    """``WAIT`` timed out with no replica confirming a batch: not acknowledged, to be sent again.

    A ConnectionError so that every role's existing handling applies: it is
    transient (:func:`cwredis.connection.is_transient`), logged once per
    outage, retried with back-off.
    """


def is_sentinel_url(url: str) -> bool:
    """True for a ``redis+sentinel://`` URL (read without urllib, which raises on some malformed URLs)."""
    return url.partition("://")[0].lower() == SCHEME


def parse(url: str) -> SentinelUrl:
    """The parts of a ``redis+sentinel://`` URL; ConfigError (naming the URL masked) if malformed."""
    def bad(why: str) -> ConfigError:
        return ConfigError(f"invalid Sentinel URL {mask_url(url)}: {why} (expected "
                           f"{SCHEME}://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE[/DB])")

    scheme, _, rest = url.partition("://")
    if scheme.lower() != SCHEME:
        raise bad(f"the scheme must be {SCHEME}")
    # By hand, not urlsplit: the user info runs to the *last* '@' (as redis-py reads its own URLs), so a
    # password may hold '/', '?', '#' or '@' -- and no piece of it can end up in a message below.
    userinfo, at, located = rest.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    hosts, _, path_text = located.partition("/")
    if "?" in path_text or "#" in path_text or "?" in hosts or "#" in hosts:
        raise bad("it takes no query or fragment")
    sentinels = [_host_port(item, bad) for item in hosts.split(",")]
    path = [piece for piece in path_text.split("/") if piece]
    if not path or len(path) > 2:
        raise bad("the path must be /SERVICE or /SERVICE/DB")
    db = 0
    if len(path) == 2:
        if not path[1].isdigit():
            raise bad(f"the database {path[1]!r} is not a number")
        db = int(path[1])
    return SentinelUrl(sentinels, unquote(path[0]), db, username, password)


def _host_port(item: str, bad: Any) -> tuple[str, int]:
    """One ``HOST[:PORT]`` of the sentinel list (``[v6]:PORT`` too)."""
    item = item.strip()
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else rest
    else:
        host, _, port_text = item.rpartition(":") if ":" in item else (item, "", "")
    if not host:
        raise bad(f"a sentinel address {item!r} has no host")
    if port_text and not (port_text.isdigit() and 0 < int(port_text) < 65536):
        raise bad(f"the port of {item!r} is not a port number")
    return host, int(port_text) if port_text else DEFAULT_SENTINEL_PORT


def describe_set(url: str) -> str:
    """``the Sentinel set H:P,H:P (service S)``, for messages; the URL masked if it does not parse."""
    try:
        parsed = parse(url)
    except ConfigError:
        return mask_url(url)
    where = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in parsed.sentinels)
    return f"the Sentinel set {where} (service {parsed.service})"


def explain(exc: BaseException, url: str) -> str | None:
    """Why connecting through the sentinels failed, in a user's words; None if nothing specific to say.

    By exception class: redis-py raises MasterNotFoundError when no sentinel
    answered with a primary that is up; any other connection error came from
    the primary they named.
    """
    if isinstance(exc, MasterNotFoundError):
        return (f"no sentinel of {describe_set(url)} named a primary that is up: the sentinels are down or "
                "unreachable, the service name is wrong, they refuse the password, or a failover is under way")
    if isinstance(exc, NotReplicatedError):
        return f"{describe(exc)} (are the replicas of {describe_set(url)} up and in sync?)"
    if isinstance(exc, redis.ConnectionError) and not isinstance(exc, redis.AuthenticationError):
        return f"{describe(exc)} (at the primary that {describe_set(url)} named; a failover may be under way)"
    return None


class PrimaryConnection(SentinelManagedConnection, GuardedConnection):
    """A connection to the service's current primary, asked of the sentinels on every (re)connect.

    See the module docstring for why redis-py's own class is not enough.
    GuardedConnection (no URL file here: ``follower`` stays None) checks who
    listens on a loopback address before the password goes out.
    """

    def connect(self) -> None:
        self.connect_check_health(check_health=True, retry_socket_connect=False)

    def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if self._sock:
            return
        self.host, self.port = self.connection_pool.get_master_address()
        super().connect_check_health(check_health, retry_socket_connect)


class GuardedSentinel(Sentinel):
    """redis-py's Sentinel manager whose connections to the sentinels are guarded like the data nodes'
    (:class:`GuardedConnection`: the password goes to the sentinels too). redis-py's ``Redis()`` takes no connection class, so each sentinel's
    client is built here on a pool of its own."""

    def __init__(self, sentinels: list[tuple[str, int]], sentinel_kwargs: dict[str, Any]) -> None:
        super().__init__(sentinels, sentinel_kwargs=sentinel_kwargs)
        self.sentinels = [redis.Redis(connection_pool=redis.ConnectionPool(
            host=host, port=port, connection_class=GuardedConnection, **sentinel_kwargs))
            for host, port in sentinels]


def connect(url: str, role: str, options: dict[str, Any]) -> redis.Redis:
    """A client for the primary of the Sentinel set ``url`` names, with the connection ``options`` every role
    uses (timeouts, no retries, its client name)."""
    parsed = parse(url)
    auth = {"username": parsed.username, "password": parsed.password}
    sentinel_options = {**auth, "socket_connect_timeout": SENTINEL_TIMEOUT_S, "socket_timeout": SENTINEL_TIMEOUT_S,
                        "client_name": f"cwredis-{role}", "retry": options["retry"]}
    manager = GuardedSentinel(parsed.sentinels, sentinel_options)
    pool = SentinelConnectionPool(parsed.service, manager, connection_class=PrimaryConnection, db=parsed.db,
                                  **auth, **options)
    return redis.Redis(connection_pool=pool)


def needs_replica_ack(client: redis.Redis) -> bool:
    """True if ``client`` goes through sentinels: its batches then wait for a replica (``WAIT``)."""
    return isinstance(client.connection_pool, SentinelConnectionPool)


#: The command sent after a batch, on the same connection (WAIT counts that connection's writes).
WAIT_COMMAND: tuple[object, ...] = ("WAIT", REPLICAS_TO_ACK, REPLICA_ACK_TIMEOUT_MS)


def check_acknowledged(replicas: Any, what: str) -> None:
    """NotReplicatedError unless ``WAIT``'s reply says enough replicas have ``what``."""
    if int(replicas) < REPLICAS_TO_ACK:
        raise NotReplicatedError(f"no replica confirmed {what} within {REPLICA_ACK_TIMEOUT_MS} ms (WAIT "
                                 f"{REPLICAS_TO_ACK} answered {int(replicas)}): not acknowledged, sending it again")


class PrimaryWatch:
    """Notices that a client's primary changed (a failover) and says for how long to hold off.

    The hold lasts ``hold_s`` from the change, and from the end of any
    outage during it: a promoted replica refuses writes (NOREPLICAS) until a
    replica of its own is in sync, and workers cannot renew their leases
    before then either. Reads the address redis-py's Sentinel pool last
    resolved (no round trip); for any other client it never holds.
    """

    def __init__(self, client: redis.Redis, hold_s: float) -> None:
        pool = client.connection_pool
        self._pool = pool if isinstance(pool, SentinelConnectionPool) else None
        self._hold_s = hold_s
        self._known: tuple[str, int] | None = None
        self._hold_until = 0.0

    def holding(self) -> bool:
        """True while less than ``hold_s`` has passed since the primary was seen to change (or an outage
        during the hold ended)."""
        now = time.monotonic()
        self._notice_change(now)
        return now < self._hold_until

    def failed(self) -> None:
        """A call failed: a hold under way (or starting now) lasts ``hold_s`` past this moment."""
        now = time.monotonic()
        self._notice_change(now)
        if now < self._hold_until:
            self._hold_until = now + self._hold_s

    def _notice_change(self, now: float) -> None:
        current = self._pool.master_address if self._pool is not None else None
        if current is None or current == self._known:
            return
        if self._known is not None:
            self._hold_until = now + self._hold_s
            log.warning("the primary moved from %s:%s to %s:%s (a failover): not declaring workers dead until "
                        "%.1fs after it takes writes (one lease)", *self._known, *current, self._hold_s)
        self._known = current

"""Opening Redis connections, and telling a passing error from a lasting one.

Only this layer, :mod:`cwredis.reachability` (first contact, back-off, the
words for a failure) and the loops that call :func:`is_transient` deal with
``redis.ConnectionError``. redis-py's own automatic retries are switched off:
re-sending a script whose reply was lost could run it twice; every role
instead retries on its own terms (fenced or idempotent steps, reconciliation
after a reconnect).

Who a connection may send the password to, and following the URL file to a
moved server, is :mod:`cwredis.guarded`'s.
"""

from __future__ import annotations

import logging
import threading
from typing import Any
from urllib.parse import urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from . import config
from .cluster import ClusterAwareConnection, ClusterAwareSSLConnection, ClusterRouter
from .config import mask_url
from .errors import ConfigError
from .guarded import GuardedConnection, UrlFollower
from .wire import PACKER

log = logging.getLogger("cwredis")

#: Seconds a connection attempt may take; also the read timeout of normal
#: commands (blocking calls pass their own, longer one).
SOCKET_TIMEOUT_S = 10.0

#: redis-py's exception classes for replies that mean "the server is away, busy or full for now".
#: (LOADING comes as BusyLoadingError, a ConnectionError; MASTERDOWN as MasterDownError, a
#: ClusterDownError; a refused password as AuthenticationError, also a ConnectionError: a
#: restarted embedded server or a new allocation may bring the right one, so the long-running
#: roles keep retrying, and check_reachable reports it at start.)
_TRANSIENT_CLASSES: tuple[type[BaseException], ...] = (
    redis.exceptions.ConnectionError,   # connection refused/reset, LOADING, a refused password
    redis.exceptions.TimeoutError,
    redis.exceptions.NoScriptError,     # a restarted server lost the scripts; Scripts has reloaded them
    redis.exceptions.OutOfMemoryError,  # OOM: at maxmemory; see is_server_full
    redis.exceptions.ReadOnlyError,     # READONLY: a failover made our server a replica
    redis.exceptions.TryAgainError,     # TRYAGAIN: a cluster slot is being migrated
    redis.exceptions.ClusterDownError,  # CLUSTERDOWN, and MASTERDOWN (a replica lost its master)
    redis.exceptions.AskError,          # MOVED/ASK: the slot moved; the next connection follows (cwredis.cluster)
)

#: Reply error codes redis-py 8 has no class for, which also mean "for now": BUSY (a script
#: runs past its time limit; everything waits for it), MISCONF (the server cannot persist
#: and refuses writes until its disk is fixed), and the failover family: NOREPLICAS (the
#: primary has fewer replicas in sync than min-replicas-to-write asks), UNBLOCKED (a blocking
#: read was cut short because the server became a replica). redis-py raises these as a bare ResponseError
#: whose text begins with the code -- the RESP error code, the same word redis-py itself maps
#: to a class, never the prose after it. Any other error reply (WRONGTYPE, NOPERM, a script's
#: own error, CROSSSLOT, which one namespace's keys never cause) is permanent.
_TRANSIENT_UNCLASSED_CODES = frozenset({"BUSY", "MISCONF", "NOREPLICAS", "UNBLOCKED"})


def connect(url: str, role: str) -> redis.Redis:
    """A client for ``url`` whose connections are named ``cwredis-<role>``; ConfigError if the URL is bad.

    ``redis://`` and ``unix://`` connections are guarded (:class:`~cwredis.guarded.GuardedConnection`):
    they check who listens on a loopback address before sending the password
    and, for a URL from the URL file, follow that file to a new address or
    password. ``rediss://`` connections check the listener too (the
    certificate proves who the server is only when it is verified, and
    ``?ssl_cert_reqs=none`` turns that off). A ``redis://`` or ``rediss://``
    URL may name any node of a Cluster: its connections then go to the
    primary of the namespace's slot (:mod:`cwredis.cluster`).
    """
    options: dict[str, Any] = {
        "client_name": f"cwredis-{role}", "socket_connect_timeout": SOCKET_TIMEOUT_S,
        "socket_timeout": SOCKET_TIMEOUT_S, "socket_keepalive": True, "health_check_interval": 0,
        "retry": Retry(NoBackoff(), 0), "retry_on_error": [],
        "command_packer": PACKER}  # large arguments go out uncopied (cwredis.wire)
    if sentinel.is_sentinel_url(url):
        return sentinel.connect(url, role, options)
    scheme = url.partition("://")[0].lower()  # not urlsplit: it raises on some bad URLs
    if scheme in ("redis", "unix"):
        options["connection_class"] = GuardedConnection
        if scheme == "redis":  # any node of a Valkey/Redis Cluster, detected at the first connect
            options["connection_class"] = ClusterAwareConnection
            options["router"] = ClusterRouter(_host_port(url))
        if isinstance(url, config.UrlFromFile):
            options["follower"] = UrlFollower(url)
    elif scheme == "rediss":  # TLS, to a single server or any node of a cluster
        options["connection_class"] = ClusterAwareSSLConnection
        options["router"] = ClusterRouter(_host_port(url))
    try:
        return redis.Redis.from_url(url, **options)
    except ValueError as exc:
        raise ConfigError(f"invalid Redis URL {mask_url(url)}: {exc}") from None


def is_transient(exc: BaseException) -> bool:
    """True for errors that mean 'Redis is away, busy or full for now': retry later.

    The one place errors are classified, by redis-py's exception class (see
    _TRANSIENT_CLASSES); a server at its memory limit is transient here -- a
    role retries until the cluster drains -- and :func:`is_server_full` tells
    a submit to refuse the job instead.
    """
    if isinstance(exc, _TRANSIENT_CLASSES):
        return True
    if type(exc) is redis.exceptions.ResponseError:  # a reply error redis-py has no class for
        return _error_code(exc) in _TRANSIENT_UNCLASSED_CODES
    return False


def is_server_full(exc: BaseException) -> bool:
    """True if the server refused a command for being at its memory limit (maxmemory, noeviction)."""
    return isinstance(exc, redis.exceptions.OutOfMemoryError)


#: What redis-py puts before an error reply raised from a pipeline (``Pipeline.annotate_exception``:
#: ``Command # N (COMMAND ARGS...) of pipeline caused error: REPLY``); the reply's code follows it.
_PIPELINE_PREFIX, _PIPELINE_ANNOTATION = "Command # ", " of pipeline caused error: "


def _error_code(exc: redis.exceptions.ResponseError) -> str:
    """The RESP error code of a reply error redis-py raised as a bare ResponseError (its first word,
    after redis-py's annotation if it came from a pipeline: a NOREPLICAS during a failover often does)."""
    text = str(exc.args[0]) if exc.args else ""
    if text.startswith(_PIPELINE_PREFIX):
        text = text.partition(_PIPELINE_ANNOTATION)[2]
    return text.split(" ", 1)[0]


def describe(exc: BaseException) -> str:
    """One line for the log: the error without redis-py's noise."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"{type(exc).__name__}: {text}"


def unpooled_connection(client: redis.Redis) -> Any:
    """A new connection with the settings (and class) of ``client``'s pool, which the pool does not count.

    redis-py's ``make_connection()`` counts each connection it makes against
    the pool's ``max_connections`` (100) and only a ``release()`` through the
    pool counts it off; :class:`Pinned` and :class:`Subscription` keep their
    connections outside the pool and make a new one after every outage (a
    failover, a restart), so a long-lived client would hit "Too many
    connections" after its hundredth.
    """
    pool = client.connection_pool
    return pool.connection_class(**pool.connection_kwargs)


class Pinned:
    """One connection of a client's pool, kept for the calls on a job's latency path.

    redis-py's command path (pool checkout and its checks, the retry wrapper,
    instrumentation) costs about as much CPU as a loopback round trip, and a
    job's way from submit to callback crosses it several times. These calls
    send packed commands on a connection of their own instead, serialised by
    a lock. A reply error is raised as redis-py would; any other error drops
    the connection (the next call opens a new one) and is raised for the
    caller to handle as before.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._conn: Any = None  # a redis.connection.Connection (or SSLConnection), once opened
        self._lock = threading.Lock()

    def execute(self, *args: object) -> object:
        """One command's reply."""
        return self.pipeline([args])[0]

    def pipeline(self, commands: list[tuple[object, ...]]) -> list[object]:
        """Send commands in one write, read every reply; the first error reply is raised after all are read."""
        with self._lock:
            if self._conn is None:
                self._conn = unpooled_connection(self._client)
            conn = self._conn
            try:
                conn.send_packed_command(conn.pack_commands(commands), check_health=False)
                replies: list[object] = []
                for _ in commands:
                    try:
                        replies.append(conn.read_response())
                    except redis.ResponseError as exc:
                        replies.append(exc)
            except BaseException:
                self._conn = None
                conn.disconnect()
                raise
        for reply in replies:
            if isinstance(reply, redis.ResponseError):
                raise reply
        return replies

    def send(self, *args: object) -> int:
        """Send one command without reading its reply; the socket's file descriptor, to wait on with others.

        For a blocking read (a parked job process's BLMPOP) waited for beside
        a pipe: :meth:`receive` reads the reply once the descriptor is readable.
        """
        with self._lock:
            if self._conn is None:
                self._conn = unpooled_connection(self._client)
            conn = self._conn
            try:
                conn.send_packed_command(conn.pack_command(*args), check_health=False)
                return int(conn._sock.fileno())  # redis-py keeps its socket private; we only poll it
            except BaseException:
                self._conn = None
                conn.disconnect()
                raise

    def receive(self) -> object:
        """The reply to the command :meth:`send` sent (blocks until it is there)."""
        with self._lock:
            conn = self._conn
            if conn is None:
                raise redis.ConnectionError("the connection closed before the reply was read")
            try:
                return conn.read_response()
            except redis.ResponseError:
                raise
            except BaseException:
                self._conn = None
                conn.disconnect()
                raise

    def batch(self) -> "Batch":
        return Batch(self)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.disconnect()
                self._conn = None


class Batch:
    """Commands gathered for one :meth:`Pinned.pipeline` call, with the ``evalsha`` of a redis-py pipeline."""

    def __init__(self, pinned: Pinned) -> None:
        self._pinned = pinned
        self.commands: list[tuple[object, ...]] = []

    def evalsha(self, sha: str, numkeys: int, *args: object) -> "Batch":
        self.commands.append(("EVALSHA", sha, numkeys, *args))
        return self

    def execute_command(self, *args: object) -> "Batch":
        self.commands.append(args)
        return self

    def execute(self) -> list[object]:
        return self._pinned.pipeline(self.commands)


class Subscription:
    """A connection subscribed to one channel, read directly (for the reason given at :class:`Pinned`).

    A sharded channel (SSUBSCRIBE; the scripts SPUBLISH): on a Cluster it
    lives on the shard of the namespace's slot (its name carries the hash
    tag), on a single server it behaves as plain pub/sub.

    The subscription is confirmed before the constructor returns, so what is
    published from then on is seen. Any error drops the connection; make a
    new Subscription. So does the server ending it (a Cluster whose slot
    moved to another shard, a failover): ``next`` raises ConnectionError.
    """

    def __init__(self, client: redis.Redis, channel: str) -> None:
        self._conn: Any = unpooled_connection(client)
        try:
            self._conn.send_command("SSUBSCRIBE", channel, check_health=False)
            self._conn.read_response(push_request=True)  # ["ssubscribe", channel, 1]
        except BaseException:
            self._conn.disconnect()
            raise

    def next(self, timeout: float) -> bytes | None:
        """The data of the next message published, or None if none came within ``timeout`` seconds."""
        try:
            if not self._conn.can_read(timeout=timeout):
                return None
            reply = self._conn.read_response(push_request=True)  # pub/sub messages come as pushes
        except BaseException:
            self._conn.disconnect()
            raise
        if isinstance(reply, list) and len(reply) == 3 and reply[0] == b"smessage":
            return reply[2]  # type: ignore[no-any-return]
        if isinstance(reply, list) and reply and reply[0] == b"sunsubscribe":
            self._conn.disconnect()
            raise redis.ConnectionError("the server ended the subscription (its slot moved to another shard)")
        return None

    def close(self) -> None:
        self._conn.disconnect()


def _host_port(url: str) -> tuple[str, int]:
    try:
        parts = urlsplit(url)
    except ValueError:  # an unclosed IPv6 bracket: from_url says so, masked
        return "localhost", 6379
    try:
        return parts.hostname or "localhost", parts.port or 6379
    except ValueError:  # a bad port: from_url says so, naming the URL
        return parts.hostname or "localhost", 6379


def setup_logging(level: str | None = None) -> None:
    """Role processes log one line per event to stderr."""
    import os

    logging.basicConfig(
        level=(level or os.environ.get("CWREDIS_LOG_LEVEL") or "INFO").upper(),
        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s",
    )


# Last: cwredis.sentinel uses describe() above; connect() dispatches to it.
from . import sentinel  # noqa: E402

"""Reaching the server, and what a role says and does while it cannot.

A client's first contact (:func:`check_can_start`: a clear error within a few
seconds instead of a hang), the connection-budget warning every role gives at
start, the back-off a long-running role rides an outage out with
(:class:`Reconnector`), and :func:`explain`: why a connection failed, in a
user's words, with the likely fix. :mod:`cwredis.connection` makes the
connections; this module is about their absence.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any, Callable, TypeVar
from urllib.parse import urlsplit

import redis
from redis.backoff import EqualJitterBackoff
from redis.connection import parse_url

from . import config, sentinel
from .config import mask_url
from .connection import SOCKET_TIMEOUT_S, Pinned, describe, is_transient
from .errors import ConfigError
from .errors import ConnectionError as CwConnectionError

T = TypeVar("T")
log = logging.getLogger("cwredis")


class LastingError:
    """An error a loop keeps meeting that retrying does not fix (the server refusing a command, say), while
    it lasts: a client's results thread notes it here, and a caller waiting for outcomes raises it
    (:meth:`raise_if_stuck`) instead of waiting for ever."""

    def __init__(self, who: str) -> None:
        self._who = who  # for the message: "client <id>"
        self.error: Exception | None = None
        self.count = 0  # met in a row

    def met(self, exc: Exception) -> bool:
        """Note ``exc``; True if it is not the one met last time (log it then, not at every retry)."""
        new = self.error is None or describe(self.error) != describe(exc)
        self.error, self.count = exc, self.count + 1
        return new

    def cleared(self) -> None:
        """The loop went round without one."""
        self.error, self.count = None, 0

    def raise_if_stuck(self, since: int) -> None:
        """ConnectionError if the error was met twice in a row, at least once after ``since`` (a ``count``
        read when the caller began to wait): outcomes cannot be read, so waiting would never end. The
        jobs and their outcomes are kept; once the cause is fixed, the loop's next retry reads them, and a
        new wait goes on (it counts only what was met after it began)."""
        exc = self.error
        if exc is not None and self.count >= max(since + 1, 2):  # not a one-off, and not only before
            hint = (" -- the Redis user lacks a command cwredis needs (cwredis/acl.py lists them)"
                    if isinstance(exc, redis.exceptions.NoPermissionError) else "")
            raise CwConnectionError(f"{self._who}: outcomes cannot be read from Redis: {describe(exc)}{hint}")


class Reconnector:
    """Back-off with logging for one role's connection to one URL.

    ``failed(exc)`` logs (once per outage at WARNING, with its cause, then
    quietly) and sleeps with exponential back-off (not before the first
    retry); ``succeeded()`` logs the
    reconnect. Sleeping stops early when ``stop`` is set.

    Why not redis-py's ``Retry(ExponentialBackoff(), n)`` on the connection:
    it retries inside one command, where our stop signal cannot end the
    sleep (every role must stop within 5 s, outage or not); it logs nothing,
    so an outage and its cause would be silent; and it applies to every
    command alike, while we decide per call what may be repeated (a submit's
    script is idempotent, a claim's is reconciled afterwards). The delays
    themselves are redis-py's ``EqualJitterBackoff``: doubling, capped, with
    jitter so that many workers do not reconnect to a restarted server in
    lockstep.
    """

    def __init__(self, url: str, role: str, stop: threading.Event | None = None) -> None:
        self._raw_url = url  # for explain(): which host, whether a password was given
        self.url = mask_url(url)
        self.role = role
        self.stop = stop or threading.Event()
        # redis-py's back-off arithmetic; the loop stays ours (see the class docstring).
        self._backoff = EqualJitterBackoff(cap=config.RECONNECT_MAX_S, base=config.RECONNECT_MIN_S)
        self._failures = 0
        self._down_since: float | None = None
        self._lock = threading.Lock()

    def failed(self, exc: BaseException, *, sleep: bool = True) -> float:
        """Note a failed call and log it; sleep the back-off (unless ``sleep`` is False); return the back-off."""
        with self._lock:
            first = self._down_since is None
            if first:
                self._down_since = time.monotonic()
            # The first retry goes at once: a killed or timed-out connection is usually replaced by the
            # next one (a server that is really away refuses it as fast); back-off starts with the second.
            delay = self._backoff.compute(self._failures - 1) if self._failures else 0.0
            self._failures += 1
        if first:
            log.warning("%s: cannot reach Redis at %s: %s (retrying with back-off)",
                        self.role, self.url, explain(exc, self._raw_url))
        else:
            log.debug("%s: still cannot reach %s (%s)", self.role, self.url, describe(exc))
        if sleep:
            self.stop.wait(delay)
        return delay

    def succeeded(self) -> bool:
        """Record a working call; True if this ends an outage."""
        if self._down_since is None:
            return False
        with self._lock:
            if self._down_since is None:
                return False
            seconds = time.monotonic() - self._down_since
            self._down_since = None
            self._failures = 0
        log.warning("%s: reconnected to %s after %.1fs", self.role, self.url, seconds)
        return True

    def call(self, fn: Callable[[], T], retry_if: Callable[[BaseException], bool] | None = None) -> T:
        """Run ``fn`` until it works, riding out transient errors (those ``retry_if`` also accepts)."""
        while True:
            try:
                result = fn()
            except Exception as exc:
                if not is_transient(exc) or self.stop.is_set() or (retry_if is not None and not retry_if(exc)):
                    raise
                self.failed(exc)
                continue
            self.succeeded()
            return result


def explain(exc: BaseException, url: str) -> str:
    """Why connecting to ``url`` failed, in a user's words, with the likely fix.

    Decided by exception class (redis-py's, and the socket error it wraps as
    its ``__context__``), never by message text, which redis-py versions word
    differently.
    """
    where = _address(url)
    if sentinel.is_sentinel_url(url) and (said := sentinel.explain(exc, url)) is not None:
        return said
    if isinstance(exc, redis.AuthenticationError):
        if _has_password(url):
            return "wrong password (check the password in the URL, $CWREDIS_URL or $CWREDIS_HOME/url)"
        return "the server needs a password and the URL has none (redis://:PASSWORD@HOST:PORT/0)"
    cause = exc.__context__ or exc.__cause__
    if isinstance(cause, socket.gaierror):
        return f"unknown host {urlsplit(url).hostname!r} (check the host name in the URL)"
    if isinstance(cause, (ConnectionRefusedError, FileNotFoundError)):
        return f"nothing listening on {where}: is cw-coordinator running?"
    if isinstance(exc, redis.TimeoutError):
        return f"no answer from {where} within {SOCKET_TIMEOUT_S:g}s (wrong port, or a firewall in the way?)"
    if isinstance(exc, redis.exceptions.AskError):  # MOVED/ASK: cwredis.cluster's connections follow it
        return (f"the Valkey/Redis Cluster moved slot {exc.slot_id} to {exc.host}:{exc.port} (a failover or "
                "resharding); following it")
    return describe(exc)


def _address(url: str) -> str:
    """``HOST:PORT`` (or the socket path) a URL points at, for messages."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    if sentinel.is_sentinel_url(url):
        return sentinel.describe_set(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"


def _has_password(url: str) -> bool:
    try:
        return bool(parse_url(url).get("password"))
    except ValueError:  # a form parse_url does not take (sentinel, cluster): assume one was given
        return True


def check_can_start(client: redis.Redis, url: str) -> None:
    """A client's first contact: cwredis.ConnectionError within about CLIENT_START_TIMEOUT_S unless the
    server answers. The answer (INFO clients) also tells whether it is near its connection limit.

    A refused connection is tried again until then (a server may be coming
    up); a refused password or an unknown host is not.
    """
    deadline = time.monotonic() + config.CLIENT_START_TIMEOUT_S
    # A black-holed host, or a listener that never answers, must not hold us for a full socket
    # timeout: the first contact gets CLIENT_START_TIMEOUT_S (later connections keep SOCKET_TIMEOUT_S).
    kwargs = client.connection_pool.connection_kwargs
    saved = {name: kwargs.get(name) for name in ("socket_connect_timeout", "socket_timeout")}
    for name, value in saved.items():
        kwargs[name] = min(value or SOCKET_TIMEOUT_S, config.CLIENT_START_TIMEOUT_S)
    try:
        info = _first_contact(client, url, deadline)
    finally:
        kwargs.update(saved)
        client.connection_pool.disconnect()  # its connection took the short timeouts: make a new one
    warn_if_near_connection_limit(info, "client")


def _first_contact(client: redis.Redis, url: str, deadline: float) -> dict[str, Any]:
    while True:
        try:
            return client.info("clients")  # type: ignore[no-any-return]
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            permanent = isinstance(exc, redis.AuthenticationError) or isinstance(exc.__context__, socket.gaierror)
            if permanent or time.monotonic() + 0.2 >= deadline:
                raise CwConnectionError(f"cannot connect to Redis at {mask_url(url)}: {explain(exc, url)}") from None
            time.sleep(0.2)


#: A role warns when the server has this share of its maxclients connections in use.
CONNECTION_BUDGET_WARN = 0.8


def check_connection_budget(client: redis.Redis, role: str) -> None:
    """At a role's start: read the server's connections in use and its ``maxclients`` (INFO clients)
    and warn when the cluster is near the limit (best effort: an INFO that fails is not an error here)."""
    try:
        warn_if_near_connection_limit(client.info("clients"), role)
    except redis.RedisError:
        pass


def warn_if_near_connection_limit(info: dict[str, Any], role: str) -> None:
    """Warn when INFO clients shows the server near ``maxclients``: past it, new workers and clients are
    refused. Fields missing or garbage: no warning."""
    try:
        used, limit = int(info["connected_clients"]), int(info["maxclients"])
    except (KeyError, ValueError, TypeError):
        return
    if limit and used >= CONNECTION_BUDGET_WARN * limit:
        log.warning("%s: the Redis server has %d of its %d connections in use; past that it refuses new "
                    "workers and clients (each worker takes 2 plus 1 per job process, each client 3): raise "
                    "the server's maxclients and its open-files limit (ulimit -n), or use fewer, larger "
                    "workers", role, used, limit)


def check_reachable(client: redis.Redis, url: str) -> None:
    """PING once; ConfigError with a one-line message naming the (masked) URL otherwise."""
    try:
        client.ping()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise ConfigError(f"cannot connect to Redis at {mask_url(url)}: {explain(exc, url)}") from None
    except redis.ResponseError as exc:
        raise ConfigError(f"Redis at {mask_url(url)} answered with an error: {describe(exc)}") from None


def memory_limit(pinned: Pinned) -> str:
    """The server's memory limit and use, as INFO reports them ("maxmemory 10.00M, 10.21M used").

    Best effort, for an error message: "the server's maxmemory" if INFO cannot be read.
    """
    try:
        reply = pinned.execute("INFO", "memory")
    except Exception:
        return "the server's maxmemory"
    text = reply.decode(errors="replace") if isinstance(reply, bytes) else str(reply)
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    limit, used = fields.get("maxmemory_human", "").strip(), fields.get("used_memory_human", "").strip()
    if not limit or fields.get("maxmemory", "").strip() == "0":
        return "the server's maxmemory"
    return f"maxmemory {limit}, {used} used" if used else f"maxmemory {limit}"

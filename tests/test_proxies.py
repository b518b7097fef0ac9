"""Trusted proxies (--trusted-proxy): X-Forwarded-For / Forwarded / X-Forwarded-Proto believed
from those peers only, as far as the right-most untrusted hop; spoofed headers change nothing."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest
from tornado.httputil import HTTPHeaders

from tornado_cfgpush.cli import UsageError, build_parser, settings_from
from tornado_cfgpush.proxies import TrustedProxies, forwarded_elements
from tornado_cfgpush.proxy_protocol import (
    V2_SIGNATURE,
    ProxyHeaderError,
    parse_v1,
    parse_v2,
    v1_header,
    v2_header,
    v2_length,
)
from tornado_cfgpush.testing import LISTENING, wait_for

from .rawsse import RawSSE
from .rawws import RawWebSocket


def _headers(**values: str | list[str]) -> HTTPHeaders:
    headers = HTTPHeaders()
    for name, value in values.items():
        for one in [value] if isinstance(value, str) else value:
            headers.add(name.replace("_", "-"), one)
    return headers


@pytest.mark.parametrize(
    ("trusted", "peer", "headers", "expected"),
    [
        # Not a trusted peer: whatever it says, the peer is the client.
        ((), "127.0.0.1", {"X_Forwarded_For": "198.51.100.1"}, ("127.0.0.1", None)),
        (
            ("10.0.0.0/8",),
            "127.0.0.1",
            {"X_Forwarded_For": "198.51.100.1", "X_Forwarded_Proto": "https"},
            ("127.0.0.1", None),
        ),
        # The proxy's client.
        (("127.0.0.1",), "127.0.0.1", {"X_Forwarded_For": "198.51.100.1"}, ("198.51.100.1", None)),
        # What the client wrote itself stays to the left of what the proxy appended.
        (("127.0.0.1",), "127.0.0.1", {"X_Forwarded_For": "6.6.6.6, 198.51.100.1"}, ("198.51.100.1", None)),
        (("127.0.0.1",), "127.0.0.1", {"X_Forwarded_For": ["6.6.6.6", "198.51.100.1"]}, ("198.51.100.1", None)),
        # A chain of trusted proxies is walked over.
        (
            ("127.0.0.1", "10.0.0.0/8"),
            "127.0.0.1",
            {"X_Forwarded_For": "6.6.6.6, 198.51.100.1, 10.1.2.3"},
            ("198.51.100.1", None),
        ),
        # Every hop trusted: the left-most.
        (("127.0.0.0/8",), "127.0.0.1", {"X_Forwarded_For": "127.0.0.5, 127.0.0.9"}, ("127.0.0.5", None)),
        # An unreadable hop: the proxy that wrote it is as far as can be seen.
        (("127.0.0.1",), "127.0.0.1", {"X_Forwarded_For": "198.51.100.1, unknown"}, ("127.0.0.1", None)),
        (("127.0.0.1",), "127.0.0.1", {"X_Forwarded_For": "198.51.100.1:4711"}, ("198.51.100.1", None)),
        # The scheme: the nearest proxy's X-Forwarded-Proto.
        (
            ("127.0.0.1",),
            "127.0.0.1",
            {"X_Forwarded_For": "198.51.100.1", "X_Forwarded_Proto": "https"},
            ("198.51.100.1", "https"),
        ),
        (("127.0.0.1",), "127.0.0.1", {"X_Forwarded_Proto": "http, https"}, ("127.0.0.1", "https")),
        (("127.0.0.1",), "127.0.0.1", {"X_Forwarded_Proto": "gopher"}, ("127.0.0.1", None)),
        # RFC 7239.
        (
            ("127.0.0.1",),
            "127.0.0.1",
            {"Forwarded": "for=192.0.2.60;proto=https;by=203.0.113.43"},
            ("192.0.2.60", "https"),
        ),
        (
            ("::1",),
            "::1",
            {"Forwarded": 'for=6.6.6.6, for="[2001:db8:cafe::17]:4711";proto=http'},
            ("2001:db8:cafe::17", "http"),
        ),
        (("127.0.0.1",), "127.0.0.1", {"Forwarded": "for=_hidden"}, ("127.0.0.1", None)),
        # X-Forwarded-For wins over Forwarded when both are there.
        (
            ("127.0.0.1",),
            "127.0.0.1",
            {"Forwarded": "for=6.6.6.6", "X_Forwarded_For": "198.51.100.1"},
            ("198.51.100.1", None),
        ),
        # An IPv4-mapped peer is its IPv4 address.
        (("127.0.0.1",), "::ffff:127.0.0.1", {"X_Forwarded_For": "198.51.100.1"}, ("198.51.100.1", None)),
    ],
)
def test_client_address_and_scheme(trusted, peer, headers, expected):
    assert TrustedProxies(trusted).client(peer, _headers(**headers)) == expected


def test_forwarded_elements_parse_quoted_values_and_skip_junk():
    found = forwarded_elements(['for="[::1]:80";proto=https, junk; for=1.2.3.4', 'for="a\\"b"'])
    assert found == [{"for": "[::1]:80", "proto": "https"}, {"for": "1.2.3.4"}, {"for": 'a"b'}]


def test_trusted_proxy_flag_is_repeatable_and_checked():
    args = build_parser().parse_args(["--trusted-proxy", "127.0.0.1", "--trusted-proxy", "10.0.0.0/8,::1"])
    assert settings_from(args, {}).trusted_proxies == ("127.0.0.1/32", "10.0.0.0/8", "::1/128")
    assert settings_from(
        build_parser().parse_args([]), {"CFGPUSH_TRUSTED_PROXY": "192.168.1.7/24"}
    ).trusted_proxies == ("192.168.1.0/24",)
    with pytest.raises(UsageError, match=r"--trusted-proxy: trusted proxy 'nginx' is not an IP address or network"):
        settings_from(build_parser().parse_args(["--trusted-proxy", "nginx"]), {})


async def _open(port: int, forwarded_for: str | None = None, more: str = "") -> RawWebSocket:
    headers = (f"X-Forwarded-For: {forwarded_for}\r\n" if forwarded_for else "") + more
    ws = await RawWebSocket.connect(port, "tenant_id=acme", extra_headers=headers)
    if ws.status == 101:
        assert "Welcome" in await ws.read_json()
    return ws


@pytest.mark.settings(trusted_proxies=("127.0.0.1",), max_connections_per_ip=1)
@pytest.mark.gen_test
async def test_behind_a_trusted_proxy_the_limit_and_logs_count_the_client(server_port, core, caplog):
    caplog.set_level(logging.INFO)
    opened = [await _open(server_port, "203.0.113.5"), await _open(server_port, "6.6.6.6, 203.0.113.6")]
    try:
        assert [ws.status for ws in opened] == [101, 101]
        assert core.limits.by_ip == {"203.0.113.5": 1, "203.0.113.6": 1}
        # The same client again, by WebSocket and by SSE: over its limit, whatever it prepends.
        again = await _open(server_port, "1.1.1.1, 203.0.113.5")
        sse = await RawSSE.connect(server_port, "tenant_id=acme", "X-Forwarded-For: 203.0.113.6\r\n")
        assert (again.status, sse.status) == (429, 429)
        again.close()
        sse.close()
        await wait_for(lambda: "refused /ws: 429 too many connections from your address (203.0.113.5)" in caplog.text)
        assert "101 GET /ws?tenant_id=acme (203.0.113.6)" in caplog.text  # the test app logs the query
    finally:
        for ws in opened:
            ws.close()
    await wait_for(lambda: core.limits.by_ip == {})


@pytest.mark.parametrize(
    "trusted",
    [
        pytest.param((), marks=pytest.mark.settings(max_connections_per_ip=1)),
        pytest.param(
            ("10.0.0.0/8", "::1"),
            marks=pytest.mark.settings(trusted_proxies=("10.0.0.0/8", "::1"), max_connections_per_ip=1),
        ),
    ],
)
@pytest.mark.gen_test
async def test_spoofed_forwarding_headers_from_an_untrusted_peer_change_nothing(server_port, core, trusted, caplog):
    caplog.set_level(logging.INFO)
    assert core.settings.trusted_proxies == trusted
    first = await _open(server_port, "203.0.113.5", "Forwarded: for=203.0.113.7\r\nX-Forwarded-Proto: https\r\n")
    second = await _open(server_port, "203.0.113.8")
    try:
        assert (first.status, second.status) == (101, 429)
        assert core.limits.by_ip == {"127.0.0.1": 1}
        await wait_for(lambda: "(127.0.0.1)" in caplog.text and "203.0.113" not in caplog.text)
    finally:
        first.close()
        second.close()
    await wait_for(lambda: core.limits.by_ip == {})


# -- the PROXY protocol (--proxy-protocol) ------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"PROXY TCP4 198.51.100.1 10.0.0.1 40000 7945\r\n", ("198.51.100.1", 40000)),
        (b"PROXY TCP6 2001:db8::1 ::1 40000 7945\r\n", ("2001:db8::1", 40000)),
        (b"PROXY UNKNOWN\r\n", None),
        (b"PROXY UNKNOWN whatever follows\r\n", None),
    ],
)
def test_proxy_v1_lines(line, expected):
    assert parse_v1(line) == expected


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 198.51.100.1 10.0.0.1 40000\r\n",
        b"PROXY TCP4 2001:db8::1 10.0.0.1 40000 7945\r\n",
        b"PROXY TCP4 198.51.100.300 10.0.0.1 40000 7945\r\n",
        b"PROXY TCP4 198.51.100.1 10.0.0.1 70000 7945\r\n",
        b"PROXY UDP4 198.51.100.1 10.0.0.1 1 2\r\n",
        b"PROXY TCP4 198.51.100.1 10.0.0.1 1 2\n",
    ],
)
def test_proxy_v1_bad_lines(line):
    with pytest.raises(ProxyHeaderError):
        parse_v1(line)


def test_proxy_v2_round_trip_local_and_bad():
    for client in (("198.51.100.1", 40000), ("2001:db8::1", 1)):
        header = v2_header(client, ("::1" if ":" in client[0] else "10.0.0.1", 7945))
        assert parse_v2(header[:16], header[16 : 16 + v2_length(header[:16])]) == client
    local = V2_SIGNATURE + bytes([0x20, 0x00, 0, 0])
    assert v2_length(local) == 0 and parse_v2(local, b"") is None
    with pytest.raises(ProxyHeaderError, match="version or command"):
        v2_length(V2_SIGNATURE + bytes([0x31, 0x11, 0, 12]))
    with pytest.raises(ProxyHeaderError, match="too many"):
        v2_length(V2_SIGNATURE + bytes([0x21, 0x11, 0xFF, 0xFF]))


async def _raw_upgrade(port: int, prefix: bytes, source: str = "127.0.0.1") -> bytes:
    """A WebSocket upgrade after ``prefix`` from ``source``: the status line, or b"" when the
    server closed the connection without an answer."""
    sock = socket.socket()
    sock.bind((source, 0))
    sock.setblocking(False)
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        request = (
            f"GET /ws?tenant_id=acme HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        await loop.sock_sendall(sock, prefix + request.encode())
        try:
            async with asyncio.timeout(15):
                answer = await loop.sock_recv(sock, 4096)
        except ConnectionResetError:  # closed with our bytes unread: a reset, no answer either
            return b""
        return answer.split(b"\r\n", 1)[0]
    finally:
        sock.close()


@pytest.mark.gen_test(timeout=90)
async def test_proxy_protocol_from_a_trusted_balancer_only(start, config_dir):
    server = start(
        "--port", "0", "--config-dir", str(config_dir), "--trusted-proxy", "127.0.0.1",
        "--proxy-protocol", "--max-connections-per-ip", "1",
    )  # fmt: skip
    port = int((await server.wait_log(LISTENING)).group(1))
    here = ("127.0.0.1", port)
    held = []
    try:
        # v1 and v2 name two clients: each gets its connection; the same client again is over
        # its limit, whichever version names it.
        for header in (v1_header(("198.51.100.1", 40000), here), v2_header(("2001:db8::7", 40001), here)):
            sock = socket.create_connection(here)
            held.append(sock)
            sock.sendall(
                header + b"GET /ws?tenant_id=acme HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            assert (await asyncio.to_thread(sock.recv, 4096)).startswith(b"HTTP/1.1 101")
        assert await _raw_upgrade(port, v1_header(("198.51.100.1", 40002), here)) == b"HTTP/1.1 429 Too Many Requests"
        assert await _raw_upgrade(port, v2_header(("2001:db8::7", 40003), here)) == b"HTTP/1.1 429 Too Many Requests"
        await server.wait_log(r"refused /ws \(2001:db8::7\): ip limit reached")
        # From the trusted balancer, no header or a bad one: closed without an answer.
        assert await _raw_upgrade(port, b"") == b""
        assert await _raw_upgrade(port, b"PROXY TCP4 nonsense\r\n") == b""
        await server.wait_log(r"closed a connection from 127\.0\.0\.1: .*PROXY")
        # From any other peer, plain HTTP, and a PROXY header is not believed.
        assert await _raw_upgrade(port, b"", source="127.0.0.2") == b"HTTP/1.1 101 Switching Protocols"
        assert await _raw_upgrade(port, v1_header(("198.51.100.9", 1), here), source="127.0.0.2") in (
            b"",  # Tornado closes the connection on a request line it cannot parse
            b"HTTP/1.1 400 Bad Request",
        )
    finally:
        for sock in held:
            sock.close()
    assert "198.51.100.9" not in server.text()
    assert "Traceback" not in server.text()

"""Connection limits, query-string and header caps, handshake timeouts (issue 5, item 3).

/ws and /events share the counts; every refusal and every way a connection ends gives its
slot back: the counts are checked to return to zero after each scenario, under load too.
"""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from tornado_cfgpush.app import server_options
from tornado_cfgpush.testing import publish, wait_for

from .rawsse import RawSSE
from .rawws import RawWebSocket


def counts_are_zero(core) -> bool:
    limits = core.limits
    return limits.total == 0 and limits.by_ip == {} and limits.by_tenant == {}


async def open_ws(port: int, tenant: str = "acme", headers: str = "") -> RawWebSocket:
    ws = await RawWebSocket.connect(port, f"tenant_id={tenant}", extra_headers=headers)
    if ws.status == 101:
        assert "Welcome" in await ws.read_json()
    return ws


@pytest.mark.settings(max_connections_per_ip=4)
@pytest.mark.gen_test
async def test_per_address_limit_is_429_and_counts_ws_and_sse_together(server_port, core):
    held = [await open_ws(server_port) for _ in range(3)]
    stream = await RawSSE.connect(server_port, "tenant_id=globex")
    await stream.read_until(b"event: Welcome")
    assert all(ws.status == 101 for ws in held) and core.limits.total == 4
    refused = await RawWebSocket.connect(server_port, "tenant_id=acme")
    assert refused.status == 429
    assert json.loads(refused.body) == {"error": "too many connections from your address"}
    assert b"Retry-After: 1" in refused.headers
    refused.close()
    late = await RawSSE.connect(server_port, "tenant_id=globex")
    assert late.status == 429
    late.close()
    # A closed connection frees its slot.
    held.pop().close()
    await wait_for(lambda: core.limits.total == 3)
    again = await open_ws(server_port)
    assert again.status == 101
    for ws in held + [again]:
        ws.close()
    stream.close()
    await wait_for(lambda: counts_are_zero(core))
    assert core.limits.refused["ip"] == 2


@pytest.mark.settings(max_connections_per_tenant=2)
@pytest.mark.gen_test
async def test_per_tenant_limit_is_429_and_other_tenants_are_served(server_port, core):
    held = [await open_ws(server_port, "acme") for _ in range(2)]
    refused = await RawWebSocket.connect(server_port, "tenant_id=acme")
    assert (refused.status, json.loads(refused.body)) == (429, {"error": "too many connections for this tenant"})
    refused.close()
    other = await open_ws(server_port, "globex")
    assert other.status == 101
    for ws in held + [other]:
        ws.close()
    await wait_for(lambda: counts_are_zero(core))


@pytest.mark.settings(max_connections=3)
@pytest.mark.gen_test
async def test_server_wide_limit_is_503(server_port, core):
    held = [await open_ws(server_port, t) for t in ("acme", "globex", "initech")]
    refused = await RawWebSocket.connect(server_port, "tenant_id=umbrella")
    assert refused.status == 503
    assert "connection limit" in json.loads(refused.body)["error"]
    refused.close()
    for ws in held:
        ws.close()
    await wait_for(lambda: counts_are_zero(core))


@pytest.mark.settings(max_connections_per_ip=0, max_connections_per_tenant=0, max_connections=0)
@pytest.mark.gen_test
async def test_zero_means_no_limit(server_port, core):
    held = [await open_ws(server_port) for _ in range(5)]
    assert all(ws.status == 101 for ws in held)
    for ws in held:
        ws.close()
    await wait_for(lambda: core.hub.connection_count() == 0)


# -- every way out gives the slot back ------------------------------------------------------------


@pytest.mark.settings(max_client_rate=3, max_message_size=64)
@pytest.mark.gen_test(timeout=30)
async def test_every_kind_of_close_frees_the_slot(server_port, core, connect):
    # 1009: too large
    client = await connect("acme")
    await client.expect("Welcome")
    await client.send("x" * 100)
    assert (await client.closed()).code == 1009
    # 1008: flood
    client = await connect("acme")
    await client.expect("Welcome")
    for _ in range(6):
        await client.send("Ping")
    assert (await client.closed()).code == 1008
    # invalid UTF-8 and a reserved opcode
    for frame in [(0x1, b"\xff\xfe"), (0x3, b"reserved")]:
        raw = await open_ws(server_port)
        raw.send_frame(*frame)
        await wait_for(lambda: core.hub.connection_count() == 0)
        raw.close()
    # a reset peer
    raw = await open_ws(server_port)
    raw.reset()
    # the upgrade refused by Tornado after our checks passed (bad version: 426)
    bad = await RawWebSocket.connect(server_port, "tenant_id=acme", extra_headers="Sec-WebSocket-Version: 99\r\n")
    assert bad.status in (400, 426)
    bad.close()
    # server shutdown of every connection
    shut = [await open_ws(server_port) for _ in range(3)]
    core.hub.close_all()
    await wait_for(lambda: counts_are_zero(core), timeout=15)
    for ws in shut:
        ws.close()


@pytest.mark.settings(max_connections_per_ip=40, max_connections_per_tenant=1000)
@pytest.mark.gen_test(timeout=90)
async def test_limits_hold_under_load_and_never_leak(server_port, http_url, core):
    """Rounds of 200 simultaneous attempts (WebSocket, SSE, resets, bad upgrades) against a
    limit of 40: never more than 40 held, every refusal a clean 429, all counts back to zero."""
    peak = 0

    def observe():
        nonlocal peak
        peak = max(peak, core.limits.total)

    async def attempt(i: int):
        kind = i % 4
        observe()
        if kind == 3:
            stream = await RawSSE.connect(server_port, "tenant_id=acme")
            observe()
            if stream.status == 429:
                stream.close()
                return "refused", None
            assert stream.status == 200
            await stream.read_until(b"event: Welcome", timeout=10)
            return "sse", stream
        extra = "Sec-WebSocket-Version: 99\r\n" if kind == 2 else ""
        ws = await RawWebSocket.connect(server_port, "tenant_id=acme", extra_headers=extra)
        observe()
        if ws.status == 429:
            assert json.loads(ws.body)["error"] == "too many connections from your address"
            ws.close()
            return "refused", None
        if kind == 2:
            assert ws.status in (400, 426)
            ws.close()
            return "bad", None
        assert ws.status == 101
        assert "Welcome" in await ws.read_json()
        if kind == 1:
            ws.reset()
            return "reset", None
        return "ws", ws

    for round_ in range(3):
        results = await asyncio.gather(*(attempt(i) for i in range(200)))
        held = [(kind, obj) for kind, obj in results if kind in ("ws", "sse")]
        assert 0 < len(held) <= 40
        assert core.limits.total <= 40
        assert any(kind == "refused" for kind, _ in results)
        # While full, an event still reaches everyone held.
        await wait_for(lambda: core.hub.connection_count() == core.limits.total, timeout=10)
        event_id = await publish(core, path=f"round{round_}.json")
        for kind, obj in held:
            if kind == "ws":
                assert (await obj.read_json())["ConfigChanged"]["event_id"] == event_id
            else:
                await obj.read_until(f"id: {event_id}".encode())
        for _, obj in held:
            obj.close()
        await wait_for(lambda: counts_are_zero(core), timeout=20)
        assert core.hub.connection_count() == 0
    assert peak <= 40


# -- query string, headers, handshake timeouts -------------------------------------------------------


@pytest.mark.settings(max_query_size=300)
@pytest.mark.gen_test
async def test_query_string_over_the_cap_is_414(server_port, http_client, http_url, core):
    ws = await RawWebSocket.connect(server_port, "tenant_id=acme&pad=" + "x" * 300)
    assert (ws.status, json.loads(ws.body)) == (414, {"error": "the query string must be at most 300 bytes"})
    ws.close()
    response = await http_client.fetch(f"{http_url}/events?tenant_id=acme&pad={'x' * 300}", raise_error=False)
    assert response.code == 414
    assert counts_are_zero(core)


@pytest.fixture
def hardened_port(io_loop, app, settings):
    """The app behind an ``HTTPServer`` configured as ``cfgpush-serve`` configures it."""
    sock, port = bind_unused_port()
    server = HTTPServer(app, **server_options(settings))
    server.add_sockets([sock])
    yield port
    server.stop()
    io_loop.run_sync(server.close_all_connections, timeout=10)


async def _closed_by_server(sock: socket.socket, timeout: float) -> bytes:
    loop = asyncio.get_running_loop()
    received = b""
    while True:
        chunk = await asyncio.wait_for(loop.sock_recv(sock, 65536), timeout)
        if not chunk:
            return received
        received += chunk


@pytest.mark.settings(handshake_timeout=0.5, max_header_size=2048)
@pytest.mark.gen_test(timeout=30)
async def test_idle_slow_and_oversized_handshakes_are_dropped(hardened_port, core):
    loop = asyncio.get_running_loop()

    async def raw_socket() -> socket.socket:
        sock = socket.socket()
        sock.setblocking(False)
        await loop.sock_connect(sock, ("127.0.0.1", hardened_port))
        return sock

    idle = await raw_socket()  # connects and never says anything
    slow = await raw_socket()  # starts a request and never finishes its headers
    await loop.sock_sendall(slow, b"GET /ws?tenant_id=acme HTTP/1.1\r\nHost: x\r\n")
    big = await raw_socket()
    await loop.sock_sendall(big, b"GET /ws?tenant_id=acme HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 4096 + b"\r\n\r\n")
    try:
        started = loop.time()
        assert await _closed_by_server(idle, 5) == b""
        assert await _closed_by_server(slow, 5) == b""
        assert loop.time() - started < 3
        assert b"200" not in await _closed_by_server(big, 5)
    finally:
        for sock in (idle, slow, big):
            sock.close()
    # An honest client on the same server is served.
    ws = await RawWebSocket.connect(hardened_port, "tenant_id=acme")
    assert ws.status == 101 and "Welcome" in await ws.read_json()
    ws.close()
    await wait_for(lambda: counts_are_zero(core))


def test_server_options_follow_the_settings():
    from tornado_cfgpush.settings import Settings

    options = server_options(Settings(handshake_timeout=3.0, max_header_size=8192))
    assert options["idle_connection_timeout"] == 3.0
    assert options["body_timeout"] == 3.0
    assert options["max_header_size"] == 8192


@pytest.mark.gen_test
async def test_shutting_down_refuses_new_subscribers_with_503(server_port, core):
    # A proxy's keep-alive connection, opened before the shutdown, can still carry an upgrade
    # after the listener closed: it gets 503, not a subscription the shutdown would cut.
    core.limits.close()
    ws = await open_ws(server_port)
    stream = await RawSSE.connect(server_port, "tenant_id=acme")
    try:
        assert (ws.status, json.loads(ws.body)) == (
            503,
            {"error": "the server is shutting down; retry later or elsewhere"},
        )
        assert stream.status == 503
    finally:
        ws.close()
        stream.close()
    assert counts_are_zero(core)

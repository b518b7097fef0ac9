"""The WebSocket protocol after the upgrade (tornado_cfgpush/ws/), over real sockets:
what RFC 6455 requires of a server for each kind of broken frame, the close handshake,
fragmentation, bytes sent before the 101, and permessage-deflate (RFC 7692) against the
``websockets`` library's client, an independent implementation."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import time
import zlib

import pytest
import websockets
from websockets.asyncio.client import connect as ws_connect
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

from tornado_cfgpush.testing import publish, wait_for
from tornado_cfgpush.ws.deflate import Deflate

from .rawws import RawWebSocket


def raw_frame(first: int, payload: bytes, *, masked: bool = True, length: int | None = None) -> bytes:
    """Any frame, broken ones included: ``first`` is the whole first byte (FIN, RSV, opcode)."""
    n = len(payload) if length is None else length
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head = bytes([first, mask_bit | n])
    elif n <= 0xFFFF:
        head = bytes([first, mask_bit | 126]) + struct.pack("!H", n)
    else:
        head = bytes([first, mask_bit | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def server_connection(core):
    """The server's side (the sink) of the one WebSocket of tenant acme."""
    [sub] = core.hub.connections("acme")
    return sub.sink


def server_socket(core):
    return server_connection(core)._transport.get_extra_info("socket")


async def welcomed(port: int) -> RawWebSocket:
    ws = await RawWebSocket.connect(port, "tenant_id=acme")
    assert ws.status == 101
    assert "Welcome" in await ws.read_json()
    return ws


async def close_code(ws: RawWebSocket) -> int | None:
    """The code of the server's close frame, after which the server ends the TCP connection."""
    while True:
        opcode, payload = await ws.read_frame()
        if opcode == 0x8:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
            assert await asyncio.wait_for(ws.reader.read(), 5) == b""  # then EOF
            return code


BROKEN = {
    "unmasked frame": (raw_frame(0x81, b'"Ping"', masked=False), 1002),
    "reserved bit without an extension": (raw_frame(0xC1, b'"Ping"'), 1002),
    "unknown opcode": (raw_frame(0x83, b"x"), 1002),
    "control frame over 125 bytes": (raw_frame(0x89, b"x" * 126), 1002),
    "fragmented control frame": (raw_frame(0x09, b"x"), 1002),
    "continuation with nothing to continue": (raw_frame(0x80, b"x"), 1002),
    "new message inside a fragmented one": (raw_frame(0x01, b'"Pi') + raw_frame(0x81, b'"Ping"'), 1002),
    "invalid UTF-8": (raw_frame(0x81, b'"\xff\xfe"'), 1007),
    "invalid close code": (raw_frame(0x88, struct.pack("!H", 999)), 1002),
    "one-byte close body": (raw_frame(0x88, b"\x03"), 1002),
    "close reason not UTF-8": (raw_frame(0x88, struct.pack("!H", 1000) + b"\xff"), 1007),
    "frame claiming a gigabyte": (raw_frame(0x81, b"", length=10**9)[:10], 1009),
    "fragments adding up past the limit": (raw_frame(0x01, b"x" * 3000) + raw_frame(0x80, b"x" * 3000), 1009),
}


@pytest.mark.gen_test
@pytest.mark.parametrize("case", list(BROKEN))
async def test_a_broken_frame_closes_with_its_code_and_frees_everything(case, server_port, core):
    data, expected = BROKEN[case]
    ws = await welcomed(server_port)
    ws.writer.write(data)
    assert await close_code(ws) == expected
    await wait_for(lambda: core.hub.connection_count() == 0 and core.limits.total == 0 and core.hub.open_count() == 0)
    ws.close()


@pytest.mark.gen_test
async def test_a_fragmented_message_with_a_ping_between_its_fragments(server_port):
    ws = await welcomed(server_port)
    message = b'{"Ping": {"id": "frag"}}'
    ws.writer.write(
        raw_frame(0x01, message[:5])
        + raw_frame(0x89, b"hb")
        + raw_frame(0x00, message[5:12])
        + raw_frame(0x80, message[12:])
    )
    assert await ws.read_frame() == (0xA, b"hb")  # the control frame is answered at once
    assert await ws.read_json() == {"Pong": {"id": "frag"}}
    ws.close()


@pytest.mark.gen_test
async def test_the_close_handshake_echoes_the_peers_code(server_port, core):
    ws = await welcomed(server_port)
    ws.writer.write(raw_frame(0x88, struct.pack("!H", 4000) + b"bye"))
    assert await close_code(ws) == 4000
    await wait_for(lambda: core.hub.open_count() == 0 and core.limits.total == 0)
    ws.close()


@pytest.mark.gen_test
async def test_frames_sent_with_the_request_are_answered_after_welcome(server_port):
    reader, writer = await asyncio.open_connection("127.0.0.1", server_port)
    writer.write(
        b"GET /ws?tenant_id=acme HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        + raw_frame(0x81, b'{"Ping": {"id": "early"}}')
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101") and b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
    ws = RawWebSocket(reader, writer, 101, head)
    assert "Welcome" in await ws.read_json()
    assert await ws.read_json() == {"Pong": {"id": "early"}}
    ws.close()


@pytest.mark.gen_test
async def test_upgrade_header_errors(server_port):
    bad_version = await RawWebSocket.connect(
        server_port, "tenant_id=acme", extra_headers="Sec-WebSocket-Version: 8\r\n"
    )
    # RawWebSocket sends version 13 too: two values are not "13" either.
    bad_version.close()
    assert bad_version.status == 426 and b"sec-websocket-version: 13" in bad_version.headers.lower()
    assert "version 13" in json.loads(bad_version.body)["error"]
    # A key that is not 16 bytes, or not base64, or not even ASCII (found by test_hostile).
    for key in (
        b"c2hvcnQ=",
        b"not base64!",
        b"\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe\xbe==",
    ):
        reader, writer = await asyncio.open_connection("127.0.0.1", server_port)
        writer.write(
            b"GET /ws?tenant_id=acme HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.close()
        assert head.startswith(b"HTTP/1.1 400"), (key, head)


@pytest.mark.gen_test
async def test_a_client_that_offers_compression_gets_plain_frames_by_default(server_port):
    async with ws_connect(f"ws://127.0.0.1:{server_port}/ws?tenant_id=acme", compression="deflate") as ws:
        assert ws.response.headers.get("Sec-WebSocket-Extensions") is None
        assert "Welcome" in json.loads(await ws.recv())
        await ws.send('{"Ping": {"id": 1}}')
        assert json.loads(await ws.recv()) == {"Pong": {"id": 1}}


# -- permessage-deflate ---------------------------------------------------------------------------


@pytest.mark.gen_test
@pytest.mark.settings(ws_compression=True)
async def test_compressed_events_and_messages_with_the_websockets_client(server_port, core):
    url = f"ws://127.0.0.1:{server_port}/ws?tenant_id=acme"
    async with ws_connect(url, compression="deflate") as first, ws_connect(url, compression="deflate") as second:
        extensions = first.response.headers["Sec-WebSocket-Extensions"]
        assert extensions.startswith("permessage-deflate") and "server_no_context_takeover" in extensions
        for ws in (first, second):
            assert "Welcome" in json.loads(await ws.recv())
        event_id = await publish(core, path="big.json", meta={"note": "x" * 2000})
        for ws in (first, second):
            event = json.loads(await ws.recv())["ConfigChanged"]
            assert event["event_id"] == event_id and event["meta"]["note"] == "x" * 2000
        # The client compresses what it sends (with context takeover): the server inflates.
        for i in range(3):
            await first.send(json.dumps({"Ping": {"id": f"p{i}"}}))
            assert json.loads(await first.recv()) == {"Pong": {"id": f"p{i}"}}


@pytest.mark.gen_test
@pytest.mark.settings(ws_compression=True)
async def test_one_compressed_frame_serves_every_client(server_port, core):
    extension = "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover\r\n"
    clients = [await RawWebSocket.connect(server_port, "tenant_id=acme", extra_headers=extension) for _ in range(2)]
    for ws in clients:
        assert b"permessage-deflate; server_no_context_takeover; client_no_context_takeover" in ws.headers
        assert "Welcome" in await ws.read_json()  # per-connection messages go uncompressed
    event_id = await publish(core, path="a.json")
    frames = []
    for ws in clients:
        head = await asyncio.wait_for(ws.reader.readexactly(2), 5)
        assert head[0] == 0xC1  # FIN, RSV1 (compressed), text
        n = head[1] & 0x7F
        if n == 126:
            extended = await ws.reader.readexactly(2)
            head, n = head + extended, struct.unpack("!H", extended)[0]
        frames.append((head, await ws.reader.readexactly(n)))
    assert frames[0] == frames[1]
    text = zlib.decompressobj(-15).decompress(frames[0][1] + b"\x00\x00\xff\xff")
    assert json.loads(text)["ConfigChanged"]["event_id"] == event_id
    for ws in clients:
        ws.close()


@pytest.mark.gen_test
@pytest.mark.settings(ws_compression=True)
async def test_a_compressed_message_that_inflates_past_the_limit_closes_1009(server_port, core):
    async with ws_connect(f"ws://127.0.0.1:{server_port}/ws?tenant_id=acme", compression="deflate") as ws:
        assert "Welcome" in json.loads(await ws.recv())
        await ws.send('{"Ping": {"id": "' + "a" * 100_000 + '"}}')  # about 100 bytes compressed
        with pytest.raises(websockets.ConnectionClosedError) as closed:
            await ws.recv()
    assert closed.value.rcvd.code == 1009
    await wait_for(lambda: core.hub.open_count() == 0 and core.limits.total == 0)


@pytest.mark.gen_test
@pytest.mark.settings(ws_compression=True)
async def test_a_small_window_the_client_asks_for_is_honoured(server_port, core):
    factory = ClientPerMessageDeflateFactory(server_max_window_bits=10, client_max_window_bits=True)
    async with ws_connect(
        f"ws://127.0.0.1:{server_port}/ws?tenant_id=acme", extensions=[factory], compression=None
    ) as ws:
        assert "server_max_window_bits=10" in ws.response.headers["Sec-WebSocket-Extensions"]
        assert "Welcome" in json.loads(await ws.recv())
        event_id = await publish(core, path="w.json", meta={"note": "y" * 3000})
        assert json.loads(await ws.recv())["ConfigChanged"]["event_id"] == event_id


@pytest.mark.parametrize(
    "header, response",
    [
        # Without client_max_window_bits the server cannot cap the client's window: it answers
        # client_no_context_takeover (RFC 7692 section 7.1.1.1), so no inflater outlives a message.
        ("permessage-deflate", "permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
        (
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate; server_no_context_takeover; client_max_window_bits=9",
        ),
        (
            "permessage-deflate; client_max_window_bits=12; client_no_context_takeover",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; client_max_window_bits=9",
        ),
        (
            "permessage-deflate; client_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        ),
        (
            "permessage-deflate; server_max_window_bits=12",
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=12; client_no_context_takeover",
        ),
        # A window zlib cannot make declines that offer; the next one is taken.
        (
            "permessage-deflate; server_max_window_bits=8, permessage-deflate",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover",
        ),
        ("permessage-deflate; unknown_param", None),
        ("permessage-deflate; client_no_context_takeover; client_no_context_takeover", None),
        ("permessage-deflate; server_max_window_bits=99", None),
        ("x-webkit-deflate-frame", None),
        ("", None),
    ],
)
def test_deflate_negotiation(header, response):
    negotiated = Deflate.negotiate(header)
    assert (negotiated[1] if negotiated else None) == response


UNCAPPED = ClientPerMessageDeflateFactory(client_max_window_bits=None)


@pytest.mark.gen_test(timeout=30)
@pytest.mark.settings(ws_compression=True)
async def test_a_client_whose_window_cannot_be_capped_gets_no_context_takeover(server_port, core):
    """A client that offers permessage-deflate without client_max_window_bits may compress with
    a 32 KB window the server cannot cap: the server answers client_no_context_takeover (RFC 7692
    section 7.1.1.1), inflates each message with a context of its own and keeps none. The
    websockets client accepts that answer, and its compressed messages are understood."""
    url = f"ws://127.0.0.1:{server_port}/ws?tenant_id=acme"
    async with ws_connect(url, extensions=[UNCAPPED], compression=None) as ws:
        assert (
            ws.response.headers["Sec-WebSocket-Extensions"]
            == "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        )
        assert "Welcome" in json.loads(await ws.recv())
        for i in range(3):
            await ws.send(json.dumps({"Ping": {"id": f"{i}" + "x" * 100}}))  # compressed by the client
            assert json.loads(await ws.recv()) == {"Pong": {"id": f"{i}" + "x" * 100}}
        assert not server_connection(core).protocol.deflate.holds_context()


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


@pytest.mark.gen_test(timeout=120)
async def test_memory_of_compressing_clients_whose_window_cannot_be_capped(start, config_dir):
    """The server's memory per connection of 300 clients that compress what they send without
    offering client_max_window_bits (printed, not asserted): with client_no_context_takeover no
    inflater is kept between messages."""
    from tornado_cfgpush.testing import LISTENING

    server = start(
        "--config-dir", str(config_dir), "--port", "0", "--ws-compression", "true", "--max-connections-per-ip", "0"
    )
    port = int((await server.wait_log(LISTENING)).group(1))
    url = f"ws://127.0.0.1:{port}/ws?tenant_id=acme"

    async def open_and_send(i: int):
        ws = await ws_connect(url, extensions=[UNCAPPED], compression=None, ping_interval=None)
        assert "Welcome" in json.loads(await ws.recv())
        await ws.send(json.dumps({"Ping": {"id": f"{i}" + "x" * 100}}))
        return ws

    clients = [await open_and_send(-1)]  # warm-up
    assert "client_no_context_takeover" in clients[0].response.headers["Sec-WebSocket-Extensions"]
    before = _rss_kb(server.proc.pid)
    count = 300
    for first in range(0, count, 50):
        clients += await asyncio.gather(*(open_and_send(i) for i in range(first, first + 50)))
    for ws in clients[1:]:
        assert "Pong" in json.loads(await ws.recv())
    after = _rss_kb(server.proc.pid)
    print(
        f"server memory per connection that sent a compressed message (no client_max_window_bits): "
        f"{(after - before) / count:.1f} KB ({before} -> {after} KB, {count} connections)"
    )
    await asyncio.gather(*(ws.close() for ws in clients))


@pytest.mark.gen_test
async def test_server_side_sockets_send_small_frames_at_once(server_port, core):
    """TCP_NODELAY on every WebSocket after the hand-over (asyncio sets it on TCP transports;
    Tornado left Nagle on): a small event frame must not wait for the previous one's ACK."""
    import socket

    ws = await welcomed(server_port)
    sock = server_socket(core)
    assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    ws.close()


@pytest.mark.gen_test
async def test_a_failing_catch_up_closes_that_connection_with_1011_only(server_port, core):
    catch_up = core.broker.catch_up
    calls = []

    async def broken_once(tenant_id, since):
        calls.append(tenant_id)
        if len(calls) == 1:
            raise RuntimeError("a bug in a broker")
        return await catch_up(tenant_id, since)

    core.broker.catch_up = broken_once
    broken = await RawWebSocket.connect(server_port, "tenant_id=acme")
    assert await close_code(broken) == 1011
    broken.close()
    ws = await welcomed(server_port)  # the next one is served
    await wait_for(lambda: core.hub.connection_count() == 1 and core.limits.total == 1 and core.hub.open_count() == 1)
    ws.close()


# -- pongs and the frame budget over real sockets --------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_every_ping_is_answered_while_events_stream(server_port, core):
    """RFC 6455 section 5.5.2: a ping is answered even while the server's write buffer holds a
    backlog (a small receive window keeps one there); what bounds a peer that does not read is
    the backlog rule (1013), not a missing pong."""
    ws = await RawWebSocket.connect(server_port, "tenant_id=acme", rcvbuf=4096)
    assert "Welcome" in await ws.read_json()
    # Small kernel buffers on both sides: what the client has not read stays in the server.
    server_socket(core).setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    total, sent = 4000, []
    pongs: list[bytes] = []
    received = 0

    async def read() -> None:
        nonlocal received
        while received < total or len(pongs) < len(sent):
            opcode, payload = await ws.read_frame(timeout=10)
            if opcode == 0xA:
                pongs.append(payload)
            elif opcode == 0x1:
                received += 1

    reader = asyncio.ensure_future(read())
    backlogged = 0
    for i in range(total):
        await publish(core, path=f"f{i}.json")
        if i % 400 == 200:
            backlogged += bool(server_connection(core).buffered())
            sent.append(f"ping {len(sent)}".encode())
            ws.send_frame(0x9, sent[-1])
        if i % 40 == 0:
            await asyncio.sleep(0)  # wait-ok: a turn of the loop for the reader and the server
    await asyncio.wait_for(reader, 30)
    print(f"{len(pongs)} pongs for {len(sent)} pings; {backlogged} pings sent while the server held a backlog")
    assert pongs == sent and received == total
    ws.close()


async def _ping_rtt(ws: RawWebSocket, n: int) -> float:
    started = time.perf_counter()
    ws.send_frame(0x1, json.dumps({"Ping": {"id": n}}).encode())
    while await ws.read_json(timeout=10) != {"Pong": {"id": n}}:
        pass
    return time.perf_counter() - started


FLOODS = {
    "pings": raw_frame(0x89, b""),
    "empty continuation frames": raw_frame(0x00, b""),  # never final: the message never ends
}


@pytest.mark.gen_test(timeout=60)
async def test_flooders_are_closed_1008_at_once_and_an_honest_client_is_served(server_port, core):
    """Two connections (no authentication) flooding pings, or empty continuation frames of a
    message they never finish: each is closed with 1008 after its budget of frames, and an
    honest client's Ping round trip barely moves (printed; timings are not asserted)."""
    honest = await welcomed(server_port)
    before = []
    for n in range(10):
        before.append(await _ping_rtt(honest, n))
        await asyncio.sleep(0.1)  # wait-ok: the pace of an honest client (within its budget)
    before.sort()
    floods = []
    for kind, one in FLOODS.items():
        ws = await welcomed(server_port)
        start = raw_frame(0x01, b'{"Pi') if kind != "pings" else b""
        floods.append((kind, ws, start + one * 50_000))
    await wait_for(lambda: core.hub.connection_count() == 3)
    started = time.perf_counter()
    for _, ws, data in floods:
        ws.writer.write(data)
    during = []
    closed = {}

    async def watch(kind: str, ws: RawWebSocket) -> None:
        while True:  # the pongs of the first pings, then the close frame
            opcode, payload = await ws.read_frame(timeout=10)
            if opcode == 0x8:
                closed[kind] = (struct.unpack("!H", payload[:2])[0], time.perf_counter() - started)
                # The server reads nothing more from it and drops the socket if it does not
                # answer (a flooder does not): its unread frames cost nothing meanwhile.
                return

    watchers = [asyncio.ensure_future(watch(kind, ws)) for kind, ws, _ in floods]
    n = 100
    while not all(w.done() for w in watchers) or len(during) < 10:
        during.append(await _ping_rtt(honest, n))
        n += 1
        await asyncio.sleep(0.1)  # wait-ok: the pace of an honest client (within its budget)
    await asyncio.gather(*watchers)
    for kind, (code, seconds) in closed.items():
        print(f"flood of {kind}: closed with {code} after {seconds * 1000:.1f} ms")
    print(
        f"honest Ping round trip, ms: before p50 {before[5] * 1000:.2f}; "
        f"during and after the floods p50 {sorted(during)[len(during) // 2] * 1000:.2f}, "
        f"max {max(during) * 1000:.2f}"
    )
    assert {code for code, _ in closed.values()} == {1008}
    await wait_for(lambda: core.hub.connection_count() == 1 and core.limits.total == 1)
    for _, ws, _ in floods:
        ws.close()
    honest.close()


@pytest.mark.settings(max_client_rate=20)
@pytest.mark.gen_test(timeout=30)
async def test_a_client_within_its_budget_is_never_closed(server_port, core):
    """Twenty frames at once (the burst), then ten a second (pings, Acks, pongs) for three
    seconds: within the budget, never closed."""
    ws = await welcomed(server_port)
    for _ in range(20):
        ws.send_frame(0x9, b"")
    for _ in range(20):
        assert await ws.read_frame() == (0xA, b"")
    await asyncio.sleep(1.0)  # wait-ok: the bucket refills
    for _ in range(30):
        ws.send_frame(0x1, b'"Ping"')
        assert await ws.read_json(timeout=5) == "Pong"
        await asyncio.sleep(0.1)  # wait-ok: the pace of an honest client
    assert core.hub.connection_count() == 1
    ws.close()

"""The sans-I/O WebSocket core (tornado_cfgpush/ws/protocol.py) on bytes alone: every check
RFC 6455 asks of a server with its close code, the frame budget, the close handshake, and a
hypothesis property: however a valid byte stream is cut into chunks, the same events and the
same answers come out. The same checks over real sockets are in test_wsproto.py."""

from __future__ import annotations

import os
import struct
import zlib

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tornado_cfgpush.ws.deflate import Deflate
from tornado_cfgpush.ws.frames import CloseCode, Opcode, close_frame, frame, unmask
from tornado_cfgpush.ws.protocol import (
    CLOSED,
    CLOSING,
    OPEN,
    Close,
    Failure,
    FrameLimits,
    Message,
    Ping,
    Pong,
    ServerProtocol,
)

NO_BUDGET = FrameLimits(max_message_size=4096, rate=0)


def client_frame(
    first: int, payload: bytes, *, masked: bool = True, length: int | None = None, mask: bytes | None = None
) -> bytes:
    """Any client frame, broken ones included: ``first`` is the whole first byte (FIN, RSV, opcode)."""
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
    mask = os.urandom(4) if mask is None else mask
    return head + mask + unmask(mask, payload)  # XOR is its own inverse


def text(payload: bytes | str, *, fin: bool = True, opcode: int = Opcode.TEXT) -> bytes:
    data = payload.encode() if isinstance(payload, str) else payload
    return client_frame((0x80 if fin else 0) | opcode, data)


def receive(
    data: bytes, limits: FrameLimits = NO_BUDGET, deflate: Deflate | None = None, now: float = 1.0
) -> tuple[ServerProtocol, list, bytes]:
    protocol = ServerProtocol(limits, deflate)
    events = protocol.receive_data(data, now)
    return protocol, events, protocol.data_to_send()


# -- every failure, with its close code -------------------------------------------------------------


def compressed(message: bytes, wbits: int = 15) -> bytes:
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -wbits)
    data = compressor.compress(message) + compressor.flush(zlib.Z_SYNC_FLUSH)
    return data[:-4]


FAILURES = {
    "unmasked frame": (
        client_frame(0x81, b'"Ping"', masked=False),
        None,
        CloseCode.PROTOCOL_ERROR,
        "client frames must be masked",
    ),
    "reserved bit without an extension": (
        client_frame(0xC1, b'"Ping"'),
        None,
        CloseCode.PROTOCOL_ERROR,
        "reserved bits set",
    ),
    "RSV2 even with deflate": (client_frame(0xA1, b"x"), Deflate(), CloseCode.PROTOCOL_ERROR, "reserved bits set"),
    "RSV1 on a control frame": (client_frame(0xC9, b""), Deflate(), CloseCode.PROTOCOL_ERROR, "reserved bits set"),
    "RSV1 on a continuation": (
        client_frame(0x01, b"x") + client_frame(0xC0, b"y"),
        Deflate(),
        CloseCode.PROTOCOL_ERROR,
        "reserved bits set",
    ),
    "unknown data opcode": (client_frame(0x83, b"x"), None, CloseCode.PROTOCOL_ERROR, "unknown opcode 3"),
    "unknown control opcode": (client_frame(0x8B, b"x"), None, CloseCode.PROTOCOL_ERROR, "unknown opcode 11"),
    "control frame over 125 bytes": (
        client_frame(0x89, b"x" * 126),
        None,
        CloseCode.PROTOCOL_ERROR,
        "control frames must be final and at most 125 bytes",
    ),
    "fragmented control frame": (
        client_frame(0x09, b"x"),
        None,
        CloseCode.PROTOCOL_ERROR,
        "control frames must be final and at most 125 bytes",
    ),
    "continuation with nothing to continue": (
        client_frame(0x80, b"x"),
        None,
        CloseCode.PROTOCOL_ERROR,
        "continuation frame outside a fragmented message",
    ),
    "new message inside a fragmented one": (
        text('"Pi', fin=False) + text('"Ping"'),
        None,
        CloseCode.PROTOCOL_ERROR,
        "a new message inside a fragmented one",
    ),
    "invalid UTF-8": (text(b'"\xff\xfe"'), None, CloseCode.INVALID_DATA, "text frames must be valid UTF-8"),
    "invalid UTF-8 across fragments": (
        text(b'"\xc3', fin=False) + client_frame(0x80, b'"'),
        None,
        CloseCode.INVALID_DATA,
        "text frames must be valid UTF-8",
    ),
    "close code 999": (
        client_frame(0x88, struct.pack("!H", 999)),
        None,
        CloseCode.PROTOCOL_ERROR,
        "invalid close code 999",
    ),
    "close code 1005 (never on the wire)": (
        client_frame(0x88, struct.pack("!H", 1005)),
        None,
        CloseCode.PROTOCOL_ERROR,
        "invalid close code 1005",
    ),
    "close code 1015 (never on the wire)": (
        client_frame(0x88, struct.pack("!H", 1015)),
        None,
        CloseCode.PROTOCOL_ERROR,
        "invalid close code 1015",
    ),
    "close code 5000": (
        client_frame(0x88, struct.pack("!H", 5000)),
        None,
        CloseCode.PROTOCOL_ERROR,
        "invalid close code 5000",
    ),
    "one-byte close body": (
        client_frame(0x88, b"\x03"),
        None,
        CloseCode.PROTOCOL_ERROR,
        "close frame with a one-byte body",
    ),
    "close reason not UTF-8": (
        client_frame(0x88, struct.pack("!H", 1000) + b"\xff"),
        None,
        CloseCode.INVALID_DATA,
        "close reason must be valid UTF-8",
    ),
    "frame claiming a gigabyte": (
        client_frame(0x81, b"", length=10**9)[:10],
        None,
        CloseCode.MESSAGE_TOO_BIG,
        "message too big",
    ),
    "fragments adding up past the limit": (
        text("x" * 3000, fin=False) + client_frame(0x80, b"x" * 3000),
        None,
        CloseCode.MESSAGE_TOO_BIG,
        "message too big",
    ),
    "compressed message inflating past the limit": (
        client_frame(0xC1, compressed(b"a" * 100_000)),
        Deflate(),
        CloseCode.MESSAGE_TOO_BIG,
        "message too big after decompression",
    ),
    "invalid compressed data": (
        client_frame(0xC1, b"\xff\xff\xff\xff"),
        Deflate(),
        CloseCode.INVALID_DATA,
        "invalid compressed data",
    ),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_every_broken_frame_fails_with_its_close_code(case):
    data, deflate, code, reason = FAILURES[case]
    protocol, events, out = receive(data, deflate=deflate)
    assert events[-1] == Failure(code, reason)
    assert out == close_frame(code, reason)
    assert protocol.state == CLOSED
    # Nothing after a failure is read, answered or queued.
    assert protocol.receive_data(text('"Ping"') + client_frame(0x89, b"p"), 2.0) == []
    assert protocol.data_to_send() == b""


def test_frames_after_a_failure_in_the_same_chunk_are_not_read():
    _, events, out = receive(text("a") + client_frame(0x81, b"x", masked=False) + text("b") + client_frame(0x89, b""))
    assert events == [Message("a"), Failure(CloseCode.PROTOCOL_ERROR, "client frames must be masked")]
    assert out == close_frame(CloseCode.PROTOCOL_ERROR, "client frames must be masked")


def test_a_message_at_the_size_limit_passes_and_one_byte_more_fails():
    limits = FrameLimits(max_message_size=100, rate=0)
    assert receive(text("x" * 100), limits)[1] == [Message("x" * 100)]
    assert receive(text("x" * 101), limits)[1] == [Failure(CloseCode.MESSAGE_TOO_BIG, "message too big")]


# -- what passes ------------------------------------------------------------------------------------


def test_messages_pings_pongs_and_fragments():
    data = (
        text('"Ping"')
        + client_frame(0x82, b"\x00\x01")
        + text('{"Pi', fin=False)
        + client_frame(0x89, b"hb")
        + client_frame(0x00, b'ng": ')
        + client_frame(0x8A, b"pong")
        + client_frame(0x80, b"{}}")
        + text(b"caf\xc3", fin=False)
        + client_frame(0x80, b"\xa9")
    )
    protocol, events, out = receive(data)
    assert events == [
        Message('"Ping"'),
        Message(b"\x00\x01"),
        Ping(b"hb"),
        Pong(b"pong"),
        Message('{"Ping": {}}'),
        Message("café"),
    ]
    assert out == frame(Opcode.PONG, b"hb")  # a ping is answered with its payload
    assert protocol.state == OPEN


def test_every_ping_is_answered():
    """RFC 6455 section 5.5.2: a pong per ping, whatever else is going on."""
    pings = b"".join(client_frame(0x89, f"p{i}".encode()) for i in range(10))
    _, events, out = receive(pings)
    assert events == [Ping(f"p{i}".encode()) for i in range(10)]
    assert out == b"".join(frame(Opcode.PONG, f"p{i}".encode()) for i in range(10))


def test_the_peers_close_is_echoed_and_nothing_after_it_is_read():
    protocol, events, out = receive(client_frame(0x88, struct.pack("!H", 4000) + b"bye") + text('"Ping"'))
    assert events == [Close(4000, "bye")]
    assert out == close_frame(4000)
    assert protocol.state == CLOSED
    _, events, out = receive(client_frame(0x88, b""))
    assert events == [Close(None, "")] and out == frame(Opcode.CLOSE, b"")


def test_after_our_close_frame_only_the_peers_close_matters():
    protocol = ServerProtocol(NO_BUDGET)
    assert protocol.send_close(CloseCode.GOING_AWAY, "server shutting down")
    assert protocol.data_to_send() == close_frame(1001, "server shutting down")
    assert not protocol.send_close(CloseCode.NORMAL)  # once
    assert protocol.state == CLOSING
    events = protocol.receive_data(
        text('"Ping"') + client_frame(0x89, b"x") + client_frame(0x88, struct.pack("!H", 1001)), 1.0
    )
    # The message is ignored, the ping not answered, the close not echoed (ours went first).
    assert events == [Ping(b"x"), Close(1001, "")]
    assert protocol.data_to_send() == b""
    assert protocol.state == CLOSED


def test_compressed_messages_with_and_without_context_takeover():
    # Context takeover with the window the server agreed to (9 bits): one inflater kept.
    deflate, _ = Deflate.negotiate("permessage-deflate; client_max_window_bits")
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -9)
    protocol = ServerProtocol(NO_BUDGET, deflate)
    for i in range(3):
        data = compressor.compress(b'{"Ping": {"id": %d}}' % i) + compressor.flush(zlib.Z_SYNC_FLUSH)
        assert protocol.receive_data(client_frame(0xC1, data[:-4]), 1.0) == [Message(f'{{"Ping": {{"id": {i}}}}}')]
    assert deflate.holds_context()


# -- the frame budget -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, one",
    [
        ("text", text('"Ping"')),
        ("ping", client_frame(0x89, b"")),
        ("pong", client_frame(0x8A, b"")),
        ("binary", client_frame(0x82, b"x")),
    ],
)
def test_every_kind_of_frame_counts_against_one_budget(kind, one):
    limits = FrameLimits(max_message_size=4096, rate=5)
    _, events, out = receive(one * 6, limits)
    assert events[-1] == Failure(CloseCode.POLICY_VIOLATION, "rate limit exceeded")
    assert len(events) == 6
    assert out.endswith(close_frame(CloseCode.POLICY_VIOLATION, "rate limit exceeded"))


def test_empty_continuation_frames_count():
    limits = FrameLimits(max_message_size=4096, rate=20)
    data = text("x", fin=False) + client_frame(0x00, b"") * 1000
    _, events, out = receive(data, limits)
    assert events == [Failure(CloseCode.POLICY_VIOLATION, "rate limit exceeded")]
    assert out == close_frame(CloseCode.POLICY_VIOLATION, "rate limit exceeded")


def test_the_budget_is_a_token_bucket():
    limits = FrameLimits(max_message_size=4096, rate=8)  # holds 8, refills 8 per second
    protocol = ServerProtocol(limits)
    ping = client_frame(0x89, b"")
    assert len(protocol.receive_data(ping * 8, 100.0)) == 8  # the burst
    events = protocol.receive_data(ping * 2, 100.125)  # one more frame's worth refilled
    assert events == [Ping(b""), Failure(CloseCode.POLICY_VIOLATION, "rate limit exceeded")]
    protocol = ServerProtocol(limits)
    protocol.receive_data(ping * 8, 100.0)
    # Eight per second, sustained, for a minute: never closed.
    for step in range(1, 481):
        assert protocol.receive_data(ping, 100.0 + step * 0.125) == [Ping(b"")], step
    # Idle for an hour: the bucket holds the burst, not an hour's worth.
    assert len(protocol.receive_data(ping * 9, 4000.0)) == 9
    assert protocol.state == CLOSED


def test_no_budget_when_the_rate_is_zero():
    _, events, _ = receive(client_frame(0x89, b"") * 1000, FrameLimits(4096, rate=0))
    assert len(events) == 1000


# -- the property: chunking does not matter ---------------------------------------------------------


def _messages() -> st.SearchStrategy:
    payload = st.one_of(
        st.text(max_size=300).map(lambda s: ("text", s)), st.binary(max_size=300).map(lambda b: ("binary", b))
    )
    return st.lists(
        st.tuples(payload, st.integers(1, 4), st.lists(st.binary(max_size=20), max_size=2)), min_size=1, max_size=8
    )


def _encode(messages, closing: bool, deflate: bool) -> tuple[bytes, list]:
    """The client's bytes for ``messages`` (each cut in ``parts`` fragments, with pings between
    them), and the events the server must report."""
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -9) if deflate else None
    data, expected = b"", []
    for (kind, value), parts, pings in messages:
        raw = value.encode() if kind == "text" else value
        opcode = Opcode.TEXT if kind == "text" else Opcode.BINARY
        rsv = 0
        if compressor is not None:
            raw = (compressor.compress(raw) + compressor.flush(zlib.Z_SYNC_FLUSH))[:-4]
            rsv = 0x40
        cuts = sorted({len(raw) * i // parts for i in range(1, parts)})
        pieces = [raw[a:b] for a, b in zip([0] + cuts, cuts + [len(raw)], strict=True)]
        for i, piece in enumerate(pieces):
            fin = 0x80 if i == len(pieces) - 1 else 0
            data += client_frame(fin | (opcode | rsv if i == 0 else 0), piece)
            if i < len(pieces) - 1:
                for ping in pings:
                    data += client_frame(0x89, ping)
                    expected.append(Ping(ping))
        expected.append(Message(value))
    if closing:
        data += client_frame(0x88, struct.pack("!H", 1000) + b"done")
        expected.append(Close(1000, "done"))
    return data, expected


@hsettings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages=_messages(), closing=st.booleans(), deflate=st.booleans(), cuts=st.lists(st.integers(0, 10_000)))
def test_any_split_of_a_valid_stream_yields_the_same_events(messages, closing, deflate, cuts):
    data, expected = _encode(messages, closing, deflate)
    limits = FrameLimits(max_message_size=8192, rate=0)
    offer = "permessage-deflate; client_max_window_bits" if deflate else None

    def run(chunks: list[bytes]) -> tuple[list, bytes]:
        protocol = ServerProtocol(limits, Deflate.negotiate(offer)[0] if offer else None)
        events, out = [], b""
        for chunk in chunks:
            events += protocol.receive_data(chunk, 1.0)
            out += protocol.data_to_send()
        return events, out

    whole = run([data])
    assert whole[0] == expected
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0] + points, points + [len(data)], strict=True)]
    assert run(chunks) == whole
    assert run([data[i : i + 1] for i in range(len(data))]) == whole  # one byte at a time

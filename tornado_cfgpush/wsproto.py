"""RFC 6455 after the handshake: one lean ``asyncio.Protocol`` per WebSocket connection.

Why not Tornado's ``WebSocketHandler`` for the life of the connection: it keeps, per
connection, the request handler, the HTTP connection, an ``IOStream``, a frame-reading
coroutine with its Task and Futures, and writes through a Future per frame (about 16 KB per
idle connection and 20 to 25 µs per delivery, DESIGN.md). A push server's connection is idle
almost always; after the upgrade it needs a socket, a frame parser and a few fields.

So Tornado does everything up to the upgrade (routing, checks, the ``101`` response;
``handlers/ws.py``), then the socket is handed to asyncio (``loop.connect_accepted_socket``)
and served here: a delivery is one ``transport.write`` of prepared bytes (a direct
``send`` when the socket keeps up), the unsent backlog is bounded by asyncio's own flow
control (``pause_writing``), and reading is a parser over ``data_received`` with no Task.

Client frames are checked as RFC 6455 says a server must: masked, no reserved bits but
the negotiated one, control frames final and at most 125 bytes, continuation only inside a
fragmented message, the message size bounded (1009), text valid UTF-8 (1007); any other
violation closes with 1002. Every close sends a close frame first.
"""
from __future__ import annotations

import asyncio
import struct
import time
import zlib
from typing import Any

# Close codes (RFC 6455 section 7.4.1; PROTOCOL.md section 2 for ours).
NORMAL = 1000
GOING_AWAY = 1001
PROTOCOL_ERROR = 1002
INVALID_DATA = 1007
POLICY = 1008
TOO_BIG = 1009
INTERNAL_ERROR = 1011
TRY_AGAIN_LATER = 1013

# How long a closing connection waits for the peer's close frame before dropping the socket
# (Tornado's value): a peer that stopped reading never answers.
CLOSE_TIMEOUT = 5.0

_DEFLATE_TAIL = b"\x00\x00\xff\xff"  # RFC 7692 section 7.2.1


def unmask(mask: bytes, data: bytes) -> bytes:
    """Client payloads are XOR-masked with a 4-byte key; one big-integer XOR unmasks them."""
    n = len(data)
    if not n:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")


def frame(opcode: int, payload: bytes, *, rsv1: bool = False) -> bytes:
    """A complete, unmasked, final server frame."""
    first = 0x80 | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    if n < 126:
        return struct.pack("!BB", first, n) + payload
    if n <= 0xFFFF:
        return struct.pack("!BBH", first, 126, n) + payload
    return struct.pack("!BBQ", first, 127, n) + payload


def close_frame(code: int, reason: str = "") -> bytes:
    return frame(0x8, struct.pack("!H", code) + reason.encode("utf-8")[:123])


def _valid_close_code(code: int) -> bool:
    # Codes a peer may send (RFC 6455 section 7.4): 1004-1006 and 1015 are never on the wire.
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014) \
        or 3000 <= code <= 4999


# -- permessage-deflate (RFC 7692) -------------------------------------------------------------------

class Deflate:
    """Negotiated permessage-deflate parameters of one connection.

    The server always takes ``server_no_context_takeover``: each event is compressed once,
    with a fresh context, and the same compressed frame serves every connection whose
    window is at least as large (``Event.ws_frame_deflated``). Server messages of one
    connection (Welcome, Pong, ...) are sent uncompressed, which RFC 7692 allows per message.
    Client messages are inflated with a context that lives only as long as the client
    keeps its own (none with ``client_no_context_takeover``), with a small window asked for.
    """

    __slots__ = ("server_wbits", "client_wbits", "client_no_context_takeover", "_inflater")

    def __init__(self, server_wbits: int = 15, client_wbits: int = 15, client_no_context_takeover: bool = False):
        self.server_wbits = server_wbits
        self.client_wbits = client_wbits
        self.client_no_context_takeover = client_no_context_takeover
        self._inflater: Any = None

    @classmethod
    def negotiate(cls, header: str) -> tuple["Deflate", str] | None:
        """The first acceptable ``permessage-deflate`` offer of a ``Sec-WebSocket-Extensions``
        header, as (parameters, response header value); None when there is none."""
        for offer in header.split(","):
            name, *params = [p.strip() for p in offer.split(";")]
            if name.lower() != "permessage-deflate":
                continue
            accepted = cls._accept(params)
            if accepted is not None:
                return accepted
        return None

    @classmethod
    def _accept(cls, params: list[str]) -> tuple["Deflate", str] | None:
        seen: dict[str, str | None] = {}
        for param in params:
            if not param:
                continue
            key, _, value = param.partition("=")
            key = key.strip().lower()
            if key in seen:
                return None  # RFC 7692 section 7: a parameter given twice declines the offer
            seen[key] = value.strip().strip('"') if value else None
        response = ["permessage-deflate", "server_no_context_takeover"]
        deflate = cls()
        for key, value in seen.items():
            if key == "server_no_context_takeover" and value is None:
                continue  # ours anyway
            if key == "client_no_context_takeover" and value is None:
                deflate.client_no_context_takeover = True
                response.append("client_no_context_takeover")
            elif key == "server_max_window_bits":
                # zlib cannot make a raw deflate stream with a 256-byte window: decline 8.
                if value is None or not value.isdigit() or not 9 <= int(value) <= 15:
                    return None
                deflate.server_wbits = int(value)
                response.append(f"server_max_window_bits={value}")
            elif key == "client_max_window_bits":
                if value is not None and (not value.isdigit() or not 8 <= int(value) <= 15):
                    return None
                # The client may take any window up to the one we name: a small one keeps
                # the inflater of a client that keeps its context small (about 8 KB).
                deflate.client_wbits = 9 if value is None else min(9, int(value))
                response.append(f"client_max_window_bits={deflate.client_wbits}")
            else:
                return None  # an unknown parameter declines the offer
        return deflate, "; ".join(response)

    def inflate(self, data: bytes, limit: int) -> bytes | None:
        """One client message; None when it inflates past ``limit`` bytes. Raises zlib.error."""
        inflater = self._inflater
        if inflater is None:
            # A window at least the client's (zlib's smallest raw window is 9 bits).
            inflater = zlib.decompressobj(-max(9, self.client_wbits))
            if not self.client_no_context_takeover:
                self._inflater = inflater
        out = inflater.decompress(data + _DEFLATE_TAIL, limit + 1)
        if len(out) > limit or inflater.unconsumed_tail:
            self._inflater = None
            return None
        return out


def deflate_frame(payload: bytes, wbits: int) -> bytes:
    """A compressed (RSV1) text frame of ``payload`` with a fresh context."""
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -wbits)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    if data.endswith(_DEFLATE_TAIL):
        data = data[:-4]
    return frame(0x1, data, rsv1=True)


# -- the connection ------------------------------------------------------------------------------

class WebSocketProtocol(asyncio.Protocol):
    """Framing and the close handshake; subclasses get ``on_message(str | bytes)``,
    ``on_backlog_full()`` and ``on_connection_lost()``."""

    # Slots, not a __dict__: thousands of these live for hours (and past 30 attributes
    # CPython stops sharing instance-dict keys, which costs about 1.3 KB per connection).
    __slots__ = ("max_message_size", "max_backlog", "deflate", "last_seen", "close_code", "_transport",
                 "_buffer", "_fragments", "_fragment_opcode", "_fragment_compressed", "_closing", "_close_timer")

    def __init__(self, max_message_size: int, max_backlog: int, deflate: Deflate | None = None):
        self.max_message_size = max_message_size
        self.max_backlog = max_backlog
        self.deflate = deflate
        self.last_seen = time.monotonic()  # of the last bytes from the peer (heartbeat rule)
        self.close_code: int | None = None  # the peer's, once it sent a close frame
        self._transport: asyncio.Transport | None = None
        self._buffer = b""  # an incomplete frame
        self._fragments: bytearray | None = None  # a fragmented message so far
        self._fragment_opcode = 0
        self._fragment_compressed = False
        self._closing = False  # our close frame is sent: nothing else may follow
        self._close_timer: asyncio.TimerHandle | None = None

    # -- asyncio's side ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's or uvloop's (which is not an asyncio.Transport subclass).
        self._transport = transport  # type: ignore[assignment]
        # pause_writing() is called once the unsent bytes pass the bound: the slow-client rule.
        transport.set_write_buffer_limits(high=self.max_backlog)

    def data_received(self, data: bytes) -> None:
        self.last_seen = time.monotonic()
        buf = self._buffer + data if self._buffer else data
        pos, end = 0, len(buf)
        while end - pos >= 2:
            first, second = buf[pos], buf[pos + 1]
            length, head = second & 0x7F, 2
            if length == 126:
                if end - pos < 4:
                    break
                length, head = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
            elif length == 127:
                if end - pos < 10:
                    break
                length, head = int.from_bytes(buf[pos + 2:pos + 10], "big"), 10
            opcode = first & 0x0F
            if not second & 0x80:
                return self.fail(PROTOCOL_ERROR, "client frames must be masked")
            if opcode & 0x8:
                if length > 125 or not first & 0x80:
                    return self.fail(PROTOCOL_ERROR, "control frames must be final and at most 125 bytes")
            elif length + (len(self._fragments) if self._fragments is not None else 0) > self.max_message_size:
                return self.fail(TOO_BIG, "message too big")
            if end - pos < head + 4 + length:
                break
            start = pos + head + 4
            payload = unmask(buf[pos + head:start], buf[start:start + length])
            pos = start + length
            self._frame(first, opcode, payload)
            if self._transport is None or self._transport.is_closing():
                return  # failed, or closed: nothing after this frame counts
        self._buffer = buf[pos:] if pos < end else b""

    def eof_received(self) -> bool:
        return False  # the peer half-closed: close our side too

    def pause_writing(self) -> None:
        self.on_backlog_full()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self.on_connection_lost()

    # -- frames -------------------------------------------------------------------------------------

    def _frame(self, first: int, opcode: int, payload: bytes) -> None:
        final = first & 0x80
        rsv = first & 0x70
        compressed = False
        if rsv:
            # RSV1 only, only with permessage-deflate, only on a message's first frame.
            if rsv != 0x40 or self.deflate is None or opcode not in (0x1, 0x2):
                return self.fail(PROTOCOL_ERROR, "reserved bits set")
            compressed = True
        if opcode == 0x0:
            if self._fragments is None:
                return self.fail(PROTOCOL_ERROR, "continuation frame outside a fragmented message")
            self._fragments += payload
            if final:
                opcode, payload, compressed = self._fragment_opcode, bytes(self._fragments), self._fragment_compressed
                self._fragments = None
                self._message(opcode, payload, compressed)
        elif opcode in (0x1, 0x2):
            if self._fragments is not None:
                return self.fail(PROTOCOL_ERROR, "a new message inside a fragmented one")
            if final:
                self._message(opcode, payload, compressed)
            else:
                self._fragments = bytearray(payload)
                self._fragment_opcode, self._fragment_compressed = opcode, compressed
        elif opcode == 0x8:
            self._peer_closed(payload)
        elif opcode == 0x9:
            # Answer the ping unless the peer is not reading: pongs must not pile up
            # (RFC 6455 section 5.5.3 lets us answer only the latest).
            transport = self._transport
            if not self._closing and transport is not None and not transport.get_write_buffer_size():
                transport.write(frame(0xA, payload))
        elif opcode == 0xA:
            pass  # a pong: last_seen is all it means
        else:
            self.fail(PROTOCOL_ERROR, f"unknown opcode {opcode}")

    def _message(self, opcode: int, payload: bytes, compressed: bool) -> None:
        if self._closing:
            return  # after our close frame, only the peer's close matters
        if compressed:
            assert self.deflate is not None
            try:
                inflated = self.deflate.inflate(payload, self.max_message_size)
            except zlib.error:
                return self.fail(INVALID_DATA, "invalid compressed data")
            if inflated is None:
                return self.fail(TOO_BIG, "message too big after decompression")
            payload = inflated
        if opcode == 0x2:
            self.on_message(payload)
            return
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            return self.fail(INVALID_DATA, "text frames must be valid UTF-8")
        self.on_message(text)

    def _peer_closed(self, payload: bytes) -> None:
        code = NORMAL
        if len(payload) == 1:
            return self.fail(PROTOCOL_ERROR, "close frame with a one-byte body")
        if len(payload) >= 2:
            code = struct.unpack("!H", payload[:2])[0]
            if not _valid_close_code(code):
                return self.fail(PROTOCOL_ERROR, f"invalid close code {code}")
            try:
                payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                return self.fail(INVALID_DATA, "close reason must be valid UTF-8")
        self.close_code = code if payload else None
        transport = self._transport
        if transport is None:
            return
        if not self._closing:  # echo the peer's code (RFC 6455 section 5.5.1)
            self._closing = True
            transport.write(close_frame(code) if payload else frame(0x8, b""))
        transport.close()  # after what is buffered; the server closes TCP first

    # -- our side ------------------------------------------------------------------------------------

    def write(self, data: bytes) -> bool:
        """Prepared frame bytes to the peer; False when the connection is closing or gone."""
        transport = self._transport
        if transport is None or self._closing or transport.is_closing():
            return False
        transport.write(data)
        return True

    def close(self, code: int = NORMAL, reason: str = "") -> None:
        """Send a close frame and wait (up to CLOSE_TIMEOUT) for the peer's, then drop the socket."""
        transport = self._transport
        if transport is None or self._closing:
            return
        self._closing = True
        transport.write(close_frame(code, reason))
        self._close_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self.abort)

    def fail(self, code: int, reason: str) -> None:
        """A broken frame from the peer (or a failure of ours, 1011): say why, then close
        without waiting for an answer."""
        transport = self._transport
        if transport is None:
            return
        if not self._closing:
            self._closing = True
            transport.write(close_frame(code, reason))
        self.on_protocol_error(code, reason)
        transport.close()

    def abort(self) -> None:
        """Drop the socket now (a silent peer, or no answer to our close frame)."""
        if self._transport is not None:
            self._transport.abort()

    def pause_reading(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    # -- for subclasses ----------------------------------------------------------------------------------

    def on_message(self, message: str | bytes) -> None:
        pass

    def on_backlog_full(self) -> None:
        pass

    def on_protocol_error(self, code: int, reason: str) -> None:
        pass

    def on_connection_lost(self) -> None:
        pass

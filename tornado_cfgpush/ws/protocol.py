"""The server side of RFC 6455 after the handshake, as a sans-I/O object.

``ServerProtocol`` takes the bytes a client sent (``receive_data(data, now)``) and returns what
happened, as events: a ``Message``, a ``Ping`` or ``Pong``, the peer's ``Close``, or a
``Failure`` with its close code. The bytes the server must send in answer (pongs, close frames)
wait in ``data_to_send()``. It owns no socket, no timer and no clock (the caller passes
``now``): the asyncio side (``ws/connection.py``) owns those, and the tests feed it bytes.
This is the shape of the ``websockets`` library's ``Protocol``.

Client frames are checked as RFC 6455 says a server must: masked, no reserved bits but the
negotiated one (permessage-deflate's RSV1 on a message's first frame), control frames final
and at most 125 bytes, continuation only inside a fragmented message, the message size bounded
(1009, compressed messages after inflating), text valid UTF-8 (1007), a valid close code and
a UTF-8 close reason; any other violation fails with 1002. Every failure queues a close frame.

Every frame counts against one budget per connection (``FrameLimits``): data, continuation,
ping, pong and close frames alike, in a token bucket that holds ``burst`` frames and refills at
``rate`` per second. A frame past it fails with 1008 before it is unmasked or answered, so a
client flooding pings or empty continuation frames costs a few frames' work and is closed.
"""

from __future__ import annotations

import struct
import zlib

from .deflate import Deflate
from .frames import EMPTY_CLOSE_FRAME, CloseCode, Opcode, close_frame, frame, unmask, valid_close_code

# The protocol's state: OPEN; CLOSING once our close frame is queued (nothing else may follow
# it: messages are ignored, pings not answered, only the peer's close matters); CLOSED once the
# peer's close frame arrived or a frame failed (nothing more is read).
OPEN, CLOSING, CLOSED = 1, 2, 3


class FrameLimits:
    """What one connection's client may send; shared by every connection of a server."""

    __slots__ = ("max_message_size", "rate", "burst")

    def __init__(self, max_message_size: int, rate: float, burst: float | None = None):
        self.max_message_size = max_message_size
        self.rate = rate  # frames per second, sustained; 0: no budget
        # The bucket holds one second's worth: a client may send ``rate`` frames at once.
        self.burst = float(rate if burst is None else burst)


# -- events ------------------------------------------------------------------------------------------


class Message:
    """A complete data message: ``str`` for text, ``bytes`` for binary."""

    __slots__ = ("data",)

    def __init__(self, data: str | bytes):
        self.data = data

    def __eq__(self, other: object) -> bool:
        return type(other) is Message and other.data == self.data

    def __repr__(self) -> str:
        return f"Message({self.data!r})"


class Ping:
    """A client ping; its pong is queued."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes):
        self.payload = payload

    def __eq__(self, other: object) -> bool:
        return type(other) is Ping and other.payload == self.payload

    def __repr__(self) -> str:
        return f"Ping({self.payload!r})"


class Pong:
    """A client pong (its arrival is all it means)."""

    __slots__ = ("payload",)

    def __init__(self, payload: bytes):
        self.payload = payload

    def __eq__(self, other: object) -> bool:
        return type(other) is Pong and other.payload == self.payload

    def __repr__(self) -> str:
        return f"Pong({self.payload!r})"


class Close:
    """The peer's close frame: ``code`` None when it had no body. Our echo (unless our own
    close frame went first) is queued; the server then closes the TCP connection."""

    __slots__ = ("code", "reason")

    def __init__(self, code: int | None, reason: str = ""):
        self.code = code
        self.reason = reason

    def __eq__(self, other: object) -> bool:
        return type(other) is Close and (other.code, other.reason) == (self.code, self.reason)

    def __repr__(self) -> str:
        return f"Close({self.code!r}, {self.reason!r})"


class Failure:
    """A frame the server cannot accept; the close frame with ``code`` is queued, and the
    server closes the TCP connection without waiting for an answer."""

    __slots__ = ("code", "reason")

    def __init__(self, code: CloseCode, reason: str):
        self.code = code
        self.reason = reason

    def __eq__(self, other: object) -> bool:
        return type(other) is Failure and (other.code, other.reason) == (self.code, self.reason)

    def __repr__(self) -> str:
        return f"Failure({self.code!r}, {self.reason!r})"


Event = Message | Ping | Pong | Close | Failure


class _Fail(Exception):
    def __init__(self, code: CloseCode, reason: str):
        self.code = code
        self.reason = reason


# -- the protocol --------------------------------------------------------------------------------------


class ServerProtocol:
    """One connection's framing state. Thousands live for hours: slots, and nothing allocated
    per connection that an idle one does not need."""

    __slots__ = (
        "limits",
        "deflate",
        "state",
        "_out",
        "_buffer",
        "_fragments",
        "_fragment_opcode",
        "_fragment_compressed",
        "_tokens",
        "_stamp",
    )

    def __init__(self, limits: FrameLimits, deflate: Deflate | None = None):
        self.limits = limits
        self.deflate = deflate
        self.state = OPEN
        self._out = b""  # bytes to send: pongs, close frames
        self._buffer = b""  # an incomplete frame
        self._fragments: bytearray | None = None  # a fragmented message so far
        self._fragment_opcode = 0
        self._fragment_compressed = False
        # The frame budget: a full bucket, refilled from the first frame's time on.
        self._tokens = limits.burst
        self._stamp: float | None = None

    # -- receiving ------------------------------------------------------------------------------

    def receive_data(self, data: bytes, now: float) -> list[Event]:
        """What ``data`` completes, in order; ``now`` (seconds, any monotonic clock) meters the
        frame budget. After a ``Close`` or ``Failure`` nothing more is read."""
        if self.state == CLOSED:
            return []
        events: list[Event] = []
        buf = self._buffer + data if self._buffer else data
        pos, end = 0, len(buf)
        try:
            while end - pos >= 2:
                first, second = buf[pos], buf[pos + 1]
                length, head = second & 0x7F, 2
                if length == 126:
                    if end - pos < 4:
                        break
                    length, head = int.from_bytes(buf[pos + 2 : pos + 4], "big"), 4
                elif length == 127:
                    if end - pos < 10:
                        break
                    length, head = int.from_bytes(buf[pos + 2 : pos + 10], "big"), 10
                opcode = first & 0x0F
                if not second & 0x80:
                    raise _Fail(CloseCode.PROTOCOL_ERROR, "client frames must be masked")
                if opcode & 0x8:
                    if length > 125 or not first & 0x80:
                        raise _Fail(CloseCode.PROTOCOL_ERROR, "control frames must be final and at most 125 bytes")
                elif (
                    length + (len(self._fragments) if self._fragments is not None else 0) > self.limits.max_message_size
                ):
                    raise _Fail(CloseCode.MESSAGE_TOO_BIG, "message too big")
                if end - pos < head + 4 + length:
                    break
                if not self._spend(now):
                    raise _Fail(CloseCode.POLICY_VIOLATION, "rate limit exceeded")
                start = pos + head + 4
                payload = unmask(buf[pos + head : start], buf[start : start + length])
                pos = start + length
                self._frame(first, opcode, payload, events)
                if self.state == CLOSED:
                    break  # the peer closed: nothing after its close frame counts
        except _Fail as failure:
            self._fail(failure.code, failure.reason, events)
            return events
        self._buffer = buf[pos:] if pos < end and self.state != CLOSED else b""
        return events

    def _spend(self, now: float) -> bool:
        """Take one frame from the budget; False when it is empty."""
        limits = self.limits
        if not limits.rate:
            return True
        stamp = self._stamp
        tokens = self._tokens if stamp is None else self._tokens + (now - stamp) * limits.rate
        if tokens > limits.burst:
            tokens = limits.burst
        self._stamp = now
        if tokens < 1.0:
            self._tokens = tokens
            return False
        self._tokens = tokens - 1.0
        return True

    def _frame(self, first: int, opcode: int, payload: bytes, events: list[Event]) -> None:
        final = first & 0x80
        rsv = first & 0x70
        compressed = False
        if rsv:
            # RSV1 only, only with permessage-deflate, only on a message's first frame.
            if rsv != 0x40 or self.deflate is None or opcode not in (Opcode.TEXT, Opcode.BINARY):
                raise _Fail(CloseCode.PROTOCOL_ERROR, "reserved bits set")
            compressed = True
        if opcode == Opcode.CONT:
            if self._fragments is None:
                raise _Fail(CloseCode.PROTOCOL_ERROR, "continuation frame outside a fragmented message")
            self._fragments += payload
            if final:
                opcode, payload, compressed = self._fragment_opcode, bytes(self._fragments), self._fragment_compressed
                self._fragments = None
                self._message(opcode, payload, compressed, events)
        elif opcode == Opcode.TEXT or opcode == Opcode.BINARY:
            if self._fragments is not None:
                raise _Fail(CloseCode.PROTOCOL_ERROR, "a new message inside a fragmented one")
            if final:
                self._message(opcode, payload, compressed, events)
            else:
                self._fragments = bytearray(payload)
                self._fragment_opcode, self._fragment_compressed = opcode, compressed
        elif opcode == Opcode.CLOSE:
            self._peer_closed(payload, events)
        elif opcode == Opcode.PING:
            # Every ping is answered (RFC 6455 section 5.5.2), backlog or not: what bounds a
            # peer that does not read is the backlog rule (1013), and the frame budget bounds
            # how many pongs a client can ask for.
            if self.state == OPEN:
                self._out += frame(Opcode.PONG, payload)
            events.append(Ping(payload))
        elif opcode == Opcode.PONG:
            events.append(Pong(payload))
        else:
            raise _Fail(CloseCode.PROTOCOL_ERROR, f"unknown opcode {opcode}")

    def _message(self, opcode: int, payload: bytes, compressed: bool, events: list[Event]) -> None:
        if self.state != OPEN:
            return  # after our close frame, only the peer's close matters
        if compressed:
            assert self.deflate is not None
            try:
                inflated = self.deflate.inflate(payload, self.limits.max_message_size)
            except zlib.error:
                raise _Fail(CloseCode.INVALID_DATA, "invalid compressed data") from None
            if inflated is None:
                raise _Fail(CloseCode.MESSAGE_TOO_BIG, "message too big after decompression")
            payload = inflated
        if opcode == Opcode.BINARY:
            events.append(Message(payload))
            return
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise _Fail(CloseCode.INVALID_DATA, "text frames must be valid UTF-8") from None
        events.append(Message(text))

    def _peer_closed(self, payload: bytes, events: list[Event]) -> None:
        if len(payload) == 1:
            raise _Fail(CloseCode.PROTOCOL_ERROR, "close frame with a one-byte body")
        code: int | None = None
        reason = ""
        if payload:
            code = struct.unpack("!H", payload[:2])[0]
            if not valid_close_code(code):
                raise _Fail(CloseCode.PROTOCOL_ERROR, f"invalid close code {code}")
            try:
                reason = payload[2:].decode("utf-8")
            except UnicodeDecodeError:
                raise _Fail(CloseCode.INVALID_DATA, "close reason must be valid UTF-8") from None
        if self.state == OPEN:  # echo the peer's code (RFC 6455 section 5.5.1)
            self._out += close_frame(code) if code is not None else EMPTY_CLOSE_FRAME
        self.state = CLOSED
        events.append(Close(code, reason))

    def _fail(self, code: CloseCode, reason: str, events: list[Event]) -> None:
        if self.state == OPEN:
            self._out += close_frame(code, reason)
        self.state = CLOSED
        self._buffer = b""
        self._fragments = None
        events.append(Failure(code, reason))

    # -- sending ---------------------------------------------------------------------------------

    def send_close(self, code: int, reason: str = "") -> bool:
        """Queue our close frame; False when one was already sent or the peer's arrived."""
        if self.state != OPEN:
            return False
        self._out += close_frame(code, reason)
        self.state = CLOSING
        return True

    def data_to_send(self) -> bytes:
        """The bytes queued since the last call (pongs, close frames), to write in order."""
        out, self._out = self._out, b""
        return out

    @property
    def open(self) -> bool:
        """Whether messages may still be sent (no close frame went either way)."""
        return self.state == OPEN

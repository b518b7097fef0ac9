"""RFC 6455 frames: opcodes, close codes, building server frames, unmasking client payloads.

Pure functions over bytes; no I/O. Server frames are never masked and never fragmented: every
message the server sends fits in one final frame.
"""

from __future__ import annotations

import enum
import struct


class Opcode(enum.IntEnum):
    """RFC 6455 section 5.2."""

    CONT = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


class CloseCode(enum.IntEnum):
    """RFC 6455 section 7.4.1; docs/protocol.md section 2 says which ones this server uses."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005  # never on the wire: a close frame without a body
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014


# Codes a peer may send in a close frame (RFC 6455 section 7.4): 1004-1006 and 1015 are
# reserved and never on the wire; 3000-4999 belong to libraries and applications.
_PEER_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})


def valid_close_code(code: int) -> bool:
    return code in _PEER_CLOSE_CODES or 3000 <= code <= 4999


def frame(opcode: int, payload: bytes, *, rsv1: bool = False) -> bytes:
    """A complete, unmasked, final server frame."""
    first = 0x80 | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    if n < 126:
        return struct.pack("!BB", first, n) + payload
    if n <= 0xFFFF:
        return struct.pack("!BBH", first, 126, n) + payload
    return struct.pack("!BBQ", first, 127, n) + payload


def text_frame(payload: bytes) -> bytes:
    """A text frame of UTF-8 ``payload``."""
    return frame(Opcode.TEXT, payload)


def close_frame(code: int, reason: str = "") -> bytes:
    """A close frame with ``code`` and at most 123 bytes of ``reason`` (control frames carry 125)."""
    return frame(Opcode.CLOSE, struct.pack("!H", code) + reason.encode("utf-8")[:123])


# The server's heartbeat ping (empty payload): the same two bytes for every connection.
PING_FRAME = frame(Opcode.PING, b"")
# A close frame without a body, the echo of a peer's empty one.
EMPTY_CLOSE_FRAME = frame(Opcode.CLOSE, b"")


def unmask(mask: bytes, data: bytes) -> bytes:
    """Client payloads are XOR-masked with a 4-byte key; one big-integer XOR unmasks them."""
    n = len(data)
    if not n:
        return b""
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(key, "big")).to_bytes(n, "big")

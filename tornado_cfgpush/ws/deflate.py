"""permessage-deflate (RFC 7692): negotiation, inflating client messages, compressing events.

The server always takes ``server_no_context_takeover``: each event is compressed once, with a
fresh context, and the same compressed frame serves every connection whose window is at least
as large (``Event.ws_frame_deflated``). Server messages of one connection (Welcome, Pong, ...)
go uncompressed, which RFC 7692 allows per message.

Client messages are inflated with a context the size of the window the server agreed to:

* a client that offers ``client_max_window_bits`` is told 9 (512 bytes; zlib's smallest raw
  window), and its inflater, kept between messages while the client keeps its context, costs
  about 8 KB;
* a client that does not offer it may use a 32 KB window that the server cannot cap, and
  keeping a 15-bit inflater for its context costs about 45 KB per connection. So the server
  answers ``client_no_context_takeover`` (RFC 7692 section 7.1.1.1 allows it even when not
  offered): each message then carries its own context, and no inflater outlives a message.
"""

from __future__ import annotations

import zlib
from typing import Any

from .frames import Opcode, frame

_DEFLATE_TAIL = b"\x00\x00\xff\xff"  # RFC 7692 section 7.2.1
# The client window the server asks for when the client lets it choose.
CLIENT_WINDOW_BITS = 9


class Deflate:
    """The negotiated permessage-deflate parameters of one connection."""

    __slots__ = ("server_wbits", "client_wbits", "client_no_context_takeover", "_inflater")

    def __init__(self, server_wbits: int = 15, client_wbits: int = 15, client_no_context_takeover: bool = False):
        self.server_wbits = server_wbits
        self.client_wbits = client_wbits
        self.client_no_context_takeover = client_no_context_takeover
        self._inflater: Any = None

    @classmethod
    def negotiate(cls, header: str) -> tuple[Deflate, str] | None:
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
    def _accept(cls, params: list[str]) -> tuple[Deflate, str] | None:
        seen: dict[str, str | None] = {}
        for param in params:
            if not param:
                continue
            name, _, raw = param.partition("=")
            key = name.strip().lower()
            if key in seen:
                return None  # RFC 7692 section 7: a parameter given twice declines the offer
            seen[key] = raw.strip().strip('"') if raw else None
        response = ["permessage-deflate", "server_no_context_takeover"]
        deflate = cls()
        window_capped = False
        for key, value in seen.items():
            if key == "server_no_context_takeover" and value is None:
                continue  # ours anyway
            if key == "client_no_context_takeover" and value is None:
                deflate.client_no_context_takeover = True
            elif key == "server_max_window_bits":
                # zlib cannot make a raw deflate stream with a 256-byte window: decline 8.
                if value is None or not value.isdigit() or not 9 <= int(value) <= 15:
                    return None
                deflate.server_wbits = int(value)
                response.append(f"server_max_window_bits={value}")
            elif key == "client_max_window_bits":
                if value is not None and (not value.isdigit() or not 8 <= int(value) <= 15):
                    return None
                # The client may take any window up to the one we name.
                deflate.client_wbits = CLIENT_WINDOW_BITS if value is None else min(CLIENT_WINDOW_BITS, int(value))
                window_capped = True
            else:
                return None  # an unknown parameter declines the offer
        if not window_capped:
            # The client's window is up to 32 KB and ours to keep: have it reset its
            # context per message instead (RFC 7692 section 7.1.1.1).
            deflate.client_no_context_takeover = True
        if deflate.client_no_context_takeover:
            response.append("client_no_context_takeover")
        if window_capped:
            response.append(f"client_max_window_bits={deflate.client_wbits}")
        return deflate, "; ".join(response)

    def inflate(self, data: bytes, limit: int) -> bytes | None:
        """One client message; None when it inflates past ``limit`` bytes. Raises zlib.error."""
        inflater = self._inflater
        if inflater is None:
            # A window at least the client's (zlib's smallest raw window is 9 bits).
            inflater = zlib.decompressobj(-max(9, self.client_wbits))
            if not self.client_no_context_takeover:
                self._inflater = inflater
        out: bytes = inflater.decompress(data + _DEFLATE_TAIL, limit + 1)
        if len(out) > limit or inflater.unconsumed_tail:
            self._inflater = None
            return None
        return out

    def holds_context(self) -> bool:
        """Whether an inflater is kept between messages (it costs memory while it lives)."""
        return self._inflater is not None


def deflate_frame(payload: bytes, wbits: int) -> bytes:
    """A compressed (RSV1) text frame of ``payload`` with a fresh context."""
    compressor = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -wbits)
    data = compressor.compress(payload) + compressor.flush(zlib.Z_SYNC_FLUSH)
    if data.endswith(_DEFLATE_TAIL):
        data = data[:-4]
    return frame(Opcode.TEXT, data, rsv1=True)

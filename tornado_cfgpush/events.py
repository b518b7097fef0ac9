"""The ``Event`` value and its one-time encodings.

An event is encoded when it is published, once: the JSON text of ``{"ConfigChanged": {...}}``
and, lazily, the WebSocket frame that carries it. Every connection of the tenant is then
written the very same bytes (encoding per recipient doubles the CPU per delivery).
"""

from __future__ import annotations

import json
from typing import Any, NamedTuple

from .ws.deflate import deflate_frame
from .ws.frames import text_frame

_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


class AckFailure(NamedTuple):
    """A client's answer that it could not apply ``event_id`` (an ``Ack`` with ``error``).

    A subscription keeps it in its one ``acked`` slot instead of the applied id: reporting
    failures costs no memory per connection, and a later answer replaces it."""

    event_id: str
    error: str


def encode_json(value: Any) -> str:
    """The one JSON form the server writes: compact, UTF-8, no NaN."""
    return _compact(value)


def sse_message(kind: str, data_json: str, event_id: str | None = None) -> bytes:
    """One Server-Sent Events message (docs/protocol.md section 3). ``data_json`` is one line:
    the compact JSON encoding escapes every newline inside strings."""
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {kind}\ndata: {data_json}\n\n".encode()


def http_chunk(data: bytes) -> bytes:
    """``data`` as one chunk of an HTTP/1.1 chunked body, so it can be prepared once too."""
    return b"%x\r\n%s\r\n" % (len(data), data)


SSE_PING = b": ping\n\n"
SSE_PING_CHUNK = http_chunk(SSE_PING)


class Event:
    """One published configuration change of one tenant."""

    __slots__ = ("tenant_id", "event_id", "body", "text", "_frame", "_deflated", "_sse")

    def __init__(self, event_id: str, body: dict[str, Any]):
        self.tenant_id: str = body["tenant_id"]
        self.event_id = event_id
        # docs/protocol.md field order: tenant_id, change_type, event_id, then the rest.
        self.body = {"tenant_id": body["tenant_id"], "change_type": body["change_type"], "event_id": event_id}
        self.body.update((k, v) for k, v in body.items() if k not in self.body)
        self.text = encode_json({"ConfigChanged": self.body})
        self._frame: bytes | None = None
        self._deflated: dict[int, bytes] | None = None
        self._sse: tuple[bytes, bytes] | None = None

    @property
    def ws_frame(self) -> bytes:
        """The WebSocket frame for this event, built on first use and then shared."""
        frame = self._frame
        if frame is None:
            frame = self._frame = text_frame(self.text.encode("utf-8"))
        return frame

    def ws_frame_deflated(self, wbits: int) -> bytes:
        """The permessage-deflate frame (no context takeover) for a window of ``wbits``:
        compressed once per window size, then shared like ``ws_frame``."""
        frames = self._deflated
        if frames is None:
            frames = self._deflated = {}
        frame = frames.get(wbits)
        if frame is None:
            frame = frames[wbits] = deflate_frame(self.text.encode("utf-8"), wbits)
        return frame

    def sse(self, chunked: bool) -> bytes:
        """The SSE message for this event, plain or as an HTTP chunk; built once, shared."""
        pair = self._sse
        if pair is None:
            plain = sse_message("ConfigChanged", encode_json(self.body), self.event_id)
            pair = self._sse = (plain, http_chunk(plain))
        return pair[1] if chunked else pair[0]

    def __repr__(self) -> str:
        return f"Event({self.event_id!r}, {self.body!r})"

"""``/events``: Server-Sent Events, the same subscription as ``/ws`` in another framing.

docs/protocol.md section 3: ``id:``, ``event:`` and ``data:`` lines, ``: ping`` comments every
heartbeat interval, resume from ``Last-Event-ID``. Tornado sends the response headers; from
then on the ``EventStreamSink`` writes prepared messages (pre-chunked for HTTP/1.1) straight to
the socket, so one SSE client costs what a WebSocket client costs.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import TYPE_CHECKING, Any

from tornado import web
from tornado.iostream import IOStream, StreamBufferFullError

from ..closing import CloseReason
from ..events import SSE_PING, SSE_PING_CHUNK, Event, encode_json, http_chunk, sse_message
from .base import AdmissionMixin, JsonErrorsMixin, Lease, Refused, check_query_size
from .subscription import Subscription, next_conn_id, read_subscription_query, refuse_with_log

if TYPE_CHECKING:  # pragma: no cover
    from ..ports import Subscribing

log = logging.getLogger("cfgpush.sse")


class EventStreamHandler(AdmissionMixin, JsonErrorsMixin, web.RequestHandler):
    def initialize(self, core: Subscribing) -> None:
        self.core = core
        self.conn_id = next_conn_id("sse")
        self.subscription: Subscription | None = None

    async def get(self) -> None:
        try:
            check_query_size(self, self.core.settings.max_query_size)
            tenant_id, since, want_manifest = read_subscription_query(
                self, self.conn_id, self.request.headers.get("Last-Event-ID")
            )
            lease = self.admit(tenant_id)  # Origin, token, limits: takes a slot
        except Refused as refused:
            refuse_with_log(self, refused)
            return
        try:
            await self._serve(lease, tenant_id, since, want_manifest)
        finally:
            lease.release()  # however it ended (idempotent)

    async def _serve(self, lease: Lease, tenant_id: str, since: str | None, want_manifest: bool) -> None:
        origin = self.request.headers.get("Origin")
        if origin and self.check_trusted_origin(origin):
            # An allowed cross-origin page's EventSource may read the stream (CORS).
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Vary", "Origin")
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")  # nginx: do not buffer the stream
        await self.flush()  # the headers, through Tornado; the body from here on is the sink's
        connection = self.request.connection
        stream = getattr(connection, "stream", None)
        if stream is None:
            self.finish()
            return
        # Tornado decides whether the body is chunked (HTTP/1.1) or delimited by the close
        # (HTTP/1.0); prepared messages must be framed the same way.
        chunked = getattr(connection, "_chunking_output", True)
        sink = EventStreamSink(self, stream, chunked, self.core.settings.max_backlog_bytes)
        sub = sink.owner = self.subscription = Subscription(self.core, tenant_id, self.conn_id, sink, lease)
        sub.opened()
        try:
            if await sub.subscribe(since, want_manifest):
                lease.schedule_expiry(sub.token_expired)
                await sink.done
        except Exception:  # a bug in the catch-up: this stream only
            log.exception("%s tenant %s: subscribing failed", self.conn_id, tenant_id)
            sub.close(CloseReason.INTERNAL_ERROR)
        finally:
            sub.gone()

    def on_connection_close(self) -> None:
        if self.subscription is not None:
            self.subscription.close(CloseReason.PEER_CLOSED)


class EventStreamSink:
    """A subscription's sink on an SSE response."""

    kind = "sse"
    __slots__ = ("handler", "stream", "chunked", "owner", "done")

    def __init__(self, handler: web.RequestHandler, stream: IOStream, chunked: bool, max_backlog: int):
        self.handler = handler
        self.stream: IOStream | None = stream
        self.chunked = chunked
        # The stream refuses (StreamBufferFullError) a write that would take its unsent bytes
        # past the bound: Tornado itself never bounds them otherwise.
        stream.max_write_buffer_size = max_backlog
        self.owner: Subscription = None  # type: ignore[assignment]  # set right after
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()  # resolved at close

    @property
    def last_seen(self) -> float:
        # SSE clients cannot speak; a dead peer shows up as a failed write or a closed
        # socket, never as silence. The heartbeat sweep only pings them.
        return time.monotonic()

    def encode_event(self, event: Event) -> bytes:
        return event.sse(self.chunked)

    def encode_message(self, kind: str, body: Any, event_id: str | None = None) -> bytes:
        message = sse_message(kind, encode_json(body), event_id)
        return http_chunk(message) if self.chunked else message

    def ping(self) -> None:
        self.write(SSE_PING_CHUNK if self.chunked else SSE_PING)

    def write(self, data: bytes) -> bool:
        """``data`` to the socket without a per-write Future when it keeps up.

        When Tornado's write buffer is empty (``IOStream.writing()`` is false), the bytes go
        straight to the socket (about 9 to 11 µs against 20 to 25 µs through
        ``IOStream.write``); only what the kernel does not take is queued in the stream. A peer
        gone closes the subscription; a backlog past the bound (the stream's
        ``max_write_buffer_size``) closes it as too slow.
        """
        stream = self.stream
        if stream is None:
            return False
        if stream.closed():
            self.owner.close(CloseReason.PEER_CLOSED)
            return False
        if not stream.writing():  # TLS too: the SSLSocket encrypts, as SSLIOStream's own write does
            try:
                sent = stream.socket.send(data)
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                sent = 0
            except OSError as exc:  # ECONNRESET, EPIPE: the peer is gone
                stream.close(exc_info=exc)
                self.owner.close(CloseReason.PEER_CLOSED)
                return False
            if sent == len(data):
                return True
            data = data[sent:]
        try:
            stream.write(data)
        except StreamBufferFullError:
            self.owner.close(CloseReason.TOO_SLOW)
            return False
        return True

    def close(self, reason: CloseReason) -> None:
        """End the stream cleanly (its final chunk: an EventSource reconnects) when ``reason``
        says so; else close the socket, freeing any backlog at once."""
        stream, self.stream = self.stream, None
        if stream is not None and not stream.closed():
            if reason.sse_clean:
                stream.max_write_buffer_size = None  # the final chunk goes out whatever is queued
                self.handler.finish()
            else:
                stream.close()
        if not self.done.done():
            self.done.set_result(None)

    def abort(self) -> None:
        stream = getattr(self.handler.request.connection, "stream", None)
        if stream is not None:
            stream.close()
        if not self.done.done():
            self.done.set_result(None)

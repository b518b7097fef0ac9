"""``/events``: Server-Sent Events, the same subscription as ``/ws`` in another framing.

PROTOCOL.md section 3: ``id:``, ``event:`` and ``data:`` lines, ``: ping`` comments every
heartbeat interval, resume from ``Last-Event-ID``. Once the headers are out, events are
written as prepared bytes (pre-chunked for HTTP/1.1) through the same path as WebSocket
frames, so one SSE client costs what a WebSocket client costs.
"""
from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from tornado import web

from ..events import SSE_PING, SSE_PING_CHUNK, Event, encode_json, http_chunk, sse_message
from .base import AdmissionMixin, JsonErrorsMixin, Refused, check_query_size
from .subscription import SubscriptionMixin, read_subscription_query, refuse_with_log

if TYPE_CHECKING:  # pragma: no cover
    from ..app import CfgPush

log = logging.getLogger("cfgpush.sse")


class EventStreamHandler(SubscriptionMixin, AdmissionMixin, JsonErrorsMixin, web.RequestHandler):
    transport = "sse"

    def initialize(self, core: "CfgPush") -> None:
        self.init_subscription(core)
        self._chunked = True
        self._done: asyncio.Future | None = None

    @property
    def last_seen(self) -> float:
        # SSE clients cannot speak; a dead peer shows up as a failed write or a closed
        # socket, never as silence. The heartbeat sweep only pings them.
        return time.monotonic()

    async def get(self) -> None:
        try:
            check_query_size(self, self.core.settings.max_query_size)
            self.take_query(*read_subscription_query(self, self.conn_id, self.request.headers.get("Last-Event-ID")))
            self.admit(self.tenant_id)  # Origin, token, limits: takes a slot
        except Refused as refused:
            refuse_with_log(self, refused)
            return
        try:
            await self._serve()
        finally:
            self.leave()

    async def _serve(self) -> None:
        origin = self.request.headers.get("Origin")
        if origin and self.check_trusted_origin(origin):
            # An allowed cross-origin page's EventSource may read the stream (CORS).
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Vary", "Origin")
        self.set_header("Content-Type", "text/event-stream; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")  # nginx: do not buffer the stream
        self._done = asyncio.get_running_loop().create_future()
        await self.flush()  # the headers, through Tornado; the body from here on is ours
        connection = self.request.connection
        # Tornado decides whether the body is chunked (HTTP/1.1) or delimited by the close
        # (HTTP/1.0); prepared messages must be framed the same way.
        self._chunked = getattr(connection, "_chunking_output", True)
        stream = getattr(connection, "stream", None)
        if stream is None or not await self.subscribe(stream):
            self.finish()
            return
        self.schedule_expiry(self._token_expired)
        try:
            await self._done
        finally:
            self.forget()

    def frame_event(self, event: Event) -> bytes:
        return event.sse(self._chunked)

    def frame_message(self, kind: str, body: Any, event_id: str | None = None) -> bytes:
        message = sse_message(kind, encode_json(body), event_id)
        return http_chunk(message) if self._chunked else message

    def send_ping(self) -> None:
        self.send_bytes(SSE_PING_CHUNK if self._chunked else SSE_PING)

    def forget(self) -> None:
        super().forget()
        self.leave()  # the connection slot and the expiry timer

    def _token_expired(self) -> None:
        """SSE clients cannot send a Refresh: the stream ends; reconnect with a new token."""
        self._expiry = None
        log.info("%s tenant %s: token expired, ending the stream", self.conn_id, self.tenant_id)
        self.close_going_away()

    def _end(self) -> None:
        self.forget()
        if self._done is not None and not self._done.done():
            self._done.set_result(None)

    def close_going_away(self) -> None:
        """End the stream cleanly (the final chunk); EventSource clients reconnect."""
        self._end()
        if not self._finished:
            self.finish()

    def close_slow(self) -> None:
        self._end()
        stream = self.request.connection.stream if hasattr(self.request.connection, "stream") else None
        if stream is not None:
            stream.close()  # nothing after the backlog could reach it: free it now

    def close_dead(self) -> None:  # never called: last_seen is always now
        self.close_slow()

    def on_connection_close(self) -> None:
        self._end()

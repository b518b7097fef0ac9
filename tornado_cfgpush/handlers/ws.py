"""``/ws``: one WebSocket per client of one tenant (PROTOCOL.md section 2).

Two objects, one per phase. ``ConfigWebSocket`` is a Tornado request handler: it checks
the upgrade request (headers, query, Origin, token, limits), answers ``101`` and hands the
socket to asyncio. ``WebSocketSubscriber`` then serves the connection for its whole life:
the lean protocol of ``wsproto.py`` plus the subscription (``SubscriptionMixin``) and the
lease (slot, token expiry). The handler, the HTTP connection and the ``IOStream`` are
dropped at the upgrade: nothing is kept per connection that delivery does not need.
"""
from __future__ import annotations

import asyncio
import base64
import functools
import logging
from typing import TYPE_CHECKING, Any

from marshmallow import ValidationError
from tornado import web
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketProtocol13

from ..events import Event, encode_json
from ..schemas import flatten_messages, parse_client_message
from ..settings import Settings
from ..ws.connection import WebSocketConnection
from ..ws.deflate import Deflate
from ..ws.frames import PING_FRAME, CloseCode, text_frame
from ..ws.protocol import FrameLimits, ServerProtocol
from .base import AdmissionMixin, JsonErrorsMixin, LeaseMixin, Refused, check_query_size
from .subscription import SubscriptionMixin, next_conn_id, read_subscription_query, refuse_with_log

if TYPE_CHECKING:  # pragma: no cover
    from ..app import CfgPush
    from ..auth import Decision
    from ..limits import Slot

log = logging.getLogger("cfgpush.ws")

# What a client may send before its Welcome is out before we stop reading from it.
HELD_BYTES = 64 * 1024


class ConfigWebSocket(AdmissionMixin, JsonErrorsMixin, web.RequestHandler):
    """The upgrade: every check, then ``101`` and the hand-over (``_upgrade``)."""

    def initialize(self, core: "CfgPush") -> None:
        self.core = core
        self.conn_id = next_conn_id("ws")

    async def get(self) -> None:
        try:
            query = self._check_request()
        except Refused as refused:
            refuse_with_log(self, refused)
            return
        try:
            await self._upgrade(query)
        finally:
            self.leave()  # a no-op once the subscriber took the slot over

    def _check_request(self) -> tuple[str, str | None, bool]:
        headers = self.request.headers
        if headers.get("Upgrade", "").lower() != "websocket":
            raise Refused(400, "expected a WebSocket upgrade request (Upgrade: websocket)")
        if "upgrade" not in (s.strip().lower() for s in headers.get("Connection", "").split(",")):
            raise Refused(400, "expected 'Connection: Upgrade'")
        if headers.get("Sec-WebSocket-Version") != "13":
            raise Refused(426, "only WebSocket version 13 is supported", {"Sec-WebSocket-Version": "13"})
        try:
            key = base64.b64decode(headers.get("Sec-WebSocket-Key", ""), validate=True)
        except ValueError:  # binascii.Error, or a key that is not even ASCII
            key = b""
        if len(key) != 16:
            raise Refused(400, "Sec-WebSocket-Key must be 16 bytes in base64")
        check_query_size(self, self.core.settings.max_query_size)
        query = read_subscription_query(self, self.conn_id)
        # Origin, token, limits (base.AdmissionMixin): takes a slot.
        self.admit(query[0])
        return query

    async def _upgrade(self, query: tuple[str, str | None, bool]) -> None:
        settings = self.core.settings
        deflate = None
        if settings.ws_compression:
            negotiated = Deflate.negotiate(self.request.headers.get("Sec-WebSocket-Extensions", ""))
            if negotiated is not None:
                deflate, response = negotiated
                self.set_header("Sec-WebSocket-Extensions", response)
        self.clear_header("Content-Type")
        self.set_status(101)
        self.set_header("Upgrade", "websocket")
        self.set_header("Connection", "Upgrade")
        self.set_header("Sec-WebSocket-Accept",
                        WebSocketProtocol13.compute_accept_value(self.request.headers["Sec-WebSocket-Key"]))
        self.finish()
        stream = self.detach()
        # Bytes the client sent right after its request (it may, before reading our 101)
        # are in Tornado's read buffer: the new owner reads them first. _read_buffer is
        # private to Tornado, but it is the only place they are.
        early = bytes(stream._read_buffer)
        try:
            if stream._write_buffer:  # rarely: the 101 did not fit in the socket at once
                await stream.write(b"")
            sock = stream.socket.dup()  # ours; Tornado's copy closes with its stream
        except (StreamClosedError, AttributeError, OSError):  # the peer left meanwhile
            stream.close()
            return
        stream.close()
        conn = WebSocketSubscriber(self.core, self.conn_id, self.request, query, self.auth, self._slot, deflate)
        self._slot = None  # the subscriber gives it back now
        # The HTTP connection is done: keep only the request (headers, remote_ip).
        self.request.connection = self.request.server_connection = None
        try:
            await asyncio.get_running_loop().connect_accepted_socket(lambda: conn, sock)
        except OSError:  # the peer left in between
            sock.close()
            conn.leave()
            return
        try:
            await conn.start(early)
        except Exception:  # a bug in the catch-up: this connection only, and say so (1011)
            log.exception("%s tenant %s: subscribing failed", conn.conn_id, conn.tenant_id)
            conn.forget()
            conn.send_close(CloseCode.INTERNAL_ERROR, "internal server error")
            conn.finish()


@functools.lru_cache(maxsize=16)
def frame_limits(settings: Settings) -> FrameLimits:
    """One ``FrameLimits`` per server, shared by its connections."""
    return FrameLimits(settings.max_message_size, settings.max_client_rate)


class WebSocketSubscriber(SubscriptionMixin, LeaseMixin, WebSocketConnection):
    """One client after the upgrade: Welcome and events out, Ping/Ack/Refresh in."""

    transport = "ws"  # the metrics label (SubscriptionMixin)
    __slots__ = tuple(dict.fromkeys(SubscriptionMixin.SLOTS + LeaseMixin.SLOTS + (
        "remote_ip", "_held", "_reading_paused", "_deflate_wbits")))

    def __init__(self, core: "CfgPush", conn_id: str, request: Any, query: tuple[str, str | None, bool],
                 auth: "Decision | None", slot: "Slot | None", deflate: Deflate | None):
        settings = core.settings
        WebSocketConnection.__init__(self, ServerProtocol(frame_limits(settings), deflate), settings.max_backlog_bytes)
        self.init_subscription(core, conn_id)
        self.take_query(*query)
        # The upgrade request, for the cfgpush_authorize hook on a Refresh.
        self.request = request
        self.remote_ip = request.remote_ip
        self.auth = auth
        self._slot = slot
        self._expiry = None
        # Bytes received while subscribing (None once subscribed), answered after Welcome.
        self._held: bytes | None = b""
        self._reading_paused = False
        # Events are written compressed only when the client agreed; shared per window size.
        self._deflate_wbits = deflate.server_wbits if deflate is not None else 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.core.hub.sockets.add(self)

    async def start(self, early: bytes) -> None:
        """Subscribe, then read: nothing the client sends is answered before Welcome."""
        # Tornado's early bytes came first; anything received since connection_made follows.
        self._held = early + (self._held or b"")
        self.schedule_expiry(self._token_expired)
        if not await self.subscribe(self._transport):
            self.send_close(CloseCode.TRY_AGAIN_LATER, "broker unavailable, reconnect later")
            self.expect_close()
            return
        held, self._held = self._held, None
        if held:
            self.data_received(held)
        if self._reading_paused:
            self._reading_paused = False
            self.resume_reading()

    def data_received(self, data: bytes) -> None:
        held = self._held
        if held is None:
            super().data_received(data)
            return
        # Still subscribing: keep what arrives for after Welcome, within a bound.
        self._held = held + data
        if len(self._held) > HELD_BYTES and not self._reading_paused:
            self._reading_paused = True
            self.pause_reading()

    # -- framing (SubscriptionMixin) ---------------------------------------------------------------------

    def frame_event(self, event: Event) -> bytes:
        if self._deflate_wbits:
            return event.ws_frame_deflated(self._deflate_wbits)
        return event.ws_frame

    def frame_message(self, kind: str, body: Any, event_id: str | None = None) -> bytes:
        return text_frame(encode_json({kind: body} if kind else body).encode("utf-8"))

    def send_json(self, message: Any) -> None:
        self.send_bytes(self.frame_message("", message))

    def send_ping(self) -> None:
        self.send_bytes(PING_FRAME)

    def stream_closed(self) -> bool:
        return self._transport is None or self._transport.is_closing()

    def send_bytes(self, data: bytes) -> None:
        """Prepared bytes; a backlog past the bound ends in ``on_backlog_full`` (1013)."""
        if self._stream is not None and not self.write(data):
            self.forget()

    # -- closing ----------------------------------------------------------------------------------

    def _close(self, code: int, reason: str) -> None:
        """Close and leave the registry now, not when the peer answers (up to 5 s later)."""
        self.forget()
        self.send_close(code, reason)
        self.expect_close()

    def on_backlog_full(self) -> None:
        if self._stream is not None:  # not already on its way out
            self.too_slow()

    def close_slow(self) -> None:
        # The close frame queues behind the backlog; the socket is dropped if the peer has
        # not answered within CLOSE_TIMEOUT, which frees the backlog.
        self._close(CloseCode.TRY_AGAIN_LATER, "client too slow")

    def close_going_away(self) -> None:
        """Shutting down: 1001, then the socket closes once the buffer is out (the process
        will not wait for the peer's close frame)."""
        self.forget()
        self.send_close(CloseCode.GOING_AWAY, "server shutting down")
        self.finish()

    def close_dead(self) -> None:
        self._close(CloseCode.NORMAL, "heartbeat timeout")
        # The peer is silent: waiting for its close frame would only keep the socket.
        self.abort()

    def _token_expired(self) -> None:
        self._expiry = None
        log.info("%s tenant %s: token expired, closing (1008)", self.conn_id, self.tenant_id)
        self._close(CloseCode.POLICY_VIOLATION, "token expired")

    def forget(self) -> None:
        super().forget()
        self.leave()  # the connection slot and the expiry timer

    def on_failure(self, code: int, reason: str) -> None:
        if code == CloseCode.POLICY_VIOLATION:
            log.warning("%s tenant %s: over %d frames per second, closing (1008)",
                        self.conn_id, self.tenant_id, self.core.settings.max_client_rate)
        else:
            log.info("%s tenant %s: closing (%d): %s", self.conn_id, self.tenant_id, code, reason)
        self.forget()

    def on_peer_close(self, code: int | None) -> None:
        log.debug("%s tenant %s: the client closed (%s)", self.conn_id, self.tenant_id, code)
        self.forget()

    def on_lost(self) -> None:
        self.forget()
        self.core.hub.socket_closed(self)

    # -- from the client ----------------------------------------------------------------------------

    def on_message(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self.send_error_message("bad_message", "binary frames are not accepted; send JSON text")
            return
        try:
            kind, body = parse_client_message(message)
        except ValidationError as exc:
            self.send_error_message("bad_message", flatten_messages(exc.messages))
            return
        if kind == "Ping":
            self.send_json({"Pong": {"id": body["id"]}} if "id" in body else "Pong")
        elif kind == "Ack":
            self.acked = body["event_id"]
        elif kind == "Refresh":
            self._refresh(body["token"])

    def _refresh(self, token: str) -> None:
        """A newer token for the same tenant moves the expiry; a refused one changes nothing."""
        decision = self.decide(self.tenant_id, token)
        if not decision.allowed:
            self.send_error_message("refresh_refused", decision.reason)
            return
        current = self.auth.expires_at if self.auth is not None else None
        if current is not None and decision.expires_at is not None and decision.expires_at < current:
            self.send_error_message("refresh_refused", "token expires before the current one")
            return
        self.auth = decision
        self.schedule_expiry(self._token_expired)
        expires_at = decision.expires_at
        self.send_json({"Refreshed": {"expires_at": None if expires_at is None else int(expires_at)}})

    def send_error_message(self, code: str, message: str) -> None:
        self.send_json({"Error": {"code": code, "message": message}})

"""``/ws``: one WebSocket per client of one tenant (docs/protocol.md section 2).

Two phases. ``ConfigWebSocket`` is a Tornado request handler: it checks the upgrade request
(headers, query, Origin, token, limits), answers ``101`` and hands the socket to asyncio. The
connection is then served, for its whole life, by three small objects and nothing of Tornado's:

* a ``WebSocketSink``: the asyncio side of the WebSocket (ws/connection.py, around the sans-I/O
  core of ws/protocol.py) as the subscription's sink, and the client's messages (Ping, Ack,
  Refresh);
* a ``Subscription`` (handlers/subscription.py): catch-up, delivery, acknowledgement, closing;
* its ``Lease`` (handlers/base.py): the connection slot, the authorization, the token's expiry,
  and a ``HandshakeRequest``: what the ``cfgpush_authorize`` hook is shown again on a ``Refresh``.

The handler, the HTTP connection, the ``IOStream`` and the request are dropped at the upgrade.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import logging
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from marshmallow import ValidationError
from tornado import web
from tornado.httputil import HTTPHeaders, HTTPServerRequest
from tornado.iostream import SSLIOStream, StreamClosedError
from tornado.websocket import WebSocketProtocol13

from ..closing import CloseReason, Linger
from ..events import Event, encode_json
from ..schemas import flatten_messages, parse_client_message
from ..settings import Settings
from ..ws.connection import WebSocketConnection
from ..ws.deflate import Deflate
from ..ws.frames import PING_FRAME, text_frame
from ..ws.iostream import StreamTransport
from ..ws.protocol import FrameLimits, ServerProtocol
from .base import AdmissionMixin, JsonErrorsMixin, Refused, check_query_size
from .subscription import Subscription, next_conn_id, read_subscription_query, refuse_with_log

if TYPE_CHECKING:  # pragma: no cover
    from ..ports import Subscribing

log = logging.getLogger("cfgpush.ws")

# What a client may send before its Welcome is out before we stop reading from it.
HELD_BYTES = 64 * 1024


class ConfigWebSocket(AdmissionMixin, JsonErrorsMixin, web.RequestHandler):
    """The upgrade: every check, then ``101`` and the hand-over (``_upgrade``)."""

    def initialize(self, core: Subscribing) -> None:
        self.core = core
        self.conn_id = next_conn_id("ws")

    async def get(self) -> None:
        try:
            query = self._check_request()
        except Refused as refused:
            refuse_with_log(self, refused)
            return
        try:
            await self._upgrade(*query)
        finally:
            if self.lease is not None:  # not handed over: the upgrade did not happen
                self.lease.release()

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
        # Origin, token, limits (base.AdmissionMixin): takes a slot, held by self.lease.
        self.admit(query[0])
        return query

    async def _upgrade(self, tenant_id: str, since: str | None, want_manifest: bool) -> None:
        core = self.core
        settings = core.settings
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
        self.set_header(
            "Sec-WebSocket-Accept", WebSocketProtocol13.compute_accept_value(self.request.headers["Sec-WebSocket-Key"])
        )
        self.finish()
        stream = self.detach()
        if isinstance(stream, SSLIOStream):
            # TLS: the session stays in Tornado's stream (ws/iostream.py), which also still
            # holds any bytes the client sent after its request.
            await self._serve_on_stream(stream, tenant_id, since, want_manifest, deflate)
            return
        # Bytes the client sent right after its request (it may, before reading our 101)
        # are in Tornado's read buffer: the new owner reads them first. _read_buffer is
        # private to Tornado, but it is the only place they are.
        early = bytes(stream._read_buffer)
        try:
            if stream.writing():  # rarely: the 101 did not fit in the socket at once
                await stream.write(b"")
            sock = stream.socket.dup()  # ours; Tornado's copy closes with its stream
        except (StreamClosedError, AttributeError, OSError):  # the peer left meanwhile
            stream.close()
            return
        stream.close()
        lease, self.lease = self.lease, None
        assert lease is not None
        # The HTTP connection is done: keep only what the cfgpush_authorize hook reads.
        lease.request = HandshakeRequest(self.request)
        sink_class = CompressingWebSocketSink if deflate is not None else WebSocketSink
        sink = sink_class(ServerProtocol(frame_limits(settings), deflate), settings.max_backlog_bytes, early)
        sub = sink.owner = Subscription(core, tenant_id, self.conn_id, sink, lease)
        try:
            await asyncio.get_running_loop().connect_accepted_socket(lambda: sink, sock)
        except OSError:  # the peer left in between
            sock.close()
            sub.close(CloseReason.PEER_CLOSED)
            return
        await self._subscribe(sub, sink, since, want_manifest)

    async def _serve_on_stream(
        self, stream: SSLIOStream, tenant_id: str, since: str | None, want_manifest: bool, deflate: Deflate | None
    ) -> None:
        settings = self.core.settings
        lease, self.lease = self.lease, None
        assert lease is not None
        lease.request = HandshakeRequest(self.request)
        sink_class = CompressingWebSocketSink if deflate is not None else WebSocketSink
        sink = sink_class(ServerProtocol(frame_limits(settings), deflate), settings.max_backlog_bytes)
        sub = sink.owner = Subscription(self.core, tenant_id, self.conn_id, sink, lease)
        if stream.closed():  # the peer left meanwhile
            sub.close(CloseReason.PEER_CLOSED)
            return
        StreamTransport(stream, sink)
        await self._subscribe(sub, sink, since, want_manifest)

    async def _subscribe(self, sub: Subscription, sink: WebSocketSink, since: str | None, want_manifest: bool) -> None:
        sub.lease.schedule_expiry(sub.token_expired)
        try:
            subscribed = await sub.subscribe(since, want_manifest)
        except Exception:  # a bug in the catch-up: this connection only, and say so (1011)
            log.exception("%s tenant %s: subscribing failed", self.conn_id, sub.tenant_id)
            sub.close(CloseReason.INTERNAL_ERROR)
            return
        if subscribed:
            sink.start_reading()  # what the client sent meanwhile is answered after Welcome


@functools.lru_cache(maxsize=16)
def frame_limits(settings: Settings) -> FrameLimits:
    """One ``FrameLimits`` per server, shared by its connections."""
    return FrameLimits(settings.max_message_size, settings.max_client_rate)


class WebSocketSink(WebSocketConnection):
    """A subscription's sink on a WebSocket, and the client's messages to it."""

    kind = "ws"
    __slots__ = ("owner", "_held")

    def __init__(self, protocol: ServerProtocol, max_backlog: int, early: bytes = b""):
        super().__init__(protocol, max_backlog)
        self.owner: Subscription = None  # type: ignore[assignment]  # set right after
        # Bytes received while subscribing (None once subscribed), answered after Welcome;
        # the ones sent with the upgrade request come first.
        self._held: bytes | None = early

    # -- the sink ---------------------------------------------------------------------------------

    def encode_event(self, event: Event) -> bytes:
        return event.ws_frame

    def encode_message(self, kind: str, body: Any, event_id: str | None = None) -> bytes:
        return text_frame(encode_json({kind: body}).encode("utf-8"))

    def ping(self) -> None:
        self.write(PING_FRAME)

    def close(self, reason: CloseReason) -> None:
        if reason.code is not None:
            self.send_close(reason.code, reason.text)  # nothing when a close frame already went
        self._stop_holding()  # the client's close frame may be among what it sent meanwhile
        linger = reason.linger
        if linger is Linger.WAIT:
            self.expect_close()
        elif linger is Linger.FLUSH:
            self.finish()
        else:
            self.abort()

    # -- reading: held while subscribing -----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.owner.opened()

    def data_received(self, data: bytes) -> None:
        held = self._held
        if held is None:
            super().data_received(data)
            return
        self._held = held = held + data
        if len(held) > HELD_BYTES:
            self.pause_reading()

    def start_reading(self) -> None:
        """Subscribed: answer what the client sent meanwhile, and read on."""
        self._stop_holding()

    def _stop_holding(self) -> None:
        held, self._held = self._held, None
        if held is None:
            return
        if held:
            self.data_received(held)
        if len(held) > HELD_BYTES:
            self.resume_reading()

    # -- what the client does ----------------------------------------------------------------------

    def on_message(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self._error("bad_message", "binary frames are not accepted; send JSON text")
            return
        try:
            kind, body = parse_client_message(message)
        except ValidationError as exc:
            self._error("bad_message", flatten_messages(exc.messages))
            return
        if kind == "Ping":
            self._send({"Pong": {"id": body["id"]}} if "id" in body else "Pong")
        elif kind == "Ack":
            self.owner.ack(body["event_id"], body.get("error"))
        elif kind == "Refresh":
            refused = self.owner.refresh(body["token"])
            if refused is not None:
                self._error("refresh_refused", refused)
            else:
                expires_at = self.owner.lease.auth.expires_at
                self._send({"Refreshed": {"expires_at": None if expires_at is None else int(expires_at)}})

    def on_peer_close(self, code: int | None) -> None:
        log.debug("%s tenant %s: the client closed (%s)", self.owner.conn_id, self.owner.tenant_id, code)
        self.owner.close(CloseReason.PEER_CLOSED)

    def on_failure(self, code: int, reason: str) -> None:
        sub = self.owner
        log.info("%s tenant %s: closing (%d): %s", sub.conn_id, sub.tenant_id, code, reason)
        sub.close(CloseReason.of_failure(code))

    def on_backlog_full(self) -> None:
        self.owner.close(CloseReason.TOO_SLOW)

    def on_lost(self) -> None:
        self._held = None
        self.owner.gone()
        log.debug("%s closed: tenant %s", self.owner.conn_id, self.owner.tenant_id)

    def _send(self, message: Any) -> None:
        self.write(text_frame(encode_json(message).encode("utf-8")))

    def _error(self, code: str, message: str) -> None:
        self._send({"Error": {"code": code, "message": message}})


class CompressingWebSocketSink(WebSocketSink):
    """A client that agreed to permessage-deflate gets events compressed, one frame per event
    and window size shared by every such client (``Event.ws_frame_deflated``)."""

    __slots__ = ()

    def encode_event(self, event: Event) -> bytes:
        return event.ws_frame_deflated(self.protocol.deflate.server_wbits)  # type: ignore[union-attr]


# -- what is kept of the upgrade request ---------------------------------------------------------------

# Headers of the handshake itself, of no use once it is done.
_HANDSHAKE_HEADERS = frozenset(
    {"upgrade", "connection", "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions"}
)


class HeadLines(Mapping):
    """Request headers kept as one string, read on demand: what an ``HTTPHeaders`` offers a
    reader (``get``, ``[]``, ``in``, ``get_list``, ``get_all``, iteration), case-insensitive,
    for a fraction of its memory (a parsed ``HTTPHeaders`` is about 1 KB for the five headers
    of a bare WebSocket client, 3 KB for a browser's)."""

    __slots__ = ("_text",)

    def __init__(self, text: str):
        self._text = text  # "\n<lower-case name>: <value>" per header

    @classmethod
    def of(cls, headers: HTTPHeaders, leave_out: frozenset = frozenset()) -> HeadLines:
        return cls(
            "".join(f"\n{name.lower()}: {value}" for name, value in headers.get_all() if name.lower() not in leave_out)
        )

    def get_list(self, name: str) -> list[str]:
        text, key, start = self._text, f"\n{name.lower()}: ", 0
        found: list[str] = []
        while True:
            start = text.find(key, start)
            if start < 0:
                return found
            start += len(key)
            end = text.find("\n", start)
            found.append(text[start:] if end < 0 else text[start:end])

    def get(self, name: str, default: Any = None) -> Any:
        values = self.get_list(name)
        return ",".join(values) if values else default

    def __getitem__(self, name: str) -> str:
        values = self.get_list(name)
        if not values:
            raise KeyError(name)
        return ",".join(values)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and f"\n{name.lower()}: " in self._text

    def get_all(self) -> Iterator[tuple[str, str]]:
        for line in self._text.split("\n")[1:]:
            name, _, value = line.partition(": ")
            yield "-".join(part.capitalize() for part in name.split("-")), value

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(name for name, _ in self.get_all()))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"HeadLines({dict(self.get_all())!r})"


class HandshakeRequest:
    """What a WebSocket keeps of its upgrade request after the ``101``: what the
    ``cfgpush_authorize`` hook reads when the client sends a ``Refresh`` (``headers``,
    ``remote_ip``; also ``host``, ``protocol``, ``method``, ``path``). Not kept: the query
    string (it may carry the old token) and the WebSocket handshake's own headers."""

    __slots__ = ("remote_ip", "protocol", "_head")
    method = "GET"
    path = "/ws"
    version = "HTTP/1.1"

    def __init__(self, request: HTTPServerRequest):
        self.remote_ip = request.remote_ip
        self.protocol = request.protocol
        self._head = HeadLines.of(request.headers, _HANDSHAKE_HEADERS)._text

    @property
    def headers(self) -> HeadLines:
        return HeadLines(self._head)

    @property
    def host(self) -> str:
        return self.headers.get("Host") or "127.0.0.1"  # as Tornado's request says it

    def __repr__(self) -> str:
        return f"HandshakeRequest({self.protocol}://{self.host}{self.path}, remote_ip={self.remote_ip!r})"

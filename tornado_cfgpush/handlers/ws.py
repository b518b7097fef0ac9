"""``/ws``: one WebSocket per client of one tenant (PROTOCOL.md section 2)."""
from __future__ import annotations

import itertools
import logging
import time
from typing import TYPE_CHECKING, Any

from marshmallow import ValidationError
from tornado import websocket
from tornado.iostream import StreamClosedError

from ..broker import BrokerUnavailable
from ..events import PING_FRAME, Event, encode_json, parse_event_id, text_frame
from ..hub import BacklogFull, write_bytes
from ..schemas import EVENT_ID_RE, flatten_messages, parse_client_message
from .base import JsonErrorsMixin, Refused, single_query_argument, tenant_from_query

if TYPE_CHECKING:  # pragma: no cover
    from ..app import CfgPush

log = logging.getLogger("cfgpush.ws")
_ids = itertools.count(1)

# Close codes, PROTOCOL.md section 2.
GOING_AWAY = 1001
POLICY = 1008
TRY_AGAIN_LATER = 1013
SERVER_ERROR = 1011


def _number(value: float) -> int | float:
    """``5`` rather than ``5.0`` on the wire, as in PROTOCOL.md."""
    return int(value) if float(value).is_integer() else value


class ConfigWebSocket(JsonErrorsMixin, websocket.WebSocketHandler):
    def initialize(self, core: "CfgPush") -> None:
        self.core = core
        self.tenant_id = ""
        self.last_seen = 0.0
        self.acked: str | None = None
        self._since: str | None = None
        self._want_manifest = False
        self._stream = None
        self._pending: list[Event] | None = None  # live events held back while catching up
        self._rate_window = 0.0
        self._rate_count = 0
        self._conn_id = f"ws-{next(_ids)}"

    # -- before the upgrade -------------------------------------------------------------------

    async def get(self, *args: Any, **kwargs: Any) -> None:
        try:
            self._check_request()
        except Refused as refused:
            log.info("refused /ws: %s %s (%s)", refused.status, refused.reason, self.request.remote_ip)
            self.refuse(refused)
            return
        await super().get(*args, **kwargs)

    def _check_request(self) -> None:
        headers = self.request.headers
        if headers.get("Upgrade", "").lower() != "websocket":
            raise Refused(400, "expected a WebSocket upgrade request (Upgrade: websocket)")
        if "upgrade" not in (s.strip().lower() for s in headers.get("Connection", "").split(",")):
            raise Refused(400, "expected 'Connection: Upgrade'")
        self.tenant_id = tenant_from_query(self)
        since = single_query_argument(self, "last_event_id")
        if since is not None and not EVENT_ID_RE.match(since):
            raise Refused(400, "last_event_id must look like '<digits>-<digits>'")
        self._since = since
        self._want_manifest = single_query_argument(self, "manifest") in ("1", "true")
        # Tornado would refuse a cross-site upgrade too, but with a plain-text body; this is
        # the same check (its private helper, so the rule stays Tornado's) with a JSON reason.
        if self._check_cross_origin(self.check_origin) is not None:
            raise Refused(403, "Origin not allowed")

    # -- after the upgrade --------------------------------------------------------------------

    async def open(self, *args: Any, **kwargs: Any) -> None:
        self._stream = self.ws_connection.stream
        self.set_nodelay(True)  # Tornado leaves Nagle on: small frames would wait for ACKs
        self.last_seen = time.monotonic()
        # Register first and hold live events back: whatever is published while the
        # catch-up is computed is delivered after it, without gap or duplicate.
        self._pending = []
        self.core.hub.add(self)
        try:
            catchup = await self.core.broker.catch_up(self.tenant_id, self._since)
        except BrokerUnavailable as exc:
            log.warning("%s tenant %s: broker unavailable at subscribe: %s", self._conn_id, self.tenant_id, exc)
            self.core.hub.remove(self)
            self.close(TRY_AGAIN_LATER, "broker unavailable, reconnect later")
            return
        if self._stream.closed():
            return
        welcome: dict[str, Any] = {
            "tenant_id": self.tenant_id,
            "last_event_id": catchup.last_event_id,
            "heartbeat_interval": _number(self.core.settings.heartbeat_interval),
            "protocol": 1,
        }
        manifest = self.core.manifest(self.tenant_id) if (self._want_manifest or catchup.resync) else None
        if self._want_manifest and manifest is not None:
            welcome["manifest"] = manifest
        self.send_json({"Welcome": welcome})
        last_sent = catchup.last_event_id
        if catchup.resync:
            self.send_resync(catchup.last_event_id, catchup.resync, manifest)
        else:
            for event in catchup.events:
                self._write(event.ws_frame)
        pending, self._pending = self._pending, None
        newest = parse_event_id(last_sent) if last_sent else None
        for event in pending:
            if newest is None or parse_event_id(event.event_id) > newest:
                self._write(event.ws_frame)
        log.debug("%s open: tenant %s from %s", self._conn_id, self.tenant_id, self.request.remote_ip)

    def deliver(self, event: Event) -> None:
        if self._pending is not None:
            self._pending.append(event)
        else:
            self._write(event.ws_frame)

    def send_json(self, message: dict | str) -> None:
        self._write(text_frame(encode_json(message).encode("utf-8")))

    def send_resync(self, last_event_id: str | None, reason: str, manifest: dict | None) -> None:
        body: dict[str, Any] = {"tenant_id": self.tenant_id, "last_event_id": last_event_id, "reason": reason}
        if manifest is not None:
            body["manifest"] = manifest
        self.send_json({"Resync": body})

    def send_ping(self) -> None:
        self._write(PING_FRAME)

    def _write(self, data: bytes) -> None:
        stream = self._stream
        if stream is None:
            return
        try:
            write_bytes(stream, data, self.core.settings.max_backlog_bytes)
        except StreamClosedError:
            log.info("%s tenant %s: send failed, peer gone", self._conn_id, self.tenant_id)
            self._forget()
        except BacklogFull:
            log.warning("%s tenant %s: unsent backlog over %d bytes, closing (1013)",
                        self._conn_id, self.tenant_id, self.core.settings.max_backlog_bytes)
            self.core.hub.slow_closes += 1
            self._close(TRY_AGAIN_LATER, "client too slow")

    # -- closing ------------------------------------------------------------------------------

    def _forget(self) -> None:
        self.core.hub.remove(self)
        self._stream = None

    def _close(self, code: int, reason: str) -> None:
        """Close and leave the registry now, not when the peer answers (up to 5 s later)."""
        self._forget()
        self.close(code, reason)

    def close_going_away(self) -> None:
        self._close(GOING_AWAY, "server shutting down")

    def close_dead(self) -> None:
        stream = self._stream
        self._close(1000, "heartbeat timeout")
        if stream is not None:
            # The peer is silent: waiting for its close frame would only keep the socket.
            stream.close()

    def on_close(self) -> None:
        self._forget()
        log.debug("%s closed: tenant %s code %s", self._conn_id, self.tenant_id, self.close_code)

    # -- from the client ----------------------------------------------------------------------

    def on_pong(self, data: bytes) -> None:
        self.last_seen = time.monotonic()

    def on_ping(self, data: bytes) -> None:
        self.last_seen = time.monotonic()

    def on_message(self, message: str | bytes) -> None:
        now = self.last_seen = time.monotonic()
        if now - self._rate_window >= 1.0:
            self._rate_window = now
            self._rate_count = 0
        self._rate_count += 1
        if self._rate_count > self.core.settings.max_client_rate:
            log.warning("%s tenant %s: over %d messages per second, closing (1008)",
                        self._conn_id, self.tenant_id, self.core.settings.max_client_rate)
            self._close(POLICY, "rate limit exceeded")
            return
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

    def send_error_message(self, code: str, message: str) -> None:
        self.send_json({"Error": {"code": code, "message": message}})

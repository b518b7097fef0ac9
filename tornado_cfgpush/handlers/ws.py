"""``/ws``: one WebSocket per client of one tenant (PROTOCOL.md section 2)."""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from marshmallow import ValidationError
from tornado import websocket

from ..events import PING_FRAME, Event, encode_json, text_frame
from ..schemas import flatten_messages, parse_client_message
from .base import AdmissionMixin, JsonErrorsMixin, Refused, check_query_size
from .subscription import SubscriptionMixin, refuse_with_log

if TYPE_CHECKING:  # pragma: no cover
    from ..app import CfgPush

log = logging.getLogger("cfgpush.ws")

# Close codes, PROTOCOL.md section 2.
NORMAL = 1000
GOING_AWAY = 1001
POLICY = 1008
TRY_AGAIN_LATER = 1013


class ConfigWebSocket(SubscriptionMixin, AdmissionMixin, JsonErrorsMixin, websocket.WebSocketHandler):
    transport = "ws"

    def initialize(self, core: "CfgPush") -> None:
        self.init_subscription(core)
        self.last_seen = 0.0
        self._rate_window = 0.0
        self._rate_count = 0

    # -- before the upgrade -------------------------------------------------------------------

    async def get(self, *args: Any, **kwargs: Any) -> None:
        try:
            self._check_request()
        except Refused as refused:
            refuse_with_log(self, refused)
            return
        try:
            await super().get(*args, **kwargs)  # returns when the connection ends
        finally:
            self.leave()  # also when the upgrade itself failed (426, a bad key)

    def _check_request(self) -> None:
        headers = self.request.headers
        if headers.get("Upgrade", "").lower() != "websocket":
            raise Refused(400, "expected a WebSocket upgrade request (Upgrade: websocket)")
        if "upgrade" not in (s.strip().lower() for s in headers.get("Connection", "").split(",")):
            raise Refused(400, "expected 'Connection: Upgrade'")
        check_query_size(self, self.core.settings.max_query_size)
        self.read_subscription_query()
        # Origin, token, limits (base.AdmissionMixin). Tornado would refuse a cross-site
        # upgrade too, but with a plain-text body; admit() applies the same rule (its private
        # helper, so the rule stays Tornado's) with a JSON reason.
        self.admit(self.tenant_id)

    # -- after the upgrade --------------------------------------------------------------------

    async def open(self, *args: Any, **kwargs: Any) -> None:
        self.set_nodelay(True)  # Tornado leaves Nagle on: small frames would wait for ACKs
        self.last_seen = time.monotonic()
        self.schedule_expiry(self._token_expired)
        if not await self.subscribe(self.ws_connection.stream):
            self.close(TRY_AGAIN_LATER, "broker unavailable, reconnect later")

    def _token_expired(self) -> None:
        self._expiry = None
        log.info("%s tenant %s: token expired, closing (1008)", self.conn_id, self.tenant_id)
        self._close(POLICY, "token expired")

    def frame_event(self, event: Event) -> bytes:
        return event.ws_frame

    def frame_message(self, kind: str, body: Any, event_id: str | None = None) -> bytes:
        return text_frame(encode_json({kind: body} if kind else body).encode("utf-8"))

    def send_json(self, message: Any) -> None:
        self.send_bytes(self.frame_message("", message))

    def send_ping(self) -> None:
        self.send_bytes(PING_FRAME)

    # -- closing ------------------------------------------------------------------------------

    def _close(self, code: int, reason: str) -> None:
        """Close and leave the registry now, not when the peer answers (up to 5 s later)."""
        self.forget()
        self.close(code, reason)

    def close_slow(self) -> None:
        # The close frame queues behind the backlog; Tornado aborts the socket if the peer
        # has not answered within 5 s, which frees the backlog.
        self.close(TRY_AGAIN_LATER, "client too slow")

    def close_going_away(self) -> None:
        self._close(GOING_AWAY, "server shutting down")

    def close_dead(self) -> None:
        stream = self._stream
        self._close(NORMAL, "heartbeat timeout")
        if stream is not None:
            # The peer is silent: waiting for its close frame would only keep the socket.
            stream.close()

    def forget(self) -> None:
        super().forget()
        self.leave()  # the connection slot and the expiry timer

    def on_close(self) -> None:
        self.forget()
        log.debug("%s closed: tenant %s code %s", self.conn_id, self.tenant_id, self.close_code)

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
                        self.conn_id, self.tenant_id, self.core.settings.max_client_rate)
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

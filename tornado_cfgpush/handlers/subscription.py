"""What ``/ws`` and ``/events`` share: one subscribe sequence and one delivery path.

The framings differ (a WebSocket frame, an SSE message); everything else is here: the query
rules, register-then-catch-up, Welcome, replay or Resync, the live events held back during
the catch-up, and writing prepared bytes with the backlog bound.
"""
from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING, Any

from tornado import web
from tornado.iostream import StreamClosedError

from ..broker import SOURCE_GAP, BrokerUnavailable
from ..events import Event
from ..rules import parse_event_id
from ..hub import BacklogFull, write_bytes
from ..logs import bind as bind_log_context
from ..rules import EVENT_ID_RE
from .base import Refused, single_query_argument, tenant_from_query

if TYPE_CHECKING:  # pragma: no cover
    from ..app import CfgPush

log = logging.getLogger("cfgpush.subscription")
_ids = itertools.count(1)


def _number(value: float) -> int | float:
    """``5`` rather than ``5.0`` on the wire, as in PROTOCOL.md."""
    return int(value) if float(value).is_integer() else value


class SubscriptionMixin:
    """A connection of one tenant in the hub. Subclasses frame messages and close."""

    __slots__ = ()  # so that a slotted subclass (handlers/ws.py) has no __dict__
    # The attributes init_subscription sets, for such a subclass's __slots__.
    SLOTS = ("core", "tenant_id", "acked", "conn_id", "_since", "_want_manifest", "_stream", "_pending",
             "_held_gap")

    transport = ""
    core: "CfgPush"
    request: Any

    def init_subscription(self, core: "CfgPush", conn_id: str | None = None) -> None:
        self.core = core
        self.tenant_id = ""
        self.acked: str | None = None
        self.conn_id = conn_id or next_conn_id(self.transport)
        self._since: str | None = None
        self._want_manifest = False
        # Where prepared bytes go: an IOStream (/events) or the WebSocket protocol (/ws).
        self._stream: Any = None
        self._pending: list[Event] | None = None  # live events held back while catching up
        self._held_gap: tuple[str | None, dict | None, str] | None = None  # a gap during it

    # -- framing, per transport -------------------------------------------------------------------

    def frame_event(self, event: Event) -> bytes:
        raise NotImplementedError

    def frame_message(self, kind: str, body: dict[str, Any], event_id: str | None = None) -> bytes:
        raise NotImplementedError

    def close_slow(self) -> None:
        raise NotImplementedError

    # -- request ----------------------------------------------------------------------------------

    def take_query(self, tenant_id: str, since: str | None, want_manifest: bool) -> None:
        """The subscribe request's query, as ``read_subscription_query`` returns it."""
        self.tenant_id, self._since, self._want_manifest = tenant_id, since, want_manifest

    # -- the subscribe sequence -------------------------------------------------------------------

    async def subscribe(self, stream: Any) -> bool:
        """Register, catch up, send Welcome and the backlog; False when it could not."""
        self._stream = stream
        # Register first and hold live events back: whatever is published while the
        # catch-up is computed is sent after it, without gap or duplicate.
        self._pending = []
        self.core.hub.add(self)
        try:
            catchup = await self.core.broker.catch_up(self.tenant_id, self._since)
        except BrokerUnavailable as exc:
            log.warning("%s tenant %s: broker unavailable at subscribe: %s", self.conn_id, self.tenant_id, exc)
            self.forget()
            return False
        if self._stream is None or self.stream_closed():
            self.forget()
            return False
        welcome: dict[str, Any] = {
            "tenant_id": self.tenant_id,
            "last_event_id": catchup.last_event_id,
            "heartbeat_interval": _number(self.core.settings.heartbeat_interval),
            "protocol": 1,
        }
        manifest = self.core.manifest(self.tenant_id) if (self._want_manifest or catchup.resync) else None
        if self._want_manifest and manifest is not None:
            welcome["manifest"] = manifest
        # The SSE id of Welcome is where a reconnecting EventSource resumes: the client's own
        # id while a replay follows, the newest id otherwise.
        resume_from = self._since if (self._since and not catchup.resync) else catchup.last_event_id
        self.send_bytes(self.frame_message("Welcome", welcome, resume_from))
        if catchup.resync:
            self.send_resync(catchup.last_event_id, manifest, reason=catchup.resync)
        else:
            for event in catchup.events:
                self.send_bytes(self.frame_event(event))
        pending, self._pending = self._pending, None
        newest = parse_event_id(catchup.last_event_id) if catchup.last_event_id else None
        for event in pending:
            if newest is None or parse_event_id(event.event_id) > newest:
                self.send_bytes(self.frame_event(event))
        if self._held_gap is not None:
            last_event_id, manifest, reason = self._held_gap
            self._held_gap = None
            self.send_resync(last_event_id, manifest, reason=reason)
        log.debug("%s subscribed: tenant %s from %s", self.conn_id, self.tenant_id, self.request.remote_ip)
        return True

    def notify_gap(self, last_event_id: str | None, manifest: dict | None, reason: str = SOURCE_GAP) -> None:
        """Events may be lost: ``Resync`` now, or right after Welcome when subscribing."""
        if self._pending is not None:
            self._held_gap = (last_event_id, manifest, reason)
        else:
            self.send_resync(last_event_id, manifest, reason=reason)

    def send_resync(self, last_event_id: str | None, manifest: dict | None, *, reason: str) -> None:
        body: dict[str, Any] = {"tenant_id": self.tenant_id, "last_event_id": last_event_id, "reason": reason}
        if manifest is not None:
            body["manifest"] = manifest
        self.send_bytes(self.frame_message("Resync", body, last_event_id))

    # -- delivery -----------------------------------------------------------------------------------

    def deliver(self, event: Event) -> None:
        if self._pending is not None:
            self._pending.append(event)
        else:
            self.send_bytes(self.frame_event(event))

    def stream_closed(self) -> bool:
        return self._stream.closed()

    def send_bytes(self, data: bytes) -> None:
        """Prepared bytes to the peer; a failure touches this connection only."""
        stream = self._stream
        if stream is None:
            return
        try:
            write_bytes(stream, data, self.core.settings.max_backlog_bytes)
        except StreamClosedError:
            log.info("%s tenant %s: send failed, peer gone", self.conn_id, self.tenant_id)
            self.forget()
        except BacklogFull:
            self.too_slow()

    def too_slow(self) -> None:
        """The slow-client rule, for both transports: past the backlog bound, leave the hub
        and close (1013 on a WebSocket)."""
        log.warning("%s tenant %s: unsent backlog over %d bytes, closing (1013)",
                    self.conn_id, self.tenant_id, self.core.settings.max_backlog_bytes)
        self.core.hub.slow_closes += 1
        self.forget()
        self.close_slow()

    def forget(self) -> None:
        """Leave the hub now (idempotent); nothing more is written."""
        self.core.hub.remove(self)
        self._stream = None


def next_conn_id(transport: str) -> str:
    return f"{transport}-{next(_ids)}"


def read_subscription_query(handler: web.RequestHandler, conn_id: str,
                            since_header: str | None = None) -> tuple[str, str | None, bool]:
    """``(tenant_id, last_event_id, manifest)`` of a subscribe request, or ``Refused``;
    ``last_event_id`` may come from the SSE ``Last-Event-ID`` header instead."""
    tenant_id = tenant_from_query(handler)
    # This runs in the request's task: its log records carry tenant and connection from here
    # on (tornado_cfgpush.logs), and so do those of a WebSocket served after the upgrade,
    # whose callbacks run in a copy of this context.
    bind_log_context(tenant=tenant_id, connection=conn_id)
    since = single_query_argument(handler, "last_event_id")
    if since is None and since_header:
        since = since_header
    if since is not None and not EVENT_ID_RE.match(since):
        raise Refused(400, "last_event_id must look like '<digits>-<digits>'")
    return tenant_id, since, single_query_argument(handler, "manifest") in ("1", "true")


def refuse_with_log(handler: web.RequestHandler, refused: Refused) -> None:
    log.info("refused %s: %s %s (%s)", handler.request.path, refused.status, refused.reason, handler.request.remote_ip)
    handler.refuse(refused)

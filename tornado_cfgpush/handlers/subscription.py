"""What ``/ws`` and ``/events`` share: one ``Subscription`` per client, over a sink.

A ``Subscription`` is one client of one tenant for the life of its connection: the catch-up
(register, then ask the broker; Welcome, then the replay or a Resync), the live events held
back during the catch-up, the client's acknowledgement, the token's expiry (through its
``Lease``) and the one way it ends, ``close(reason)``. It writes prepared bytes to a sink, the
only part that differs between the transports::

    kind: str                      "ws" or "sse" (the metrics label)
    last_seen: float               monotonic time of the client's last sign of life
    encode_event(event) -> bytes   the event's shared, prepared bytes in this framing
    encode_message(kind, body, event_id) -> bytes
    write(data) -> bool            False: not written (closing, or gone)
    ping() -> None                 the heartbeat
    close(reason) -> None          what CloseReason says for this transport
    abort() -> None                drop the connection now (shutdown stragglers)

``handlers/ws.py`` has the WebSocket sink, ``handlers/sse.py`` the Server-Sent Events one. A
sink tells its subscription when the client is gone or too slow by calling ``close`` too.
"""

from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING, Any, Protocol

from tornado import web

from ..broker import SOURCE_GAP, BrokerUnavailable
from ..closing import CloseReason
from ..events import AckFailure, Event
from ..logs import bind as bind_log_context
from ..rules import EVENT_ID_RE, parse_event_id
from .base import JsonErrorsMixin, Lease, Refused, single_query_argument, tenant_from_query

if TYPE_CHECKING:  # pragma: no cover
    from ..ports import Subscribing

log = logging.getLogger("cfgpush.subscription")
_ids = itertools.count(1)

# How each way out is logged (the reasons not named here at DEBUG).
_CLOSE_LOG = {
    CloseReason.TOO_SLOW: (logging.WARNING, "unsent backlog over --max-backlog-bytes, closing (1013)"),
    CloseReason.RATE_LIMITED: (logging.WARNING, "over --max-client-rate frames per second, closing (1008)"),
    CloseReason.TOKEN_EXPIRED: (logging.INFO, "token expired, closing"),
    CloseReason.BROKER_UNAVAILABLE: (logging.WARNING, "broker unavailable at subscribe, closing (1013)"),
    CloseReason.INTERNAL_ERROR: (logging.ERROR, "closing after an internal error (1011)"),
}


class Sink(Protocol):
    kind: str

    @property
    def last_seen(self) -> float: ...

    def encode_event(self, event: Event) -> bytes: ...
    def encode_message(self, kind: str, body: Any, event_id: str | None = None) -> bytes: ...
    def write(self, data: bytes) -> bool: ...
    def ping(self) -> None: ...
    def close(self, reason: CloseReason) -> None: ...
    def abort(self) -> None: ...


def _number(value: float) -> int | float:
    """``5`` rather than ``5.0`` on the wire, as in docs/protocol.md."""
    return int(value) if float(value).is_integer() else value


class Subscription:
    """One client of one tenant, from its admission to its end. Thousands live for hours:
    slots, and the catch-up's state only while it runs."""

    __slots__ = ("core", "tenant_id", "conn_id", "sink", "lease", "acked", "_pending", "_held_gap", "_closed")

    def __init__(self, core: Subscribing, tenant_id: str, conn_id: str, sink: Sink, lease: Lease):
        self.core = core
        self.tenant_id = tenant_id
        self.conn_id = conn_id
        self.sink = sink
        self.lease = lease
        # The client's latest answer: the id it applied up to, or the AckFailure of the event
        # it could not apply (summary.py counts both).
        self.acked: str | AckFailure | None = None
        self._pending: list[Event] | None = None  # live events held back while catching up
        self._held_gap: tuple[str | None, dict[str, str] | None, str] | None = None  # a gap during it
        self._closed = False

    # -- what others read ------------------------------------------------------------------------

    @property
    def transport(self) -> str:
        """``ws`` or ``sse``: the label of ``cfgpush_connections`` and the status APIs."""
        return self.sink.kind

    @property
    def last_seen(self) -> float:
        return self.sink.last_seen

    @property
    def request(self) -> Any:
        """The subscribe request as kept for the ``cfgpush_authorize`` hook."""
        return self.lease.request

    @property
    def closed(self) -> bool:
        return self._closed

    # -- the subscribe sequence -------------------------------------------------------------------

    async def subscribe(self, since: str | None, want_manifest: bool) -> bool:
        """Register, catch up, send Welcome and the backlog; False when it could not (the
        subscription is closed then)."""
        hub = self.core.hub
        # Register first and hold live events back: whatever is published while the
        # catch-up is computed is sent after it, without gap or duplicate.
        self._pending = []
        hub.add(self)
        try:
            catchup = await self.core.broker.catch_up(self.tenant_id, since)
        except BrokerUnavailable as exc:
            log.warning("%s tenant %s: broker unavailable at subscribe: %s", self.conn_id, self.tenant_id, exc)
            self.close(CloseReason.BROKER_UNAVAILABLE)
            return False
        if self._closed:
            return False
        sink = self.sink
        welcome: dict[str, Any] = {
            "tenant_id": self.tenant_id,
            "last_event_id": catchup.last_event_id,
            "heartbeat_interval": _number(self.core.settings.heartbeat_interval),
            "protocol": 1,
        }
        manifest = self.core.manifest(self.tenant_id) if (want_manifest or catchup.resync) else None
        if want_manifest and manifest is not None:
            welcome["manifest"] = manifest
        # The SSE id of Welcome is where a reconnecting EventSource resumes: the client's own
        # id while a replay follows, the newest id otherwise.
        resume_from = since if (since and not catchup.resync) else catchup.last_event_id
        sink.write(sink.encode_message("Welcome", welcome, resume_from))
        if catchup.resync:
            self._send_resync(catchup.last_event_id, manifest, catchup.resync)
        else:
            for event in catchup.events:
                sink.write(sink.encode_event(event))
        pending, self._pending = self._pending, None
        newest = parse_event_id(catchup.last_event_id) if catchup.last_event_id else None
        for event in pending or ():
            if newest is None or parse_event_id(event.event_id) > newest:
                sink.write(sink.encode_event(event))
        if self._held_gap is not None:
            last_event_id, manifest, reason = self._held_gap
            self._held_gap = None
            self._send_resync(last_event_id, manifest, reason)
        log.debug("%s subscribed: tenant %s from %s", self.conn_id, self.tenant_id, self.lease.request.remote_ip)
        return not self._closed

    # -- what the hub calls -------------------------------------------------------------------------

    def deliver(self, event: Event) -> None:
        if self._pending is not None:
            self._pending.append(event)
            return
        sink = self.sink
        sink.write(sink.encode_event(event))

    def notify_gap(
        self,
        last_event_id: str | None,
        manifest: dict[str, str] | None,
        reason: str = SOURCE_GAP,
        prepared: dict[object, bytes] | None = None,
    ) -> None:
        """Events may be lost: ``Resync`` now, or right after Welcome when subscribing.
        ``prepared``: a dict shared by the clients of one tenant given the same Resync, so that
        it is encoded (its manifest may be large) once per framing, not once per client."""
        if self._pending is not None:
            self._held_gap = (last_event_id, manifest, reason)
        else:
            self._send_resync(last_event_id, manifest, reason, prepared)

    def ping(self) -> None:
        self.sink.ping()

    def _send_resync(
        self,
        last_event_id: str | None,
        manifest: dict[str, str] | None,
        reason: str,
        prepared: dict[object, bytes] | None = None,
    ) -> None:
        framing = (type(self.sink), getattr(self.sink, "chunked", None))
        if prepared is not None and framing in prepared:
            self.sink.write(prepared[framing])
            return
        body: dict[str, Any] = {"tenant_id": self.tenant_id, "last_event_id": last_event_id, "reason": reason}
        if manifest is not None:
            body["manifest"] = manifest
        data = self.sink.encode_message("Resync", body, last_event_id)
        if prepared is not None:
            prepared[framing] = data
        self.sink.write(data)

    # -- from the client -------------------------------------------------------------------------------

    def ack(self, event_id: str, error: str | None = None) -> None:
        """The client applied the configuration up to ``event_id`` (convergence), or, with
        ``error``, could not apply that event (why, in its words)."""
        if error is None:
            self.acked = event_id
        else:
            self.acked = AckFailure(event_id, error)
            log.debug("%s tenant %s: could not apply %s: %s", self.conn_id, self.tenant_id, event_id, error)

    def refresh(self, token: str) -> str | None:
        """A ``Refresh``: None when the new token is taken, else why it is refused."""
        return self.lease.refresh(self.tenant_id, token, self.token_expired)

    def token_expired(self) -> None:
        self.close(CloseReason.TOKEN_EXPIRED)

    # -- the one way out ----------------------------------------------------------------------------

    def close(self, reason: CloseReason) -> None:
        """End this subscription (once; later calls do nothing): leave the hub, which counts
        ``reason``, give the connection slot back, and have the sink close as ``reason`` says."""
        if self._closed:
            return
        self._closed = True
        self._pending = None
        level, text = _CLOSE_LOG.get(reason, (logging.DEBUG, f"closing: {reason.label}"))
        log.log(level, "%s tenant %s: %s", self.conn_id, self.tenant_id, text)
        self.core.hub.leave(self, reason)
        self.lease.release()
        self.sink.close(reason)

    def abort(self) -> None:
        """Drop the connection now: at shutdown, for a client still there after the drain time."""
        self.close(CloseReason.GOING_AWAY)
        self.sink.abort()

    def opened(self) -> None:
        """The sink's connection is open: a shutdown waits for it."""
        self.core.hub.opened(self)

    def gone(self) -> None:
        """The sink's connection is gone for good (its socket closed, its request ended)."""
        self.close(CloseReason.PEER_CLOSED)
        self.core.hub.gone(self)


def next_conn_id(transport: str) -> str:
    return f"{transport}-{next(_ids)}"


def read_subscription_query(
    handler: web.RequestHandler, conn_id: str, since_header: str | None = None
) -> tuple[str, str | None, bool]:
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


def refuse_with_log(handler: JsonErrorsMixin, refused: Refused) -> None:
    log.info("refused %s: %s %s (%s)", handler.request.path, refused.status, refused.reason, handler.request.remote_ip)
    handler.refuse(refused)

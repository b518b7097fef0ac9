"""Per-node registry tenant -> connections, delivery, slow-consumer policy, heartbeat sweep.

Delivery is a plain loop: one prepared byte string per event, written to every connection
of the tenant. No Task, coroutine or Future is created per recipient: a WebSocket writes to
its asyncio transport (``wsproto.py``); an SSE stream, which Tornado keeps, uses the direct
send of ``write_bytes`` below while the socket keeps up, and Tornado's buffered
``IOStream.write`` only for a connection that already has a backlog.
"""
from __future__ import annotations

import asyncio
import logging
import time
from time import perf_counter
from typing import Callable, Iterable, Protocol

from tornado.iostream import IOStream, StreamClosedError
from tornado.ioloop import PeriodicCallback

from .events import Event

log = logging.getLogger("cfgpush.hub")

# Steps of one heartbeat interval: each pings (or drops) one slice of the connections.
SWEEP_SLICES = 10


class Subscriber(Protocol):
    """What the hub needs of a connection (``/ws`` and ``/events``)."""

    tenant_id: str
    last_seen: float  # time.monotonic() of the last frame from the peer

    def deliver(self, event: Event) -> None: ...
    def notify_gap(self, last_event_id: str | None, manifest: dict | None, reason: str = ...) -> None: ...
    def send_ping(self) -> None: ...
    def close_dead(self) -> None: ...
    def close_going_away(self) -> None: ...


class BacklogFull(Exception):
    """The connection's unsent bytes would pass the limit: close it with 1013."""


def write_bytes(stream: IOStream, data: bytes, max_backlog: int) -> None:
    """Write ``data`` to ``stream`` without a per-write Future when the socket keeps up.

    When Tornado's write buffer is empty, the bytes go straight to the socket (about
    9 to 11 µs against 20 to 25 µs through ``IOStream.write``, DESIGN.md); only what the
    kernel does not take is queued in the stream. ``_write_buffer`` is private to Tornado,
    but it is the only record of the unsent backlog, and Tornado itself never bounds it.

    Raises ``StreamClosedError`` when the peer is gone, ``BacklogFull`` past the bound.
    """
    if stream.closed():
        raise StreamClosedError()
    buffer = stream._write_buffer
    pending = len(buffer)
    if not pending and type(stream) is IOStream:  # not TLS: SSLIOStream must write itself
        try:
            sent = stream.socket.send(data)
        except BlockingIOError:
            sent = 0
        except OSError as exc:  # ECONNRESET, EPIPE: the peer is gone
            stream.close(exc_info=exc)
            raise StreamClosedError(real_error=exc) from None
        if sent == len(data):
            return
        data = data[sent:]
    if pending + len(data) > max_backlog:
        raise BacklogFull()
    stream.write(data)


class Hub:
    def __init__(self, *, heartbeat_interval: float, heartbeat_timeout: float):
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self._by_tenant: dict[str, set[Subscriber]] = {}
        # Every open WebSocket, subscribed or not (still subscribing, or closing): the
        # sockets a shutdown must close, since asyncio owns them, not Tornado's server.
        self.sockets: set = set()
        self._sockets_closed: asyncio.Event | None = None
        self._sweeper: PeriodicCallback | None = None
        # The heartbeat's slices of the connections (by hash) and the one it visits next.
        self._slices: list[set[Subscriber]] = [set() for _ in range(SWEEP_SLICES)]
        self._next_slice = 0
        self.deliveries = 0
        self.heartbeat_closes = 0
        self.slow_closes = 0
        # Called as observer(event, recipients, seconds) after each fan-out (tornado_cfgpush.metrics).
        self.delivery_observer: Callable[[Event, int, float], None] | None = None

    # -- registry ---------------------------------------------------------------------------

    def add(self, conn: Subscriber) -> None:
        self._by_tenant.setdefault(conn.tenant_id, set()).add(conn)
        self._slices[hash(conn) % SWEEP_SLICES].add(conn)

    def remove(self, conn: Subscriber) -> None:
        """Idempotent: called on our own closes and again from ``on_close``."""
        self._slices[hash(conn) % SWEEP_SLICES].discard(conn)
        conns = self._by_tenant.get(conn.tenant_id)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self._by_tenant[conn.tenant_id]

    def connections(self, tenant_id: str | None = None) -> list[Subscriber]:
        if tenant_id is not None:
            return list(self._by_tenant.get(tenant_id, ()))
        return [c for conns in self._by_tenant.values() for c in conns]

    def connection_count(self, tenant_id: str | None = None) -> int:
        if tenant_id is not None:
            return len(self._by_tenant.get(tenant_id, ()))
        return sum(len(c) for c in self._by_tenant.values())

    def tenants(self) -> Iterable[str]:
        return self._by_tenant.keys()

    # -- delivery -----------------------------------------------------------------------------

    def deliver(self, event: Event) -> None:
        """Hand ``event`` to every connection of its tenant; called by the broker."""
        conns = self._by_tenant.get(event.tenant_id)
        if not conns:
            return
        # A copy: a failed write removes its connection from the set during the loop.
        recipients = tuple(conns)
        started = perf_counter()
        for conn in recipients:
            conn.deliver(event)
        self.deliveries += len(recipients)
        observer = self.delivery_observer
        if observer is not None:  # metrics: once per event, never per recipient
            observer(event, len(recipients), perf_counter() - started)

    # -- heartbeat ----------------------------------------------------------------------------

    def start(self) -> None:
        """One sweep for all connections, instead of a timer or Task per connection, run in
        SWEEP_SLICES steps per interval: each step pings one slice, so the pings and their
        pongs do not come in one burst that an event published meanwhile waits behind (about
        0.3 s at 10 000 connections)."""
        if self._sweeper is None:
            self._sweeper = PeriodicCallback(self._sweep_step, self.heartbeat_interval * 1000 / SWEEP_SLICES)
            self._sweeper.start()

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.stop()
            self._sweeper = None

    def _sweep_step(self) -> None:
        self.sweep(self._slices[self._next_slice])
        self._next_slice = (self._next_slice + 1) % SWEEP_SLICES

    def sweep(self, conns: Iterable[Subscriber]) -> None:
        """Drop connections silent for longer than the timeout; ping the others. Each
        connection is in one slice for its life, so it is visited once per interval."""
        now = time.monotonic()
        deadline = now - self.heartbeat_timeout
        for conn in tuple(conns):  # a copy: a close removes the connection from its slice
            if conn.last_seen < deadline:
                self.heartbeat_closes += 1
                log.info("closing silent connection (tenant %s, no frame for %.1f s)",
                         conn.tenant_id, now - conn.last_seen,
                         extra={"tenant": conn.tenant_id, "connection": getattr(conn, "conn_id", None)})
                conn.close_dead()
            else:
                conn.send_ping()

    def close_all(self) -> None:
        """Tell every client the server is going away (1001) and forget them."""
        for conn in self.connections():
            conn.close_going_away()
            self.remove(conn)

    def socket_closed(self, conn: object) -> None:
        self.sockets.discard(conn)
        if not self.sockets and self._sockets_closed is not None:
            self._sockets_closed.set()

    async def close_sockets(self, timeout: float) -> None:
        """Close every WebSocket (1001): wait up to ``timeout`` for what is still buffered to
        go out, then drop the rest (peers that stopped reading)."""
        if not self.sockets:
            return
        self._sockets_closed = asyncio.Event()
        for conn in list(self.sockets):
            conn.close_going_away()
        try:
            await asyncio.wait_for(self._sockets_closed.wait(), timeout)
        except asyncio.TimeoutError:
            for conn in list(self.sockets):
                conn.abort()  # its connection_lost follows on the next loop iteration
            try:
                await asyncio.wait_for(self._sockets_closed.wait(), 1.0)
            except asyncio.TimeoutError:
                log.warning("%d WebSocket(s) still open after being aborted", len(self.sockets))
        finally:
            self._sockets_closed = None

"""Per-node registry of subscriptions by tenant, delivery, the heartbeat sweep, the drain.

The hub knows subscriptions and tenants, nothing of sockets: delivery is a plain loop that
hands each event to every subscription of its tenant (``Subscriber.deliver``), which writes
the event's prepared bytes to its sink (handlers/subscription.py). No Task, coroutine or
Future is created per recipient. Its counters change only through its own methods:
``deliver`` counts deliveries, ``leave`` counts why connections ended.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from time import perf_counter
from typing import Protocol

from tornado.ioloop import PeriodicCallback

from .closing import CloseReason
from .events import AckFailure, Event

log = logging.getLogger("cfgpush.hub")

# Steps of one heartbeat interval: each pings (or drops) one slice of the subscriptions.
SWEEP_SLICES = 10


class Subscriber(Protocol):
    """What the hub needs of a subscription (``/ws`` and ``/events``)."""

    tenant_id: str
    acked: str | AckFailure | None  # the client's latest Ack: applied up to an id, or failed (summary.py)

    @property
    def transport(self) -> str: ...  # "ws" or "sse"

    @property
    def last_seen(self) -> float: ...  # time.monotonic() of the client's last sign of life

    def deliver(self, event: Event) -> None: ...
    def notify_gap(
        self,
        last_event_id: str | None,
        manifest: dict[str, str] | None,
        reason: str = ...,
        prepared: dict[object, bytes] | None = None,
    ) -> None: ...
    def ping(self) -> None: ...
    def close(self, reason: CloseReason) -> None: ...
    def abort(self) -> None: ...


class Hub:
    def __init__(self, *, heartbeat_interval: float, heartbeat_timeout: float):
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self._by_tenant: dict[str, set[Subscriber]] = {}
        # Every subscription whose connection is still there (subscribing, subscribed, or
        # closing): what a shutdown waits for.
        self._open: set[Subscriber] = set()
        self._drained: asyncio.Event | None = None
        self._sweeper: PeriodicCallback | None = None
        # The heartbeat's slices of the subscriptions (by hash) and the one it visits next.
        self._slices: list[set[Subscriber]] = [set() for _ in range(SWEEP_SLICES)]
        self._next_slice = 0
        self.deliveries = 0
        self.closes: dict[CloseReason, int] = dict.fromkeys(CloseReason, 0)
        # Called as observer(event, recipients, seconds) after each fan-out (tornado_cfgpush.metrics).
        self._delivery_observer: Callable[[Event, int, float], None] | None = None

    # -- registry ---------------------------------------------------------------------------

    def add(self, sub: Subscriber) -> None:
        """``sub`` receives its tenant's events from now on."""
        self._by_tenant.setdefault(sub.tenant_id, set()).add(sub)
        self._slices[hash(sub) % SWEEP_SLICES].add(sub)

    def leave(self, sub: Subscriber, reason: CloseReason) -> None:
        """``sub`` ended, for ``reason`` (its subscription calls this once)."""
        self.closes[reason] += 1
        self._slices[hash(sub) % SWEEP_SLICES].discard(sub)
        subs = self._by_tenant.get(sub.tenant_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._by_tenant[sub.tenant_id]

    def opened(self, sub: Subscriber) -> None:
        """``sub``'s connection is open: a shutdown waits for it to be gone."""
        self._open.add(sub)

    def gone(self, sub: Subscriber) -> None:
        """``sub``'s connection is gone (its socket closed, its stream ended)."""
        self._open.discard(sub)
        if not self._open and self._drained is not None:
            self._drained.set()

    def open_count(self) -> int:
        """Connections still there, subscribed or not (closing ones included)."""
        return len(self._open)

    def connections(self, tenant_id: str | None = None) -> list[Subscriber]:
        if tenant_id is not None:
            return list(self._by_tenant.get(tenant_id, ()))
        return [c for subs in self._by_tenant.values() for c in subs]

    def connection_count(self, tenant_id: str | None = None) -> int:
        if tenant_id is not None:
            return len(self._by_tenant.get(tenant_id, ()))
        return sum(len(c) for c in self._by_tenant.values())

    def tenants(self) -> Iterable[str]:
        return self._by_tenant.keys()

    @property
    def slow_closes(self) -> int:
        """Connections closed with 1013 for an unsent backlog over the bound."""
        return self.closes[CloseReason.TOO_SLOW]

    @property
    def heartbeat_closes(self) -> int:
        """Connections dropped after the heartbeat timeout."""
        return self.closes[CloseReason.HEARTBEAT_TIMEOUT]

    # -- delivery -----------------------------------------------------------------------------

    def observe_deliveries(self, observer: Callable[[Event, int, float], None] | None) -> None:
        """Call ``observer(event, recipients, seconds)`` once after each event's fan-out."""
        self._delivery_observer = observer

    def deliver(self, event: Event) -> None:
        """Hand ``event`` to every subscription of its tenant; called by the broker."""
        subs = self._by_tenant.get(event.tenant_id)
        if not subs:
            return
        # A copy: a failed write closes its subscription, which leaves the set during the loop.
        recipients = tuple(subs)
        started = perf_counter()
        for sub in recipients:
            sub.deliver(event)
        self.deliveries += len(recipients)
        observer = self._delivery_observer
        if observer is not None:  # metrics: once per event, never per recipient
            observer(event, len(recipients), perf_counter() - started)

    # -- heartbeat ----------------------------------------------------------------------------

    def start(self) -> None:
        """One sweep for all subscriptions, instead of a timer or Task per connection, run in
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

    def sweep(self, subs: Iterable[Subscriber]) -> None:
        """Close subscriptions silent for longer than the timeout; ping the others. Each is in
        one slice for its life, so it is visited once per interval."""
        now = time.monotonic()
        deadline = now - self.heartbeat_timeout
        for sub in tuple(subs):  # a copy: a close removes the subscription from its slice
            last_seen = sub.last_seen
            if last_seen < deadline:
                log.info(
                    "closing silent connection (tenant %s, no frame for %.1f s)",
                    sub.tenant_id,
                    now - last_seen,
                    extra={"tenant": sub.tenant_id, "connection": getattr(sub, "conn_id", None)},
                )
                sub.close(CloseReason.HEARTBEAT_TIMEOUT)
            else:
                sub.ping()

    # -- shutdown -----------------------------------------------------------------------------

    def close_all(self) -> None:
        """Tell every client the server is going away (1001)."""
        for sub in list(self._open) + self.connections():
            sub.close(CloseReason.GOING_AWAY)

    async def drain(self, timeout: float) -> None:
        """Close every connection (1001), wait up to ``timeout`` for them to be gone (what is
        still buffered goes out meanwhile), then drop the rest (clients that stopped reading)."""
        self.close_all()
        if not self._open:
            return
        self._drained = asyncio.Event()
        try:
            await asyncio.wait_for(self._drained.wait(), timeout)
        except TimeoutError:
            for sub in list(self._open):
                sub.abort()  # gone on the next loop iteration
            try:
                await asyncio.wait_for(self._drained.wait(), 1.0)
            except TimeoutError:
                log.warning("%d connection(s) still open after being aborted", len(self._open))
        finally:
            self._drained = None

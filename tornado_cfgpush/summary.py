"""A tenant's connections in one count, for every place that reports them: the status API
(``GET /api/v1/tenants/<id>``), the dashboard's list (``GET /api/v1/tenants``) and ``/metrics``.

``converged`` is docs/protocol.md's: the connected clients whose latest ``Ack`` is the tenant's
newest event, all of them while it has none. A dashboard watching the tenant (its request
carries ``OBSERVER_HEADER``) is an observer, not a client applying the configuration: it counts
among the connections, never among the clients, so it never holds convergence back.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .hub import Subscriber

OBSERVER_HEADER = "X-CfgPush-Observer"


def is_observer(sub: Any) -> bool:
    """Whether ``sub``'s subscribe request says it only watches (the dashboard's streams)."""
    request = getattr(sub, "request", None)
    return request is not None and request.headers.get(OBSERVER_HEADER, "") != ""


def count_by_transport(subs: Iterable[Subscriber]) -> dict[str, int]:
    """``{"ws": n, "sse": m}`` of ``subs`` (only the transports that have connections)."""
    counts: dict[str, int] = {}
    for sub in subs:
        transport = sub.transport or "other"
        counts[transport] = counts.get(transport, 0) + 1
    return counts


@dataclass(frozen=True)
class TenantSummary:
    tenant_id: str
    connections_by_transport: dict[str, int]
    observers: int
    clients: int
    last_event_id: str | None
    converged: int

    @property
    def connections(self) -> int:
        return self.observers + self.clients

    def as_json(self) -> dict[str, Any]:
        """The status APIs' answer for the tenant (docs/protocol.md, Additions)."""
        return {
            "tenant_id": self.tenant_id,
            "connections": self.connections,
            "connections_by_transport": self.connections_by_transport,
            "observers": self.observers,
            "clients": self.clients,
            "last_event_id": self.last_event_id,
            "converged": self.converged,
        }


def summarize(tenant_id: str, subs: Iterable[Subscriber], last_event_id: str | None) -> TenantSummary:
    """The tenant's summary: ``subs`` are its connections, ``last_event_id`` its newest event."""
    subs = list(subs)
    clients = [sub for sub in subs if not is_observer(sub)]
    if last_event_id is None:
        converged = len(clients)
    else:
        converged = sum(1 for sub in clients if sub.acked == last_event_id)
    return TenantSummary(
        tenant_id, count_by_transport(subs), len(subs) - len(clients), len(clients), last_event_id, converged
    )

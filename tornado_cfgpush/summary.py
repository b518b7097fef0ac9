"""A tenant's connections in one count, for every place that reports them: the status API
(``GET /api/v1/tenants/<id>``), the dashboard's list (``GET /api/v1/tenants``) and ``/metrics``.

``converged`` is docs/protocol.md's: the connected clients whose latest ``Ack`` is the tenant's
newest event, all of them while it has none. A dashboard watching the tenant (its request
carries ``OBSERVER_HEADER``) is an observer, not a client applying the configuration: it counts
among the connections, never among the clients, so it never holds convergence back.

Apply failures (an ``Ack`` with ``error``, docs/protocol.md Additions) are counted the same way,
per tenant and newest event: ``failed`` clients answered that they could not apply it, and
``failures`` names the most common reasons, bounded (``TOP_REASONS`` of at most
``REASON_SHOWN`` characters: a few hundred bytes per tenant, however many clients fail). All of
it is computed when asked, from each connection's latest answer: nothing on the delivery path.

``invalid`` lists what the validation gate (gate.py) refused and still holds back: per file,
the JSON Pointer, the reason and since when; a good version clears it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .events import AckFailure

if TYPE_CHECKING:  # pragma: no cover
    from .hub import Subscriber

OBSERVER_HEADER = "X-CfgPush-Observer"
TOP_REASONS = 3  # apply-failure reasons reported per tenant, the most common first
REASON_SHOWN = 80  # characters of each


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
    failed: int = 0
    failures: tuple[tuple[str, int], ...] = ()  # (reason, clients), the most common first
    invalid: tuple[dict[str, Any], ...] = field(default=())

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
            "failed": self.failed,
            "failures": [{"reason": reason, "clients": n} for reason, n in self.failures],
            "invalid": [dict(entry) for entry in self.invalid],
        }


def shown_reason(error: str) -> str:
    """An apply failure's reason as the summaries show it: its first line, cut short."""
    line = error.strip().splitlines()[0] if error.strip() else "(no reason)"
    return line if len(line) <= REASON_SHOWN else line[: REASON_SHOWN - 1] + "…"


def failing(sub: Subscriber, event_id: str | None = None) -> str | None:
    """The reason ``sub`` gave for failing to apply ``event_id`` (any event when None), if its
    latest answer is such a failure."""
    acked = sub.acked
    if isinstance(acked, AckFailure) and (event_id is None or acked.event_id == event_id):
        return acked.error
    return None


def top_reasons(errors: Iterable[str]) -> tuple[tuple[str, int], ...]:
    """The ``TOP_REASONS`` most common reasons (as shown) with how many clients gave each."""
    return tuple(Counter(shown_reason(e) for e in errors).most_common(TOP_REASONS))


def refused_files(sources: Sequence[Any], tenant_id: str) -> tuple[dict[str, Any], ...]:
    """What the validation gate of every source that has one (``invalid(tenant_id)``, the
    filesystem source's) refuses for ``tenant_id``: ``{"path", "pointer", "reason", "since"}``
    by path, ``since`` in ISO 8601 (UTC)."""
    found: list[dict[str, Any]] = []
    for source in sources:
        lister = getattr(source, "invalid", None)
        if not callable(lister):
            continue
        try:
            entries = lister(tenant_id) or ()
        except Exception:  # a plugin's listing must not take the API down
            continue
        for entry in entries:
            since = entry.get("since")
            when = (
                datetime.fromtimestamp(since, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
                if isinstance(since, (int, float))
                else since
            )
            found.append(
                {
                    "path": entry.get("path"),
                    "pointer": entry.get("pointer", ""),
                    "reason": entry.get("reason"),
                    "since": when,
                }
            )
    return tuple(found)


def summarize(
    tenant_id: str,
    subs: Iterable[Subscriber],
    last_event_id: str | None,
    invalid: tuple[dict[str, Any], ...] = (),
) -> TenantSummary:
    """The tenant's summary: ``subs`` are its connections, ``last_event_id`` its newest event,
    ``invalid`` what the gate refuses (``refused_files``)."""
    subs = list(subs)
    clients = [sub for sub in subs if not is_observer(sub)]
    if last_event_id is None:
        converged, errors = len(clients), []
    else:
        converged = sum(1 for sub in clients if sub.acked == last_event_id)
        errors = [e for e in (failing(sub, last_event_id) for sub in clients) if e is not None]
    return TenantSummary(
        tenant_id,
        count_by_transport(subs),
        len(subs) - len(clients),
        len(clients),
        last_event_id,
        converged,
        len(errors),
        top_reasons(errors),
        invalid,
    )

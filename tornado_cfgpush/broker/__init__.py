"""Brokers: assign event ids, keep each tenant's history, and fan events out to nodes.

The handlers know only this interface; the embedded broker (``memory``) is the default and
a shared one (Redis) fits behind the same four calls.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, Callable

from ..events import Event

Deliver = Callable[[Event], None]


class BrokerUnavailable(Exception):
    """The broker cannot take or give events right now; nothing was half-published."""


# Resync reasons (docs/protocol.md section 2, `Resync`).
HISTORY_EXPIRED = "history_expired"
UNKNOWN_EPOCH = "unknown_epoch"
UNKNOWN_EVENT_ID = "unknown_event_id"
SOURCE_GAP = "source_gap"


@dataclass
class Catchup:
    """What a subscriber needs right after subscribing.

    ``last_event_id`` is the tenant's newest event id at subscription time (``Welcome``);
    ``events`` are the retained events after the subscriber's ``since`` id, oldest first;
    ``resync`` is a reason when ``since`` cannot be honoured, and then ``events`` is empty.
    """

    last_event_id: str | None
    events: list[Event] = field(default_factory=list)
    resync: str | None = None


class Broker(abc.ABC):
    """Publish, history and fan-out. ``deliver`` is called once per event on each node."""

    def __init__(self, deliver: Deliver):
        self.deliver = deliver

    async def start(self) -> None:
        """Connect, subscribe; called before any source runs."""

    async def stop(self) -> None:
        """Release connections; no ``deliver`` call follows."""

    @abc.abstractmethod
    async def publish(self, fields: dict[str, Any]) -> str:
        """Assign an id to a validated ``ConfigChanged`` body, record it, deliver it.

        Returns the event id. If ``(tenant_id, path, checksum)`` equals the tenant's previous
        event for that path, nothing is published and the earlier id is returned.
        Raises ``BrokerUnavailable`` when it cannot publish.
        """

    @abc.abstractmethod
    async def catch_up(self, tenant_id: str, since: str | None) -> Catchup:
        """The newest id of ``tenant_id`` and, when ``since`` is given, what came after it."""

    async def published_states(self, tenant_id: str, source: str) -> dict[str, str | None]:
        """``{path: checksum, or None when deleted}`` for the paths of the tenant whose last
        event came from ``source`` (the idempotence record). A source that starts after a
        downtime compares it with what it finds, so changes made meanwhile are not lost."""
        return {}

    def readiness(self) -> str | None:
        """None when ready, else the reason it is not."""
        return None

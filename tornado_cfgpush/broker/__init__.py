"""Brokers: assign event ids, keep each tenant's history, and fan events out to nodes.

The handlers know only this interface; the embedded broker (``memory``) is the default and
a shared one (Redis) fits behind the same four calls.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

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


@dataclass
class Published:
    """What a shared broker remembers of a tenant's paths (see ``Broker.published_states``).

    ``states``: ``{path: checksum, or None when deleted}``, of the paths whose last event came
    from the source asked about. ``since``: when the tenant's record began (the version of its
    first event, else the broker's clock; microseconds since the epoch), or None when unknown:
    a file not in ``states`` whose content is older than that was there, unchanged, before
    anything was published for the tenant, and is nothing new."""

    states: dict[str, str | None] = field(default_factory=dict)
    since: int | None = None


@dataclass
class BrokerState:
    """What a broker keeps in this process, for ``/metrics``.

    ``tenants``: tenants it holds per-tenant state for (records of the embedded broker, the
    delivery cursors of the Redis one); ``history_bytes``: what the history counts for in
    ``--history-max-bytes`` (None when it lives elsewhere); ``dropped``: tenants' records
    dropped so far, by reason (``expired``, ``memory``); ``evicted_events``: events dropped
    before their time to stay within the bound.
    """

    tenants: int = 0
    history_bytes: int | None = None
    dropped: dict[str, int] = field(default_factory=dict)
    forgotten: int = 0  # dropped tenants whose newest id is still known (a quiet tenant resumes)
    evicted_events: int = 0


class Broker(abc.ABC):
    """Publish, history and fan-out. ``deliver`` is called once per event on each node."""

    def __init__(self, deliver: Deliver):
        self.deliver = deliver

    async def start(self) -> None:
        """Connect, subscribe; called before any source runs."""

    async def stop(self) -> None:
        """Release connections; no ``deliver`` call follows."""

    @abc.abstractmethod
    async def publish(self, fields: dict[str, Any], version: int | None = None) -> str:
        """Assign an id to a validated ``ConfigChanged`` body, record it, deliver it.

        Returns the event id. If ``(tenant_id, path, checksum)`` equals the tenant's previous
        event for that path, nothing is published and the earlier id is returned. With a
        ``version`` (the observation's order, see ``CfgPush.publish``), a change older than
        the version recorded for its path is not published either (another node published a
        newer one): the recorded event's id is returned. Raises ``BrokerUnavailable`` when it
        cannot publish.
        """

    async def publish_many(self, items: list[tuple[dict[str, Any], int | None]]) -> list[str]:
        """``publish`` of each ``(fields, version)``, in order; the event loop runs between two
        (a shared broker sends them all in one round trip instead)."""
        ids = []
        for n, (fields, version) in enumerate(items):
            if n:
                await asyncio.sleep(0)
            ids.append(await self.publish(fields, version=version))
        return ids

    @abc.abstractmethod
    async def catch_up(self, tenant_id: str, since: str | None) -> Catchup:
        """The newest id of ``tenant_id`` and, when ``since`` is given, what came after it."""

    async def published_states(self, tenant_id: str, source: str) -> Published:
        """What was published for the tenant's paths by ``source`` (the idempotence record).
        A source that starts after a downtime compares it with what it finds, so changes made
        meanwhile are not lost."""
        return Published()

    # -- content handed with events (``emit(..., content=)``, the publish API; --serve-content) --

    async def store_content(self, tenant_id: str, path: str, checksum: str, data: bytes) -> None:
        """Keep ``data`` (whose sha256 is ``checksum``) as the newest content handed for the
        path, for every node to serve. The embedded broker has one node: the service keeps it."""

    async def stored_checksum(self, tenant_id: str, path: str) -> str | None:
        """The checksum of the content kept for the path, when it is the path's newest
        published version (an event without content since makes it stale: None)."""
        return None

    async def stored_content(self, tenant_id: str, path: str) -> bytes | None:
        """The bytes kept for the path (check ``stored_checksum`` first)."""
        return None

    async def stored_files(self, tenant_id: str) -> dict[str, str]:
        """``{path: checksum}`` of the tenant's content handed on any node."""
        return {}

    def state(self) -> BrokerState:
        return BrokerState()

    def readiness(self) -> str | None:
        """None when ready, else the reason it is not."""
        return None

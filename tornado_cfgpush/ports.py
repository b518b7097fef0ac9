"""What the HTTP side needs of the service, as narrow protocols (docs/architecture.md, "The walls").

The handlers are typed against these and never import ``app``: each sees the few calls it
uses (admit a subscriber, authorize it, subscribe it, publish, read a tenant's status), not the
whole ``CfgPush``. ``app.CfgPush`` implements them all; ``app.make_app`` hands it to
``handlers.default_handlers``, and mypy checks there that it fits. A test or a plugin may hand
the handlers anything else that fits.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:  # pragma: no cover
    from .auth import Decision
    from .broker import Broker, Catchup
    from .closing import CloseReason
    from .content import Version
    from .hub import Hub, Subscriber
    from .limits import Slot
    from .settings import Settings
    from .sources.runner import SourceRunner


class Registry(Protocol):
    """The hub as subscriptions and the status APIs see it: who is connected, and the calls
    a subscription makes over its life (join, leave for a reason, open, gone)."""

    def add(self, sub: Subscriber) -> None: ...
    def leave(self, sub: Subscriber, reason: CloseReason) -> None: ...
    def opened(self, sub: Subscriber) -> None: ...
    def gone(self, sub: Subscriber) -> None: ...
    def connections(self, tenant_id: str | None = None) -> list[Subscriber]: ...
    def connection_count(self, tenant_id: str | None = None) -> int: ...
    def tenants(self) -> Iterable[str]: ...


class EventLog(Protocol):
    """The broker as a subscriber and the status APIs see it: a tenant's newest id and what
    came after a given one."""

    async def catch_up(self, tenant_id: str, since: str | None) -> Catchup: ...


class ConnectionSlots(Protocol):
    """The connection limits (limits.py): a slot per admitted subscriber, or ``LimitReached``."""

    def acquire(self, ip: str, tenant_id: str) -> Slot: ...


class ServiceMetrics(Protocol):
    """What the handlers count and serve of ``/metrics``."""

    def rejected(self, source: str, reason: str) -> None: ...
    def file_request(self, status: int, body_bytes: int = 0) -> None: ...
    def exposition(self) -> bytes: ...
    async def scrape(self) -> bytes: ...


class Configured(Protocol):
    @property
    def settings(self) -> Settings: ...


class Subscribing(Configured, Protocol):
    """``/ws`` and ``/events``: admit (limits), authorize (the ``cfgpush_authorize`` hook),
    subscribe (the hub, the broker's catch-up, the sources' manifest)."""

    @property
    def hub(self) -> Registry: ...

    @property
    def broker(self) -> EventLog: ...

    @property
    def limits(self) -> ConnectionSlots: ...

    def authorize(self, request: Any, tenant_id: str, token: str | None) -> Decision: ...
    def manifest(self, tenant_id: str) -> dict[str, str] | None: ...


class Publishing(Configured, Protocol):
    """``POST /api/v1/events``: the one path of every event (schema, broker, hub)."""

    @property
    def metrics(self) -> ServiceMetrics: ...

    async def publish(
        self, payload: dict[str, Any], source: str | None = None, *, content: bytes | None = None
    ) -> str: ...


class Observing(Configured, Protocol):
    """The status APIs, the dashboard's list, ``/metrics`` and ``/readyz``."""

    @property
    def hub(self) -> Registry: ...

    @property
    def broker(self) -> EventLog: ...

    @property
    def metrics(self) -> ServiceMetrics: ...

    @property
    def sources(self) -> Sequence[Any]: ...  # event sources; some name their tenants (``tenants()``)

    def not_ready_reasons(self) -> list[str]: ...
    async def tenant_summary(self, tenant_id: str) -> dict[str, Any]: ...
    async def known_tenants(self, with_clients: bool) -> list[str]: ...
    async def page_summaries(self, tenants: list[str], last: list[str | None]) -> tuple[list[dict[str, Any]], int]: ...
    def degraded_reasons(self) -> list[str]: ...


class Serving(Configured, Protocol):
    """The files API (``--serve-content``): authorize like ``/ws``, list a tenant's served
    files, and hand out the announced version of one."""

    @property
    def metrics(self) -> ServiceMetrics: ...

    def authorize(self, request: Any, tenant_id: str, token: str | None) -> Decision: ...
    async def served_files(self, tenant_id: str) -> dict[str, str]: ...
    async def file_content(self, tenant_id: str, path: str) -> Version | None: ...
    async def file_document(self, tenant_id: str, path: str) -> tuple[Version, Version] | None: ...
    async def refresh_manifest(self, tenant_id: str) -> None: ...


class Service(Subscribing, Publishing, Observing, Serving, Protocol):
    """Everything ``handlers.default_handlers`` serves: what ``app.CfgPush`` is to them."""


class Metered(Configured, Protocol):
    """What ``metrics.Metrics`` reads at scrape time: the hub's and the runner's counters, the
    broker's readiness."""

    @property
    def hub(self) -> Hub: ...

    @property
    def broker(self) -> Broker: ...

    @property
    def runner(self) -> SourceRunner | None: ...

"""HTTP and WebSocket handlers; ``default_handlers(core)`` lists the routes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .dashboard import dashboard_handlers
from .files import FilesHandler
from .health import HealthHandler, ReadyHandler
from .metrics import MetricsHandler
from .publish import PublishBudget, PublishHandler
from .sse import EventStreamHandler
from .tenants import TenantStatusHandler
from .ws import ConfigWebSocket

if TYPE_CHECKING:  # pragma: no cover
    from ..ports import Service


def default_handlers(core: Service) -> list[tuple]:
    return [
        (r"/ws", ConfigWebSocket, {"core": core}),
        (r"/events", EventStreamHandler, {"core": core}),
        (r"/healthz", HealthHandler),
        (r"/readyz", ReadyHandler, {"core": core}),
        (r"/metrics", MetricsHandler, {"core": core}),
        (r"/api/v1/tenants/([^/]*)", TenantStatusHandler, {"core": core}),
        (r"/api/v1/tenants/([^/]*)/files", FilesHandler, {"core": core}),
        (r"/api/v1/tenants/([^/]*)/files/(.+)", FilesHandler, {"core": core}),
        (r"/api/v1/events", PublishHandler, {"core": core, "budget": PublishBudget.from_settings(core.settings)}),
        *dashboard_handlers(core),  # /, /cfgpush.js, GET /api/v1/tenants
    ]

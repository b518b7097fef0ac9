"""``/metrics`` (docs/protocol.md section 5): the Prometheus text format, from ``core.metrics``.

With an admin token configured, a scrape needs it (``Authorization: Bearer <admin token>``,
Prometheus' ``authorization`` setting): the series count every tenant's events and, with
``--metrics-tenant-labels``, name tenants. ``--metrics-public`` leaves it open for a scraper
on a private network. The Host rule (``--allowed-host``) applies either way.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST
from tornado import web

from .base import JsonErrorsMixin, Refused, check_host, check_token

if TYPE_CHECKING:  # pragma: no cover
    from ..ports import Observing


class MetricsHandler(JsonErrorsMixin, web.RequestHandler):
    def initialize(self, core: Observing) -> None:
        self.core = core

    async def get(self) -> None:
        settings = self.core.settings
        try:
            if settings.admin_token and not settings.metrics_public:
                check_token(self, settings.admin_token, "admin")  # 401 missing or wrong, as the tenant API
            else:
                check_host(self)
        except Refused as refused:
            self.refuse(refused)
            return
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.set_header("Cache-Control", "no-store")
        self.finish(await self.core.metrics.scrape())

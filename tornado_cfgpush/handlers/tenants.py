"""``GET /api/v1/tenants/<id>``: a tenant's connections, convergence, apply failures and what
the validation gate refuses (admin token)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tornado import web

from ..rules import tenant_id_error
from ..summary import refused_files, summarize
from .base import JsonErrorsMixin, Refused, check_token

if TYPE_CHECKING:  # pragma: no cover
    from ..ports import Observing


class TenantStatusHandler(JsonErrorsMixin, web.RequestHandler):
    def initialize(self, core: Observing) -> None:
        self.core = core

    async def get(self, tenant_id: str) -> None:
        try:
            check_token(self, self.core.settings.admin_token, "admin")
            problem = tenant_id_error(tenant_id)
            if problem:
                raise Refused(400, f"tenant_id {problem}")
        except Refused as refused:
            self.refuse(refused)
            return
        catchup = await self.core.broker.catch_up(tenant_id, None)
        summary = summarize(
            tenant_id,
            self.core.hub.connections(tenant_id),
            catchup.last_event_id,
            refused_files(self.core.sources, tenant_id),
        )
        self.set_header("Cache-Control", "no-store")
        self.finish(summary.as_json())

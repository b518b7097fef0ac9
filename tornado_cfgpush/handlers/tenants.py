"""``GET /api/v1/tenants/<id>``: a tenant's connections, convergence, apply failures and what
the validation gate refuses (admin token)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tornado import web

from ..rules import tenant_id_error
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
        summary = await self.core.tenant_summary(tenant_id)  # every worker's, under --workers
        self.set_header("Cache-Control", "no-store")
        self.finish(summary)

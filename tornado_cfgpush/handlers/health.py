"""``/healthz`` and ``/readyz`` (docs/protocol.md section 5)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tornado import web

from .base import JsonErrorsMixin

if TYPE_CHECKING:  # pragma: no cover
    from ..ports import Observing


class HealthHandler(JsonErrorsMixin, web.RequestHandler):
    def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.finish({"status": "ok"})


class ReadyHandler(JsonErrorsMixin, web.RequestHandler):
    """200 when the broker is reachable and every source has started, else 503 and why;
    200 ``degraded`` with the reasons while it serves worse than it should (a blocked loop)."""

    def initialize(self, core: Observing) -> None:
        self.core = core

    def get(self) -> None:
        reasons = self.core.not_ready_reasons()
        self.set_header("Cache-Control", "no-store")
        if reasons:
            self.set_status(503)
            self.finish({"status": "not ready", "reasons": reasons})
            return
        degraded = self.core.degraded_reasons()
        if degraded:
            self.finish({"status": "degraded", "reasons": degraded})
        else:
            self.finish({"status": "ready"})


class NotFoundHandler(JsonErrorsMixin, web.RequestHandler):
    def prepare(self) -> None:
        raise web.HTTPError(404, "no such endpoint")

"""``/healthz``: 200 while the process serves (PROTOCOL.md section 5)."""
from __future__ import annotations

from tornado import web

from .base import JsonErrorsMixin


class HealthHandler(JsonErrorsMixin, web.RequestHandler):
    def get(self) -> None:
        self.set_header("Cache-Control", "no-store")
        self.finish({"status": "ok"})


class NotFoundHandler(JsonErrorsMixin, web.RequestHandler):
    def prepare(self) -> None:
        raise web.HTTPError(404, "no such endpoint")

"""``/metrics`` (PROTOCOL.md section 5): the Prometheus text format, from ``core.metrics``."""
from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST
from tornado import web

from .base import JsonErrorsMixin

if TYPE_CHECKING:  # pragma: no cover
    from ..app import CfgPush


class MetricsHandler(JsonErrorsMixin, web.RequestHandler):
    def initialize(self, core: "CfgPush") -> None:
        self.core = core

    def get(self) -> None:
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.set_header("Cache-Control", "no-store")
        self.finish(self.core.metrics.exposition())

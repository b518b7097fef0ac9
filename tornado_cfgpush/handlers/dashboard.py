"""The dashboard at ``/``, the browser client ``/cfgpush.js`` (with ``/example.html``), and
``GET /api/v1/tenants``.

The pages are static files of the package (``tornado_cfgpush/static``): no template, no build
step. The admin token is typed into the page and sent in an ``Authorization`` header only;
nothing the dashboard needs puts it in a URL.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import TYPE_CHECKING

from tornado import web

from ..broker import BrokerUnavailable
from ..summary import refused_files, summarize
from .base import JsonErrorsMixin, Refused, check_token

if TYPE_CHECKING:  # pragma: no cover
    from ..ports import Observing

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

# The dashboard's own policy: only its own scripts, styles and connections; no framing.
DASHBOARD_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".ts": "text/plain; charset=utf-8",  # cfgpush.d.ts: mimetypes would say video/mp2t
    ".css": "text/css; charset=utf-8",
    ".html": "text/html; charset=utf-8",
}


class StaticHandler(web.StaticFileHandler):
    """The package's static files, revalidated on every load (ETag), so an upgrade shows."""

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Referrer-Policy", "no-referrer")
        if path in ("", "index.html"):
            self.set_header("Content-Security-Policy", DASHBOARD_CSP)
            self.set_header("X-Frame-Options", "DENY")
        else:
            # The client is public code: pages of other origins may import it as a module
            # (which needs CORS). No credentials are involved.
            self.set_header("Access-Control-Allow-Origin", "*")

    def get_content_type(self) -> str:
        suffix = Path(self.absolute_path or "").suffix
        return CONTENT_TYPES.get(suffix) or super().get_content_type()


class TenantListHandler(JsonErrorsMixin, web.RequestHandler):
    """``GET /api/v1/tenants`` (admin token): every tenant with connections or configuration.

    Tenants come from the hub (connected) and from every source that can name its tenants
    (``tenants()``, the filesystem source does). Per tenant, its summary (summary.py), as
    ``GET /api/v1/tenants/<id>`` answers it: connections by transport, observers and clients,
    the newest event id, and how many clients have acknowledged that event.
    """

    def initialize(self, core: Observing) -> None:
        self.core = core

    def known_tenants(self) -> list[str]:
        names = set(self.core.hub.tenants())
        for source in self.core.sources:
            lister = getattr(source, "tenants", None)
            if callable(lister):
                try:
                    names.update(lister() or ())
                except Exception:  # a plugin's listing must not take the API down
                    continue
        return sorted(names)

    async def get(self) -> None:
        try:
            check_token(self, self.core.settings.admin_token, "admin")
        except Refused as refused:
            self.refuse(refused)
            return
        names = self.known_tenants()
        try:
            catchups = await asyncio.gather(*(self.core.broker.catch_up(t, None) for t in names))
        except BrokerUnavailable:
            self.set_status(503)
            self.set_header("Retry-After", "1")
            self.finish({"error": "the broker is unavailable; retry later"})
            return
        hub = self.core.hub
        tenants = [
            summarize(
                tenant_id,
                hub.connections(tenant_id),
                catchup.last_event_id,
                refused_files(self.core.sources, tenant_id),
            ).as_json()
            for tenant_id, catchup in zip(names, catchups, strict=True)
        ]
        self.set_header("Cache-Control", "no-store")
        self.finish({"tenants": tenants, "connections": self.core.hub.connection_count()})


def dashboard_handlers(core: Observing) -> list[tuple]:
    static = {"path": str(STATIC_DIR)}
    return [
        (r"/()", StaticHandler, {**static, "default_filename": "index.html"}),
        (r"/(cfgpush\.js|cfgpush\.d\.ts|dashboard\.js|dashboard\.css|example\.html)", StaticHandler, static),
        (r"/api/v1/tenants", TenantListHandler, {"core": core}),
    ]

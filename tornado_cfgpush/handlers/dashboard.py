"""The dashboard at ``/``, the browser client ``/cfgpush.js`` (with ``/example.html``), and
``GET /api/v1/tenants`` (paged).

The pages are static files of the package (``tornado_cfgpush/static``): no template, no build
step. The admin token is typed into the page and sent in an ``Authorization`` header only;
nothing the dashboard needs puts it in a URL.
"""

from __future__ import annotations

import asyncio
import bisect
import re
from pathlib import Path
from typing import TYPE_CHECKING

from tornado import web

from ..broker import BrokerUnavailable
from ..rules import tenant_id_error
from .base import JsonErrorsMixin, Refused, check_token, single_query_argument

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


# Tenants per page of GET /api/v1/tenants: what ``limit`` may ask for at most.
MAX_PAGE = 1000
PREFIX_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}\Z")
PAGE_PARAMETERS = frozenset(("prefix", "with_clients", "limit", "after"))
LIMIT_RE = re.compile(r"^[0-9]{1,4}\Z")


class TenantListHandler(JsonErrorsMixin, web.RequestHandler):
    """``GET /api/v1/tenants`` (admin token): tenants with connections or configuration, by id.

    Tenants come from the hub (connected) and from every source that can name its tenants
    (``tenants()``, the filesystem source does). Per tenant, its summary (summary.py), as
    ``GET /api/v1/tenants/<id>`` answers it. Paged and filtered (docs/protocol.md, Additions):
    ``prefix`` (ids starting with it), ``with_clients=1`` (only tenants with a connected client),
    ``limit`` (1 to ``MAX_PAGE``) and ``after`` (the ``next`` of the previous page: ids after it).
    Without ``limit``, every matching tenant, as before paging existed. Only the page's tenants
    are looked up in the broker, so a page costs the same with 100 or 100 000 tenants known.
    """

    def initialize(self, core: Observing) -> None:
        self.core = core

    def page_query(self) -> tuple[str, bool, int | None, str | None]:
        """``(prefix, with_clients, limit, after)`` of the request, or ``Refused(400)`` (an
        unknown parameter too: a misspelt filter must not silently list everything)."""
        unknown = sorted(set(self.request.query_arguments) - PAGE_PARAMETERS)
        if unknown:
            raise Refused(
                400, f"unknown query parameter {unknown[0][:64]!r} (known: {', '.join(sorted(PAGE_PARAMETERS))})"
            )
        prefix = single_query_argument(self, "prefix")
        if prefix is not None and not PREFIX_RE.match(prefix):
            raise Refused(400, "prefix must be 1 to 64 of A-Z a-z 0-9 . _ -")
        flag = single_query_argument(self, "with_clients")
        if flag not in (None, "0", "1", "true", "false"):
            raise Refused(400, "with_clients must be 1, 0, true or false")
        text = single_query_argument(self, "limit")
        limit = None
        if text is not None:
            if not LIMIT_RE.match(text) or not 1 <= int(text) <= MAX_PAGE:
                raise Refused(400, f"limit must be a whole number from 1 to {MAX_PAGE}")
            limit = int(text)
        after = single_query_argument(self, "after")
        if after is not None:
            problem = tenant_id_error(after)
            if problem:
                raise Refused(400, f"after {problem}")
        return prefix or "", flag in ("1", "true"), limit, after

    async def get(self) -> None:
        try:
            check_token(self, self.core.settings.admin_token, "admin")
            prefix, with_clients, limit, after = self.page_query()
        except Refused as refused:
            self.refuse(refused)
            return
        names = await self.core.known_tenants(with_clients)  # every worker's, under --workers
        if prefix:
            start = bisect.bisect_left(names, prefix)
            stop = start
            while stop < len(names) and names[stop].startswith(prefix):
                stop += 1
            names = names[start:stop]
        total = len(names)
        if after is not None:
            names = names[bisect.bisect_right(names, after) :]
        more = limit is not None and len(names) > limit
        page = names[:limit] if limit is not None else names
        try:
            catchups = await asyncio.gather(*(self.core.broker.catch_up(t, None) for t in page))
        except BrokerUnavailable:
            self.set_status(503)
            self.set_header("Retry-After", "1")
            self.finish({"error": "the broker is unavailable; retry later"})
            return
        tenants, connections = await self.core.page_summaries(page, [c.last_event_id for c in catchups])
        self.set_header("Cache-Control", "no-store")
        self.finish(
            {
                "tenants": tenants,
                "connections": connections,
                "total": total,
                "next": page[-1] if more else None,
            }
        )


def dashboard_handlers(core: Observing) -> list[tuple]:
    static = {"path": str(STATIC_DIR)}
    return [
        (r"/()", StaticHandler, {**static, "default_filename": "index.html"}),
        (r"/(cfgpush\.js|cfgpush\.d\.ts|dashboard\.js|dashboard\.css|example\.html)", StaticHandler, static),
        (r"/api/v1/tenants", TenantListHandler, {"core": core}),
    ]

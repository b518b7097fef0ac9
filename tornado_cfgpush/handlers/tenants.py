"""``GET /api/v1/tenants/<id>``: a tenant's connections and convergence (admin token)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

from tornado import web

from ..auth import host_refusal, matches_any
from ..rules import tenant_id_error
from .base import JsonErrorsMixin, Refused

if TYPE_CHECKING:  # pragma: no cover
    from ..ports import Observing


def bearer_token(handler: web.RequestHandler) -> str | None:
    header = handler.request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def check_host(handler: web.RequestHandler) -> None:
    """``Refused(421)`` when ``--allowed-host`` is set and the request's Host is not in it."""
    misdirected = host_refusal(handler.request, handler.core.settings.allowed_hosts)
    if misdirected:
        raise Refused(421, misdirected)


def check_token(handler: web.RequestHandler, expected: str | Iterable[str] | None, what: str,
                wrong_status: int = 401) -> str:
    """Refuse unless the request bears ``expected`` (or one of several), compared in constant
    time with each; return the token it bears.

    Every API's check, so the Host rule (``check_host``: 421) comes first here. Then no token
    configured: 403 (the API is off). Missing: 401. Wrong: ``wrong_status`` (the publish API
    answers 403, PROTOCOL.md section 4).
    """
    check_host(handler)
    expected = (expected,) if isinstance(expected, str) else tuple(expected or ())
    if not expected:
        raise Refused(403, f"the {what} API is disabled on this server (no {what} token configured)")
    given = bearer_token(handler)
    if given is None:
        raise Refused(401, f"{what} token required (Authorization: Bearer <token>)",
                      {"WWW-Authenticate": 'Bearer realm="cfgpush"'})
    if not matches_any(given, expected):
        raise Refused(wrong_status, f"wrong {what} token",
                      {"WWW-Authenticate": 'Bearer realm="cfgpush", error="invalid_token"'})
    return given


class TenantStatusHandler(JsonErrorsMixin, web.RequestHandler):
    def initialize(self, core: "Observing") -> None:
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
        newest = catchup.last_event_id
        conns = self.core.hub.connections(tenant_id)
        by_transport: dict[str, int] = {}
        for conn in conns:
            by_transport[conn.transport] = by_transport.get(conn.transport, 0) + 1
        self.set_header("Cache-Control", "no-store")
        self.finish({
            "tenant_id": tenant_id,
            "connections": len(conns),
            "connections_by_transport": by_transport,
            "last_event_id": newest,
            # Clients that acknowledged the newest event; with no event yet, all are current.
            "converged": len(conns) if newest is None else sum(1 for c in conns if c.acked == newest),
        })

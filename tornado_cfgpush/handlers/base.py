"""What every cfgpush HTTP handler shares: JSON errors, and refusing with a reason."""
from __future__ import annotations

from typing import Any

from tornado import web

from ..schemas import tenant_id_error


class Refused(Exception):
    """Refuse a request before any work, with a status and a human-readable reason."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


class JsonErrorsMixin:
    """Errors as ``{"error": "<reason>"}`` (PROTOCOL.md section 2), never an HTML page."""

    def write_error(self: web.RequestHandler, status_code: int, **kwargs: Any) -> None:
        reason = self._reason
        exc_info = kwargs.get("exc_info")
        if exc_info and isinstance(exc_info[1], web.HTTPError) and exc_info[1].log_message:
            # log_message is ours (raised with a reason meant for the client).
            reason = exc_info[1].log_message % exc_info[1].args if exc_info[1].args else exc_info[1].log_message
        if status_code >= 500:
            reason = "internal server error"
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish({"error": reason})

    def refuse(self: web.RequestHandler, refused: Refused) -> None:
        self.clear()
        self.set_status(refused.status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish({"error": refused.reason})


def single_query_argument(handler: web.RequestHandler, name: str) -> str | None:
    """The query argument ``name``, or None; given twice, or not UTF-8, is refused."""
    raw = handler.request.query_arguments.get(name)
    if not raw:
        return None
    if len(raw) > 1:
        raise Refused(400, f"{name} must be given once")
    try:
        return raw[0].decode("utf-8")
    except UnicodeDecodeError:
        raise Refused(400, f"{name} is not valid UTF-8") from None


def tenant_from_query(handler: web.RequestHandler) -> str:
    """The requested tenant id, checked by the one tenant-id rule, or ``Refused(400)``."""
    tenant_id = single_query_argument(handler, "tenant_id")
    if tenant_id is None:
        raise Refused(400, "tenant_id is required")
    problem = tenant_id_error(tenant_id)
    if problem:
        raise Refused(400, f"tenant_id {problem}")
    return tenant_id

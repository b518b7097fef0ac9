"""What every cfgpush HTTP handler shares: JSON errors, refusing with a reason, no token in
a log line; the APIs' Host and bearer-token checks (``check_host``, ``check_token``); what
``/ws`` and ``/events`` check before they serve anyone (``AdmissionMixin``):
query-string size, Origin, authorization (``cfgpush_authorize``), connection limits; and the
``Lease`` an admitted subscriber holds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from tornado import httputil, web
from tornado.ioloop import IOLoop

from ..auth import Decision, bearer, cross_site_refused, host_refusal, matches_any, origin_allowed
from ..limits import LimitReached, Slot
from ..redaction import redact
from ..rules import tenant_id_error

if TYPE_CHECKING:  # pragma: no cover
    from ..ports import Subscribing

log = logging.getLogger("cfgpush.auth")
app_log = logging.getLogger("tornado.application")
gen_log = logging.getLogger("tornado.general")


class Refused(Exception):
    """Refuse a request before any work, with a status and a human-readable reason."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}


class JsonErrorsMixin(web.RequestHandler):
    """Errors as ``{"error": "<reason>"}`` (docs/protocol.md section 2), never an HTML page."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc_info = kwargs.get("exc_info")
        error = exc_info[1] if exc_info else None
        if isinstance(error, web.HTTPError) and error.log_message:
            # log_message is ours (raised with a reason meant for the client).
            reason = error.log_message % error.args if error.args else error.log_message
        else:  # the status line's reason, as Tornado's send_error chose it
            reason = (error.reason if isinstance(error, web.HTTPError) else None) or httputil.responses.get(
                status_code, "Unknown"
            )
        if status_code >= 500:
            reason = "internal server error"
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish({"error": reason})

    def refuse(self, refused: Refused) -> None:
        self.clear()
        self.set_status(refused.status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        for name, value in getattr(refused, "headers", {}).items():
            self.set_header(name, value)
        self.finish({"error": refused.reason})

    # Tornado's access and error logs name the request by its URI, whose query string may
    # carry a token (?token=): never write it (SECURITY.md).
    def _request_summary(self) -> str:
        return f"{self.request.method} {redact(self.request.uri or '')} ({self.request.remote_ip})"

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        """Tornado's, less the ``repr`` of the request (its URI, with the query string)."""
        if isinstance(value, web.HTTPError):
            if value.log_message:
                args = [value.status_code, self._request_summary()] + list(value.args)
                gen_log.warning("%d %s: " + value.log_message, *args)
        else:
            app_log.error("Uncaught exception %s", self._request_summary(), exc_info=(typ, value, tb))


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


def check_host(handler: Any) -> None:
    """``Refused(421)`` when ``--allowed-host`` is set and the request's Host is not in it."""
    misdirected = host_refusal(handler.request, handler.core.settings.allowed_hosts)
    if misdirected:
        raise Refused(421, misdirected)


def check_token(handler: Any, expected: str | Iterable[str] | None, what: str, wrong_status: int = 401) -> str:
    """Refuse unless the request bears ``expected`` (or one of several), compared in constant
    time with each; return the token it bears.

    Every API's check, so the Host rule (``check_host``: 421) comes first here. Then no token
    configured: 403 (the API is off). Missing: 401. Wrong: ``wrong_status`` (the publish API
    answers 403, docs/protocol.md section 4).
    """
    check_host(handler)
    expected = (expected,) if isinstance(expected, str) else tuple(expected or ())
    if not expected:
        raise Refused(403, f"the {what} API is disabled on this server (no {what} token configured)")
    given = bearer(handler.request)
    if given is None:
        raise Refused(
            401,
            f"{what} token required (Authorization: Bearer <token>)",
            {"WWW-Authenticate": 'Bearer realm="cfgpush"'},
        )
    if not matches_any(given, expected):
        raise Refused(
            wrong_status, f"wrong {what} token", {"WWW-Authenticate": 'Bearer realm="cfgpush", error="invalid_token"'}
        )
    return given


def check_query_size(handler: web.RequestHandler, limit: int) -> None:
    """``Refused(414)`` when the query string is longer than ``limit`` bytes."""
    if len(handler.request.query) > limit:
        raise Refused(414, f"the query string must be at most {limit} bytes")


class Lease:
    """What an admitted subscriber holds for the life of its connection: its connection slot
    (given back by ``release``, exactly once, however the connection ends), the authorization
    decision (``auth``), the request the ``cfgpush_authorize`` hook is shown again on a
    ``Refresh``, and the timer that ends the connection when the token expires.
    """

    __slots__ = ("core", "request", "auth", "_slot", "_expiry")

    def __init__(self, core: Subscribing, request: Any, auth: Decision, slot: Slot | None):
        self.core = core
        self.request = request
        self.auth = auth
        self._slot = slot
        self._expiry: object | None = None

    def schedule_expiry(self, on_expired: Callable[[], None]) -> None:
        """Call ``on_expired`` when the token expires (nothing when it never does)."""
        self._cancel_expiry()
        expires_at = self.auth.expires_at
        if expires_at is None or self._slot is None or self._slot.released:
            return
        self._expiry = IOLoop.current().call_later(max(0.0, expires_at - time.time()), on_expired)

    def refresh(self, tenant_id: str, token: str, on_expired: Callable[[], None]) -> str | None:
        """A newer token for the same tenant moves the expiry; None when accepted, else why not
        (a refused token changes nothing)."""
        decision = self.core.authorize(self.request, tenant_id, token)
        if not decision.allowed:
            return decision.reason
        current = self.auth.expires_at
        if current is not None and decision.expires_at is not None and decision.expires_at < current:
            return "token expires before the current one"
        self.auth = decision
        self.schedule_expiry(on_expired)
        return None

    def release(self) -> None:
        """Give the slot back and stop the expiry timer (idempotent)."""
        self._cancel_expiry()
        if self._slot is not None:
            self._slot.release()

    def _cancel_expiry(self) -> None:
        if self._expiry is not None:
            IOLoop.current().remove_timeout(self._expiry)
            self._expiry = None


class AdmissionMixin:
    """What ``/ws`` and ``/events`` check before serving, in this order, after the tenant id:
    Host (421, ``--allowed-host``), Origin (403), authorization (401/403,
    ``cfgpush_authorize``), connection limits (429/503).
    Admitted, the request holds a ``Lease`` (``self.lease``) that its connection takes over.
    """

    core: Subscribing
    request: Any
    lease: Lease | None = None

    # Whether an allowed page of another origin may read the response (the SSE stream's CORS
    # header); Tornado's own cross_origin_protection would consult it too.
    def check_trusted_origin(self, origin: str) -> bool:
        return origin_allowed(origin, self.core.settings.allowed_origins)

    def admit(self, tenant_id: str) -> Lease:
        """Host, Origin, token, limits; or ``Refused``. Takes a slot on success."""
        decision = check_subscriber(self.request, self.core, tenant_id)
        try:
            slot = self.core.limits.acquire(self.request.remote_ip or "", tenant_id)
        except LimitReached as limit:
            log.warning(
                "refused %s (%s): %s limit reached, tenant %s",
                self.request.path,
                self.request.remote_ip,
                limit.scope,
                tenant_id,
            )
            raise Refused(limit.status, limit.reason, {"Retry-After": "1" if limit.status == 429 else "5"}) from None
        self.lease = Lease(self.core, self.request, decision, slot)
        return self.lease

    def authorize_request(self, tenant_id: str) -> Decision:
        return authorize_request(self.request, self.core, tenant_id)


def check_subscriber(request: Any, core: Any, tenant_id: str) -> Decision:
    """Whether ``request`` may read ``tenant_id``'s configuration: Host (421,
    ``--allowed-host``), Origin (403), authorization (401/403, ``cfgpush_authorize``), in this
    order; the allowing ``Decision``, or ``Refused``. The one rule of ``/ws``, ``/events`` and
    the files API."""
    misdirected = host_refusal(request, core.settings.allowed_hosts)
    if misdirected:
        raise Refused(421, misdirected)
    if cross_site_refused(request.headers, core.settings.allowed_origins):
        raise Refused(403, "Origin not allowed")
    decision = authorize_request(request, core, tenant_id)
    if not decision.allowed:
        headers = {}
        if decision.status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="cfgpush", error="invalid_token"'
        elif decision.status == 503:
            headers["Retry-After"] = "5"
        raise Refused(decision.status, decision.reason, headers)
    return decision


def authorize_request(request: Any, core: Any, tenant_id: str) -> Decision:
    """The admin token (any tenant), else the token of ``?token=`` or ``Authorization``
    (both at once and different: 400) through ``cfgpush_authorize``."""
    settings = core.settings
    header_token = bearer(request)
    if settings.admin_token and matches_any(header_token, [settings.admin_token]):
        return Decision.allow(subject="admin")  # the dashboard, for any tenant
    raw = request.query_arguments.get("token")
    if raw and len(raw) > 1:
        raise Refused(400, "token must be given once")
    query_token = raw[0].decode("utf-8", "replace") if raw else None
    if query_token and header_token and query_token != header_token:
        raise Refused(400, "give the token once: in ?token= or in the Authorization header")
    return core.authorize(request, tenant_id, query_token or header_token or None)

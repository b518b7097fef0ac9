"""Every hook a cfgpush plugin can implement.

Hooks are called with keyword arguments only. Implementations run last-registered first,
so a third-party plugin's implementation runs before the built-in ones; the built-in
defaults of hooks that return one answer (``firstresult``) are ``trylast``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

from . import PROJECT_NAME

if TYPE_CHECKING:  # pragma: no cover
    import argparse

    from tornado.httputil import HTTPServerRequest

    from . import EventSource
    from .auth import Decision
    from .settings import Settings

hookspec = pluggy.HookspecMarker(PROJECT_NAME)


@hookspec
def cfgpush_register_sources(settings: Settings) -> list[EventSource]:
    """Return the event sources this plugin provides.

    Called once at start-up, after the settings are final and before the server listens.
    Every source of every plugin runs concurrently; each is supervised on its own.

    :param settings: the server's effective :class:`~tornado_cfgpush.settings.Settings`
        (``config_dir``, ``debounce_ms``, ...). Treat it as read-only.
    :returns: a list (possibly empty) of objects with a ``name`` string and an
        ``async run(emit)`` method, see :class:`tornado_cfgpush.EventSource`.
    """


@hookspec(firstresult=True)
def cfgpush_authorize(
    settings: Settings, request: HTTPServerRequest, tenant_id: str, token: str | None
) -> Decision | None:
    """Decide whether a subscriber may receive ``tenant_id``'s events (``firstresult``).

    Called for every ``/ws`` and ``/events`` request that passed the tenant-id and Origin
    checks, before the upgrade (or the stream's first byte), and again with the new token
    when a WebSocket client sends ``{"Refresh": {"token": ...}}``. Not called for requests
    bearing the admin token (``Authorization: Bearer <admin token>``): those are the
    dashboard's. Runs on the IOLoop: no blocking I/O. ``firstresult``: the first
    implementation returning something other than None decides; the built-in JWT check
    (plugin ``jwt``, :mod:`tornado_cfgpush.auth`) is ``trylast``, so yours runs first.
    When no implementation answers, the request is allowed only while no JWT key is set.

    :param settings: the server's effective :class:`~tornado_cfgpush.settings.Settings`
        (``jwt_*`` fields, ``extra``). Treat it as read-only.
    :param request: the handshake's :class:`tornado.httputil.HTTPServerRequest` (headers,
        ``remote_ip``); never log its ``uri``: it may carry the token. On a ``Refresh``, what
        the WebSocket kept of it after the upgrade: ``headers`` (read like ``HTTPHeaders``:
        ``get``, ``[]``, ``in``, ``get_list``, ``get_all``; less the handshake's own
        ``Upgrade``, ``Connection`` and ``Sec-WebSocket-*``), ``remote_ip``, ``host``,
        ``protocol``, ``method`` and ``path``; not the query string.
    :param tenant_id: the requested tenant, already valid by the tenant-id rule.
    :param token: the bearer token from ``?token=`` or ``Authorization: Bearer``, or from
        the ``Refresh`` message; None when the request carries none.
    :returns: a :class:`tornado_cfgpush.auth.Decision` (``Decision.allow(expires_at=...)``:
        the connection is closed with 1008, or the SSE stream ended, at ``expires_at``, Unix
        seconds, unless refreshed; ``Decision.deny(401 or 403, reason)``: refused with that
        status and reason), or None to leave the decision to the next implementation.
    """


@hookspec
def cfgpush_add_options(parser: argparse.ArgumentParser) -> None:
    """Add this plugin's command-line options to ``cfgpush-serve``.

    Called once by ``cfgpush-serve``, after the plugins are loaded and before the command
    line is parsed (not called when a test or an embedding program builds ``Settings``).
    Name options after the plugin (``--postgres-dsn``) and give them a ``dest``; each is also
    read from ``CFGPUSH_<OPTION>`` and from the ``--config`` file key ``<option>``, merged
    like the server's own (flag > environment > file > the option's default). The values
    land in ``settings.extra[dest]``; read them with ``settings.extra.get(dest, default)``.
    An option whose ``dest`` contains ``secret``, ``token`` or ``password`` is redacted by
    ``--print-config`` (so are passwords inside URLs).

    :param parser: the :class:`argparse.ArgumentParser` of ``cfgpush-serve``; call its
        ``add_argument`` (or ``add_argument_group``). A bad value raised from an option's
        ``type`` as ``ValueError`` ends the program with one line and exit status 2.
    :returns: nothing (the return value is ignored).
    """


@hookspec
def cfgpush_register_routes(settings: Settings) -> list[tuple]:
    """Return HTTP (or WebSocket) routes this plugin serves.

    Called once per application, when the server builds it (after
    ``cfgpush_register_sources``, before it listens). The routes come after the built-in
    ones, so a built-in path (``/ws``, ``/metrics``, ...) cannot be taken over. A handler
    reaches the running service as ``self.application.cfgpush`` (its ``sources``, ``hub``,
    ``settings``); to publish, hand the request to your own event source's ``emit``.

    :param settings: the server's effective :class:`~tornado_cfgpush.settings.Settings`,
        plugin options in ``settings.extra``. Treat it as read-only.
    :returns: a list (possibly empty) of Tornado rules: ``(pattern, handler_class)`` or
        ``(pattern, handler_class, initialize_kwargs)`` tuples, or ``tornado.web.url(...)``.
    """

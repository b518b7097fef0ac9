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
    from . import EventSource
    from .settings import Settings

hookspec = pluggy.HookspecMarker(PROJECT_NAME)


@hookspec
def cfgpush_register_sources(settings: "Settings") -> "list[EventSource]":
    """Return the event sources this plugin provides.

    Called once at start-up, after the settings are final and before the server listens.
    Every source of every plugin runs concurrently; each is supervised on its own.

    :param settings: the server's effective :class:`~tornado_cfgpush.settings.Settings`
        (``config_dir``, ``debounce_ms``, ...). Treat it as read-only.
    :returns: a list (possibly empty) of objects with a ``name`` string and an
        ``async run(emit)`` method, see :class:`tornado_cfgpush.EventSource`.
    """

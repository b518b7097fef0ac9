"""The plugin manager: built-in plugins by name, third-party plugins by entry point.

``get_plugin_manager()`` is a factory, not an import-time global (pluggy's eggsample):
each server, test or ``--plugins`` listing builds its own.
"""
from __future__ import annotations

import importlib
from importlib import metadata
from typing import Iterable

import pluggy

from . import PROJECT_NAME, __version__, hookspecs

ENTRY_POINT_GROUP = PROJECT_NAME

# Built-in plugins: name -> module. Blocked by name like any other plugin.
BUILTIN_PLUGINS: dict[str, str] = {
    "filesystem": "tornado_cfgpush.sources.filesystem",
}


class PluginError(Exception):
    """A plugin could not be loaded; the message names it."""


class CfgPushPluginManager(pluggy.PluginManager):
    def __init__(self) -> None:
        super().__init__(PROJECT_NAME)
        # name -> (distribution, version) for every registered plugin.
        self.origins: dict[str, tuple[str, str]] = {}


def _entry_points() -> list[tuple[metadata.EntryPoint, metadata.Distribution]]:
    found = []
    for dist in metadata.distributions():
        for ep in dist.entry_points:
            if ep.group == ENTRY_POINT_GROUP:
                found.append((ep, dist))
    return found


def known_plugin_names() -> set[str]:
    """Every name ``--disable-plugin`` accepts: built-ins and installed entry points."""
    return set(BUILTIN_PLUGINS) | {ep.name for ep, _ in _entry_points()}


def get_plugin_manager(disabled: Iterable[str] = (), *, load_entry_points: bool = True,
                       extra_plugins: Iterable[tuple[str, object]] = ()) -> CfgPushPluginManager:
    """Build a plugin manager.

    :param disabled: plugin names to block before anything is loaded (``--disable-plugin``).
    :param load_entry_points: load third-party plugins from the ``cfgpush`` entry-point group.
    :param extra_plugins: ``(name, plugin)`` pairs registered after the built-ins (tests, embedding).
    :raises PluginError: a plugin failed to import, clashes by name, or implements an
        unknown hook; the message names it.
    """
    pm = CfgPushPluginManager()
    pm.add_hookspecs(hookspecs)
    for name in disabled:
        pm.set_blocked(name)
    for name, module_name in BUILTIN_PLUGINS.items():
        if not pm.is_blocked(name):
            pm.register(importlib.import_module(module_name), name=name)
            pm.origins[name] = ("tornado_cfgpush", __version__)
    for name, plugin in extra_plugins:
        if not pm.is_blocked(name):
            pm.register(plugin, name=name)
            pm.origins[name] = ("(registered in process)", "")
    if load_entry_points:
        for ep, dist in _entry_points():
            if pm.is_blocked(ep.name):
                continue
            label = f"plugin {ep.name!r} (entry point {ep.value!r} of {dist.metadata['Name']} {dist.version})"
            if pm.has_plugin(ep.name):
                raise PluginError(f"{label}: the name {ep.name!r} is already taken by another plugin")
            try:
                plugin = ep.load()
            except Exception as exc:
                raise PluginError(f"{label} failed to import: {type(exc).__name__}: {exc}") from exc
            try:
                pm.register(plugin, name=ep.name)
            except Exception as exc:
                raise PluginError(f"{label} could not be registered: {exc}") from exc
            pm.origins[ep.name] = (dist.metadata["Name"], dist.version)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {pm.get_name(exc.plugin)!r}: {exc}") from exc
    return pm


def describe_plugins(pm: CfgPushPluginManager) -> list[dict]:
    """What ``cfgpush-serve --plugins`` prints: name, distribution, version, hooks."""
    described = []
    for name, plugin in sorted(pm.list_name_plugin(), key=lambda item: item[0]):
        if plugin is None:  # blocked
            continue
        dist, version = pm.origins.get(name, ("", ""))
        hooks = sorted(caller.name for caller in pm.get_hookcallers(plugin) or ())
        described.append({"name": name, "distribution": dist, "version": version, "hooks": hooks})
    return described

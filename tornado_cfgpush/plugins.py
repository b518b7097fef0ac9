"""The plugin manager: built-in plugins by name, third-party plugins by entry point.

``get_plugin_manager()`` is a factory, not an import-time global (pluggy's eggsample):
each server, test or ``--plugins`` listing builds its own.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from importlib import metadata

import pluggy

from . import PROJECT_NAME, __version__, hookspecs

ENTRY_POINT_GROUP = PROJECT_NAME

# Built-in plugins: name -> module. Blocked by name like any other plugin.
BUILTIN_PLUGINS: dict[str, str] = {
    "filesystem": "tornado_cfgpush.sources.filesystem",
    # The subscriber check (cfgpush_authorize, trylast): JWT when a key is configured.
    "jwt": "tornado_cfgpush.auth",
}


class PluginError(Exception):
    """A plugin could not be loaded; the message names it."""


class CfgPushPluginManager(pluggy.PluginManager):
    def __init__(self) -> None:
        super().__init__(PROJECT_NAME)
        # name -> (distribution, version) for every registered plugin.
        self.origins: dict[str, tuple[str, str]] = {}


def _entry_points() -> list[tuple[metadata.EntryPoint, metadata.Distribution]]:
    # metadata.entry_points() keeps one copy of each distribution (the first on sys.path).
    # Walking metadata.distributions() ourselves saw a distribution twice when its metadata
    # sits both in site-packages and on another sys.path entry (say a build's *.egg-info in
    # the working folder) and reported its plugin as clashing with itself.
    # Each is read from its distribution, so ep.dist is set (typeshed allows None for an
    # EntryPoint made by hand).
    return [(ep, ep.dist) for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.dist is not None]


def known_plugin_names() -> set[str]:
    """Every name ``--disable-plugin`` accepts: built-ins and installed entry points."""
    return set(BUILTIN_PLUGINS) | {ep.name for ep, _ in _entry_points()}


def get_plugin_manager(
    disabled: Iterable[str] = (), *, load_entry_points: bool = True, extra_plugins: Iterable[tuple[str, object]] = ()
) -> CfgPushPluginManager:
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
            # Named like an entry point's failure: a bare ImportError or pluggy error would
            # not say which plugin to disable.
            label = f"built-in plugin {name!r} ({module_name})"
            try:
                module = importlib.import_module(module_name)
            except Exception as exc:
                raise PluginError(f"{label} failed to import: {type(exc).__name__}: {exc}") from exc
            _register(pm, module, name, label)
            pm.origins[name] = ("tornado_cfgpush", __version__)
    for name, plugin in extra_plugins:
        if not pm.is_blocked(name):
            _register(pm, plugin, name, f"plugin {name!r}")
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
            _register(pm, plugin, ep.name, label)
            pm.origins[ep.name] = (dist.metadata["Name"], dist.version)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"plugin {pm.get_name(exc.plugin)!r}: {exc}") from exc
    return pm


def _register(pm: CfgPushPluginManager, plugin: object, name: str, label: str) -> None:
    try:
        pm.register(plugin, name=name)
    except Exception as exc:  # ValueError (name or object taken), PluginValidationError
        raise PluginError(f"{label} could not be registered: {exc}") from exc


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

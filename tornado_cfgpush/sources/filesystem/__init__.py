"""The default event source: a tenant's configuration is a folder (or one file) on disk.

Layout: tenant ``T`` is the folder ``<config-dir>/T/`` (recursive; ``path`` is relative to
it, ``/``-separated) or the single file ``<config-dir>/T.<ext>`` (``path`` is the file name).

In parts (docs/architecture.md):

* ``source.py``: the source as the server runs it: starts the worker process, publishes what
  it settles, keeps the record of what was published (manifests), restarts it with that record;
* ``worker.py``: the worker process: watching, reading and settling, off the server's process;
* ``watch.py``: which observer, its adjustments, and the bounded hand-over of its events;
* ``tree.py``: reading a tenant's files so that what was checked is what is read (links);
* ``names.py``: which files are configuration, of which tenant, and which cannot be announced;
* ``settle.py``: the pure state machine from "touched" to one event per real change.

Comparing checksums instead of trusting event kinds is what makes one save one event
whatever the editor does (in place, truncate and write, temp file and rename), and a save
that changes no byte (or a ``touch``) no event at all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ... import hookimpl
from .names import is_ignored_name
from .watch import POLL_INTERVAL, choose_observer_kind

if TYPE_CHECKING:  # pragma: no cover
    from .source import SOURCE_NAME, FilesystemSource

__all__ = [
    "SOURCE_NAME",
    "FilesystemSource",
    "POLL_INTERVAL",
    "choose_observer_kind",
    "is_ignored_name",
    "cfgpush_register_sources",
]


def __getattr__(name: str) -> Any:
    # The server's side (asyncio, marshmallow) loads when asked for, so that the worker
    # process, which imports this package too, starts without it.
    if name in ("FilesystemSource", "SOURCE_NAME"):
        from . import source

        return getattr(source, name)
    raise AttributeError(name)


@hookimpl
def cfgpush_register_sources(settings) -> list[FilesystemSource]:
    from ...gate import parse_schema_rule
    from .source import FilesystemSource

    return [
        FilesystemSource(
            settings.config_dir,
            settings.debounce_ms / 1000,
            canary=settings.watch_canary,
            fallback=settings.watch_fallback,
            validate=settings.validate,
            serve_content=settings.serve_content,
            max_patch_bytes=settings.max_patch_bytes,
            schemas=tuple(parse_schema_rule(rule) for rule in settings.json_schemas),
        )
    ]

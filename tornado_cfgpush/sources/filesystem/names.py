"""Which files of the config folder are configuration, and of which tenant: names only, no disk.

Tenant ``T`` is the folder ``<root>/T/`` (``path`` is relative to it, ``/``-separated) or the
single file ``<root>/T.<ext>`` (``path`` is the file name). Editors' temporary, swap, lock and
backup files are never configuration.

A file of a valid tenant whose name cannot go on the wire (bytes that are not UTF-8, control
characters, longer than the path rule allows) is ``Unpublishable``: the source cannot announce
it, and says so instead of dropping it silently (logged once, counted, ``Resync`` for that
tenant).
"""

from __future__ import annotations

import functools
import os
from typing import NamedTuple

from ...rules import path_error, tenant_id_error, wire_string_error

# Editors' temporary, swap, lock and backup files: never configuration.
_IGNORED_SUFFIXES = (
    "~",
    ".swp",
    ".swo",
    ".swx",
    ".swpx",
    ".tmp",
    ".temp",
    ".bak",
    ".orig",
    ".rej",
    ".part",
    ".crdownload",
    "___jb_tmp___",
    "___jb_old___",
    ".kate-swp",
)
_IGNORED_NAMES = {"4913"}  # vim probes whether it may create files in the folder

# A file is known by its path below the config folder, "/"-separated ("acme/ui/app.json",
# "globex.json"): unique per file. Its ``Target`` is what goes on the wire.
Key = str
Target = tuple[str, str]  # (tenant_id, path relative to the tenant)


class Unpublishable(NamedTuple):
    """A file of ``tenant_id`` whose name cannot be announced; ``shown`` is safe to log."""

    tenant_id: str
    shown: str
    reason: str


def is_ignored_name(name: str) -> bool:
    """True for names that are never configuration: dotfiles, editors' temp/backup files."""
    return (
        name.startswith(".")
        or name in _IGNORED_NAMES
        or (name.startswith("#") and name.endswith("#"))
        or name.endswith(_IGNORED_SUFFIXES)
    )


def shown(text: str, limit: int = 200) -> str:
    """A name as it can be logged: undecodable bytes and control characters escaped, cut."""
    raw = os.fsencode(text)
    safe = raw.decode("utf-8", "backslashreplace")
    safe = "".join(c if c.isprintable() else repr(c)[1:-1] for c in safe)
    return safe if len(safe) <= limit else safe[:limit] + "…"


def split(root: str, path: str) -> list[str] | None:
    """The parts of ``path`` below ``root``; None when it is ``root`` itself or outside it."""
    if not path.startswith(root + os.sep):
        return None
    return path[len(root) + 1 :].split(os.sep)


def classify_parts(parts: list[str]) -> Target | Unpublishable | str | None:
    """``(tenant_id, rel)`` for the parts of a trackable file below the config root;
    ``Unpublishable`` for a file of a valid tenant whose name cannot be announced; a string
    (the tenant name) when the first part is not a valid tenant id; None when the file is
    never configuration (ignored names, a file at the top without an extension)."""
    if len(parts) == 1:
        if is_ignored_name(parts[0]):
            return None
        stem, dot, _ = parts[0].rpartition(".")
        if not dot:
            return None
        tenant_id, rel = stem, parts[0]
        if tenant_id_error(tenant_id):
            return tenant_id
    else:
        folder = _folder(tuple(parts[:-1]))
        if folder is None or is_ignored_name(parts[-1]):
            return None
        tenant_id, valid = folder
        if not valid:
            return tenant_id
        rel = "/".join(parts[1:])
    problem = path_error(rel)
    if problem:
        # os.fsdecode keeps bytes that are not UTF-8 as lone surrogates: say it in those words.
        why = "the file name is not valid UTF-8" if wire_string_error(rel) else f"its path {problem}"
        return Unpublishable(tenant_id, shown(rel), why)
    return tenant_id, rel


@functools.lru_cache(maxsize=4096)
def _folder(parts: tuple[str, ...]) -> tuple[str, bool] | None:
    """What a folder's files are (its parts: the tenant's folder first): None when it is
    ignored (a part is an ignored name), else ``(tenant, whether it is a valid tenant id)``.
    Cached: the files of a folder come together (a start-up scan asks once per file)."""
    if any(is_ignored_name(part) for part in parts):
        return None
    return parts[0], not tenant_id_error(parts[0])


def key_of(parts: list[str]) -> Key:
    return "/".join(parts)


def classify(key: Key) -> Target | Unpublishable | str | None:
    """``classify_parts`` of a key."""
    return classify_parts(key.split("/"))

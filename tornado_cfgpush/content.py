"""Configuration content that may leave the server (issue #14): which paths, and each version
prepared once.

Off unless the operator names paths with ``--serve-content GLOB`` (values may be secrets:
events carry JSON Pointers, never values, for that reason). ``served`` is the one rule, the
validation gate's matching (``rules.path_matches``): the files API and the patches in events
both ask it.

A ``Version`` is the bytes of one announced version of a file (their SHA-256 is the event's
``checksum``), gzip-compressed once, and the headers every answer of it shares. The
``VersionCache`` keeps the most recently served versions within a byte bound, so a herd of
clients fetching one new version costs one read of the disk and one compression.

Plain: no Tornado, no asyncio.
"""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
import os
from collections import OrderedDict
from collections.abc import Iterable

from . import structured
from .patching import NotJson, canonical
from .rules import path_matches

# The largest file served: a configuration file, not a download (bigger ones answer 404, as
# a file that is not served, and are named in the log).
MAX_SERVED_BYTES = 8 * 1024 * 1024
# What the cache of prepared versions may hold, plain and compressed together.
CACHE_BYTES = 64 * 1024 * 1024
# Smaller bodies are not worth a gzip header and a CPU's attention.
GZIP_MIN_BYTES = 256

_TYPES = {
    ".json": "application/json",
    ".toml": "application/toml",
    ".yaml": "application/yaml",
    ".yml": "application/yaml",
    ".txt": "text/plain; charset=utf-8",
    ".ini": "text/plain; charset=utf-8",
    ".conf": "text/plain; charset=utf-8",
    ".properties": "text/plain; charset=utf-8",
}


def served(path: str, patterns: Iterable[str]) -> bool:
    """Whether ``path``'s content may leave the server under ``--serve-content`` ``patterns``."""
    return path_matches(path, patterns)


CONTENT_FIELDS = ("patch", "base_checksum", "document_checksum")


def keep_served(fields: dict, patterns: Iterable[str]) -> dict:
    """``fields`` of an event without the values it carries (``patch``) unless its path is
    served: the one place that keeps content from leaving for a path the operator did not name,
    whatever the source sent."""
    if any(name in fields for name in CONTENT_FIELDS) and not (
        isinstance(fields.get("path"), str) and served(fields["path"], patterns)
    ):
        for name in CONTENT_FIELDS:
            fields.pop(name, None)
    return fields


def checksum_of(data: bytes) -> str:
    """An event's ``checksum`` of ``data`` (``sha256:<hex>``)."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def content_type(path: str) -> str:
    """The Content-Type of ``path``, by its extension (``application/octet-stream`` otherwise)."""
    ext = os.path.splitext(path)[1].lower()
    if ext in _TYPES:
        return _TYPES[ext]
    guessed, _ = mimetypes.guess_type("f" + ext)
    if guessed is None:
        return "application/octet-stream"
    return guessed + "; charset=utf-8" if guessed.startswith("text/") else guessed


def etag(checksum: str) -> str:
    """The ETag of a version: its checksum, quoted (a strong validator of the file's bytes)."""
    return f'"{checksum}"'


def none_match(header: str | None, tag: str) -> bool:
    """Whether an ``If-None-Match`` header names ``tag`` (weak comparison, RFC 9110 13.1.2;
    ``*`` names any)."""
    if not header:
        return False
    for item in header.split(","):
        item = item.strip()
        if item == "*":
            return True
        if item.startswith("W/"):
            item = item[2:]
        if item == tag:
            return True
    return False


def accepts_gzip(header: str | None) -> bool:
    """Whether an ``Accept-Encoding`` header accepts gzip (``gzip;q=0`` refuses it)."""
    for item in (header or "").split(","):
        name, _, params = item.strip().partition(";")
        if name.strip().lower() in ("gzip", "x-gzip", "*"):
            q = params.strip().lower()
            if q.startswith("q="):
                try:
                    return float(q[2:]) > 0
                except ValueError:
                    return False
            return True
    return False


class ContentChanging(Exception):
    """A served file changes faster than it can be read as an announced version: retry soon."""


class ContentRefused(ValueError):
    """Content handed with an event that may not be announced: ``pointer`` (a JSON Pointer, ""
    for the whole document) and ``reason`` say where and why (the validation gate's words, or a
    checksum that is not the content's)."""

    def __init__(self, pointer: str, reason: str):
        super().__init__(f"{reason} (at {pointer!r})" if pointer else reason)
        self.pointer = pointer
        self.reason = reason


class Version:
    """One announced version of a served file: its bytes, their gzip (when worth it), its
    ETag and Content-Type. Built off the event loop (``prepare``), shared by every answer."""

    __slots__ = ("checksum", "body", "gzipped", "etag", "content_type")

    def __init__(self, path: str, checksum: str, body: bytes, gzipped: bytes | None, kind: str | None = None):
        self.checksum = checksum
        self.body = body
        self.gzipped = gzipped
        self.etag = etag(checksum)
        self.content_type = kind or content_type(path)

    @classmethod
    def prepare(cls, path: str, body: bytes, kind: str | None = None) -> Version:
        """Hash and compress ``body`` once (level 6: a configuration file compresses to a
        fifth or less in about 0.2 ms per 20 KB)."""
        gzipped = None
        if len(body) >= GZIP_MIN_BYTES:
            packed = gzip.compress(body, compresslevel=6, mtime=0)
            gzipped = packed if len(packed) < len(body) else None
        return cls(path, checksum_of(body), body, gzipped, kind)

    @property
    def size(self) -> int:
        return len(self.body) + len(self.gzipped or b"")


# The files API's second form of a structured file (``?form=document``): its parsed document
# as RFC 8785 canonical JSON, so that a page with no TOML or YAML parser holds the document its
# events' patches apply to. Its checksum is the events' ``document_checksum``.
DOCUMENT_FORM = "document"
NOT_STRUCTURED = "not_structured"  # why a file has no document, besides structured's reasons
NOT_JSON = "not_json"  # parsed, but holds what JSON cannot (TOML dates, YAML binary...)


class NoDocument(ValueError):
    """A served file with no canonical JSON document; ``reason`` is one of ``NOT_STRUCTURED``,
    ``NOT_JSON`` or structured.py's reasons (``too_large``, ``does_not_parse``,
    ``too_many_nodes``)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def document_form(path: str, raw: Version) -> Version:
    """In an executor's thread: the document form of ``raw`` (a version of ``path``), parsed
    with structured.py's bounds and written as canonical JSON, prepared like any version;
    ``NoDocument`` when there is none."""
    doc = structured.parse(path, raw.body)
    if doc is None:
        raise NoDocument(NOT_STRUCTURED)
    if isinstance(doc, structured.Unparsed):
        raise NoDocument(doc.reason)
    try:
        body = canonical(doc)
    except NotJson:
        raise NoDocument(NOT_JSON) from None
    return Version.prepare(path, body, "application/json")


class VersionCache:
    """The most recently served versions, by ``(tenant, path, checksum)``, within ``max_bytes``
    (the least recently served go first)."""

    def __init__(self, max_bytes: int = CACHE_BYTES):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[tuple[str, str, str], Version] = OrderedDict()

    def get(self, tenant_id: str, path: str, checksum: str) -> Version | None:
        key = (tenant_id, path, checksum)
        found = self._items.get(key)
        if found is not None:
            self._items.move_to_end(key)
        return found

    def put(self, tenant_id: str, path: str, version: Version, checksum: str | None = None) -> None:
        """Keep ``version`` under its own checksum, or under ``checksum`` (a document form
        under its raw version's: ``document_key``)."""
        if version.size > self.max_bytes:
            return
        key = (tenant_id, path, checksum or version.checksum)
        old = self._items.pop(key, None)
        if old is not None:
            self.bytes -= old.size
        self._items[key] = version
        self.bytes += version.size
        while self.bytes > self.max_bytes:
            _, dropped = self._items.popitem(last=False)
            self.bytes -= dropped.size

    def __len__(self) -> int:
        return len(self._items)


def document_key(checksum: str) -> str:
    """The cache key of the document form of the raw version ``checksum``."""
    return DOCUMENT_FORM + " " + checksum


class EmittedStore:
    """The content sources handed with their events (``emit(payload, content=...)``, the publish
    API): the newest version of each served path, all tenants within ``max_bytes`` (the least
    recently published go first: their files then answer 404, and clients that need them
    reload as after any fetch that fails). The filesystem source's files are read from disk
    instead; an event of a path without content drops what is kept of it."""

    def __init__(self, max_bytes: int = CACHE_BYTES):
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[tuple[str, str], Version] = OrderedDict()

    def get(self, tenant_id: str, path: str) -> Version | None:
        return self._items.get((tenant_id, path))

    def put(self, tenant_id: str, path: str, version: Version) -> None:
        self.drop(tenant_id, path)
        if version.size > self.max_bytes:
            return
        self._items[(tenant_id, path)] = version
        self.bytes += version.size
        while self.bytes > self.max_bytes:
            _, dropped = self._items.popitem(last=False)
            self.bytes -= dropped.size

    def drop(self, tenant_id: str, path: str) -> None:
        old = self._items.pop((tenant_id, path), None)
        if old is not None:
            self.bytes -= old.size

    def files(self, tenant_id: str) -> dict[str, str]:
        return {path: v.checksum for (t, path), v in self._items.items() if t == tenant_id}

    def __bool__(self) -> bool:
        return bool(self._items)

"""The validation rules every edge shares, as plain functions: no marshmallow, no Tornado.

``schemas`` wraps them in marshmallow fields; the hub, the events, the handlers and the
filesystem source's worker process use them directly, so that none of those needs the schema
library to ask "is this a tenant id, a path, an event id?". One rule, one place.
"""
from __future__ import annotations

import re
from typing import Any

TENANT_ID_MAX = 64
_TENANT_ID_CHARS = re.compile(r"[A-Za-z0-9._-]+\Z")
_TENANT_ID_FIRST = re.compile(r"[A-Za-z0-9]")
EVENT_ID_RE = re.compile(r"[0-9]{1,20}-[0-9]{1,20}\Z")
CHECKSUM_RE = re.compile(r"sha256:[0-9a-f]{64}\Z")
PATH_MAX = 1024


def tenant_id_error(value: Any) -> str | None:
    """Why ``value`` is not a valid tenant id, or None when it is.

    The single tenant-id rule: 1 to 64 characters of ``A-Z a-z 0-9 . _ -``, starting with a
    letter or digit. Tenant ids become path segments and Redis key parts, so nothing else
    (no ``/``, no ``..`` at the start, no spaces, no control or non-ASCII characters) passes.
    """
    if not isinstance(value, str):
        return "must be a string"
    if not value:
        return "must not be empty"
    if len(value) > TENANT_ID_MAX:
        return f"must be at most {TENANT_ID_MAX} characters"
    if not _TENANT_ID_FIRST.match(value):
        return "must start with a letter or digit"
    if not _TENANT_ID_CHARS.match(value):
        return "may contain only A-Z, a-z, 0-9, '.', '_' and '-'"
    return None


def is_valid_tenant_id(value: Any) -> bool:
    return tenant_id_error(value) is None


def path_error(value: str) -> str | None:
    """Why ``value`` is not a tenant-relative ``/``-separated path, or None when it is."""
    if not value:
        return "must not be empty"
    if len(value) > PATH_MAX:
        return f"must be at most {PATH_MAX} characters"
    if value.startswith("/") or "\\" in value:
        return "must be relative and '/'-separated"
    if any(ord(c) < 0x20 or c == "\x7f" for c in value):
        return "must not contain control characters"
    if any(part in ("", ".", "..") for part in value.split("/")):
        return "must not contain empty, '.' or '..' segments"
    return None


def parse_event_id(event_id: str) -> tuple[int, int]:
    """``"<epoch>-<seq>"`` as a tuple that orders events of one tenant.

    Both the embedded broker's ids and Redis stream ids have this form.
    """
    if not isinstance(event_id, str) or not EVENT_ID_RE.match(event_id):
        raise ValueError(f"not an event id: {event_id!r}")
    epoch, seq = event_id.split("-")
    return int(epoch), int(seq)

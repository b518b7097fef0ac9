"""The validation rules every edge shares, as plain functions: no marshmallow, no Tornado.

``schemas`` wraps them in marshmallow fields; the hub, the events, the handlers and the
filesystem source's worker process use them directly, so that none of those needs the schema
library to ask "is this a tenant id, a path, an event id?". One rule, one place.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from typing import Any

TENANT_ID_MAX = 64
_TENANT_ID_CHARS = re.compile(r"[A-Za-z0-9._-]+\Z")
_TENANT_ID_FIRST = re.compile(r"[A-Za-z0-9]")
EVENT_ID_RE = re.compile(r"[0-9]{1,20}-[0-9]{1,20}\Z")
CHECKSUM_RE = re.compile(r"sha256:[0-9a-f]{64}\Z")
# What Linux allows (PATH_MAX less its terminating NUL, and NAME_MAX), in bytes of UTF-8:
# every file a tenant can create can be announced.
PATH_MAX = 4095
SEGMENT_MAX = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# A JSON Pointer of ``diff`` (RFC 6901): empty, or "/"-prefixed reference tokens in which "~"
# appears only as "~0" or "~1". Any other character is allowed, control characters included:
# a JSON key may hold them ({"a\u0001b": 1} is legal JSON, so its file's diff names
# "/a\u0001b"), and the compact JSON of both transports escapes every one of them (as \u0001
# in the WebSocket text and in the SSE data line), so none can break a frame or a line.
# Refusing them only made such a file's event invalid. Lone surrogates are refused by the wire
# rule below, as in every string.
JSON_POINTER_RE = re.compile(r"(?:/(?:[^/~]|~[01])*)*\Z")
# A Python string decoded from JSON holds a code point in this range only when it was a lone
# surrogate ("\ud800" with no partner: json.loads pairs the others into one code point), or,
# from a file name that is not UTF-8, a byte os.fsdecode escaped. Neither encodes to UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")


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


# -- the wire rule --------------------------------------------------------------------------------


def wire_string_error(value: str) -> str | None:
    """Why ``value`` cannot be sent to a client, or None when it can.

    The one rule for every string that may reach the wire (a path, ``meta``, a source's name, a
    ``diff`` pointer, a client's ``Ping`` id echoed in ``Pong``): valid Unicode, that is, no
    lone surrogate. Such a string passes JSON parsing but fails when the frame is encoded to
    UTF-8, after the event was stored: so it is refused where it comes in.
    """
    if _SURROGATE.search(value):
        return "must be valid Unicode text (no lone surrogate such as \\ud800)"
    return None


def wire_value_error(value: Any) -> str | None:
    """``wire_string_error`` for every string in a JSON value (object keys too, at any depth),
    naming where the first bad one is as a JSON Pointer; None when all can be sent."""
    if isinstance(value, str):
        return wire_string_error(value)
    if not isinstance(value, (dict, list, tuple)):  # a number, a boolean, null
        return None
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:  # a loop, not recursion: hostile nesting must not exhaust the stack
        item, where = stack.pop()
        if isinstance(item, str):
            problem = wire_string_error(item)
            if problem:
                return f"the string at {where} {problem}" if where else problem
        elif isinstance(item, dict):
            for key, child in item.items():
                problem = wire_string_error(key) if isinstance(key, str) else None
                if problem:
                    return f"a key {'at ' + where + ' ' if where else ''}{problem}"
                token = str(key).replace("~", "~0").replace("/", "~1")
                stack.append((child, f"{where}/{token}"))
        elif isinstance(item, (list, tuple)):
            stack.extend((child, f"{where}/{i}") for i, child in enumerate(item))
    return None


def safe_text(value: str) -> str:
    """``value`` with each lone surrogate written as ``\\udXXX``: for messages that quote
    hostile input (a field name in an ``Error``), which must themselves reach the wire."""
    if not _SURROGATE.search(value):
        return value
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


# -- paths ----------------------------------------------------------------------------------------


def path_error(value: str) -> str | None:
    """Why ``value`` is not a tenant-relative ``/``-separated path, or None when it is.

    At most ``PATH_MAX`` bytes of UTF-8, each segment at most ``SEGMENT_MAX`` (what Linux
    allows); valid Unicode (the wire rule: a file name that is not UTF-8 arrives here with
    escaped bytes, and is refused); no control characters; no empty, ``.`` or ``..`` segment.
    """
    if not value:
        return "must not be empty"
    problem = wire_string_error(value)
    if problem:
        return problem
    encoded = value.encode("utf-8")
    if len(encoded) > PATH_MAX:
        return f"must be at most {PATH_MAX} bytes in UTF-8"
    if value.startswith("/") or "\\" in value:
        return "must be relative and '/'-separated"
    if _CONTROL.search(value):
        return "must not contain control characters"
    parts = value.split("/")
    if any(part in ("", ".", "..") for part in parts):
        return "must not contain empty, '.' or '..' segments"
    if len(encoded) > SEGMENT_MAX and any(len(part.encode("utf-8")) > SEGMENT_MAX for part in parts):
        return f"each segment must be at most {SEGMENT_MAX} bytes in UTF-8"
    return None


def parse_event_id(event_id: str) -> tuple[int, int]:
    """``"<epoch>-<seq>"`` as a tuple that orders events of one tenant.

    Both the embedded broker's ids and Redis stream ids have this form.
    """
    if not isinstance(event_id, str) or not EVENT_ID_RE.match(event_id):
        raise ValueError(f"not an event id: {event_id!r}")
    epoch, seq = event_id.split("-")
    return int(epoch), int(seq)


def path_matches(path: str, patterns: Iterable[str]) -> bool:
    """Whether a tenant-relative path matches one of ``patterns``: ``fnmatch`` on the whole path,
    ``*`` crossing ``/`` (``*.json`` is every JSON file; ``ui/*.json`` those under ``ui/``). The
    one matching rule of the path patterns of the settings (``--validate``, ``--json-schema``)."""
    return any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns)

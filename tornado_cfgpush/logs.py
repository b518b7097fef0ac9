"""Logging: text or JSON lines, each record with its tenant, connection and source.

Where a record belongs to a tenant, a connection or an event source is known from the task it
is logged in: a connection's whole life (``/ws`` and ``/events``) runs in its request's task,
and each source's ``run`` in its own supervising task. ``bind(...)`` sets those fields for
the current task (a :mod:`contextvars` copy, so they never leak into another task), and a
filter puts them on every record. A call may also name them itself with
``log.info(..., extra={"tenant": ..., "connection": ..., "source": ...})``, which wins.

``--log-format json`` writes one JSON object per line (``jq``-friendly)::

    {"time": "2026-11-27T08:00:00.123Z", "level": "INFO", "logger": "cfgpush.subscription",
     "message": "ws-3 subscribed: tenant acme from 127.0.0.1", "tenant": "acme", "connection": "ws-3"}

``tenant``, ``connection`` and ``source`` appear only where they apply; ``exception`` carries
a traceback.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Any

FIELDS = ("tenant", "connection", "source")
FORMATS = ("text", "json")
_context: dict[str, contextvars.ContextVar[str | None]] = {
    name: contextvars.ContextVar(f"cfgpush_log_{name}", default=None) for name in FIELDS
}
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def bind(**fields: str | None) -> None:
    """Set ``tenant``, ``connection`` and/or ``source`` for the rest of the current task."""
    for name, value in fields.items():
        _context[name].set(value)


class ContextFilter(logging.Filter):
    """Puts ``tenant``, ``connection`` and ``source`` on every record (None where unknown)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _context.items():
            if getattr(record, name, None) is None:
                setattr(record, name, var.get())
        return True


class TextFormatter(logging.Formatter):
    """The classic line, with ``tenant=... connection=... source=...`` appended where known."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        known = [f"{name}={getattr(record, name)}" for name in FIELDS if getattr(record, name, None) is not None]
        if not known:
            return line
        head, sep, rest = line.partition("\n")  # a traceback stays below the first line
        return f"{head} [{' '.join(known)}]{sep}{rest}"


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


def configure(level: str, log_format: str = "text", stream: Any = None) -> logging.Handler:
    """Send every record to ``stream`` (stderr) in ``log_format``; replaces earlier handlers."""
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {log_format!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)
    return handler

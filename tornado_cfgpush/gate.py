"""The validation gate: configuration that does not parse, or breaks its JSON Schema, is never
announced (issue #16).

``--validate GLOB``: files whose tenant-relative path matches must parse (JSON, TOML or YAML,
by extension; within structured.py's bounds) before a change of them is announced.
``--json-schema GLOB=FILE``: they must also satisfy that JSON Schema (draft 2020-12, with the
``jsonschema`` library: ``pip install 'tornado_cfgpush[schema]'``). A version that fails is
refused: the previous good one stays current (what clients hold, and what manifests list), the
failure is reported once with a JSON Pointer and the reason, and the next good version is
announced as a change from the last good one.

Patterns match the whole path relative to the tenant with ``fnmatch`` (``*`` crosses ``/``:
``*.json`` is every JSON file; ``ui/*.json`` those under ``ui/``): ``rules.path_matches``.

Plain: no Tornado, no asyncio. The filesystem source's worker process runs it where it reads
files; a schema file that changes is loaded again (a bad one is logged and the previous kept).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any, NamedTuple

from . import structured
from .rules import path_matches

SCHEMA_MAX_BYTES = 1024 * 1024
REASON_MAX = 300  # characters of a reason kept: what a log line and the status API can carry


class Failure(NamedTuple):
    """Why a version was refused: where (a JSON Pointer, "" for the whole document) and why."""

    pointer: str
    reason: str


class SchemaError(ValueError):
    """A schema file that cannot be used; the message names the file and the problem."""


def load_schema(path: str) -> Any:
    """A validator for the JSON Schema in ``path``, or ``SchemaError``."""
    try:
        import jsonschema
    except ImportError:
        raise SchemaError("--json-schema needs jsonschema: pip install 'tornado_cfgpush[schema]'") from None
    try:
        with open(path, "rb") as f:
            data = f.read(SCHEMA_MAX_BYTES + 1)
    except OSError as exc:
        raise SchemaError(f"cannot read the JSON Schema {path!r}: {exc.strerror or exc}") from None
    if len(data) > SCHEMA_MAX_BYTES:
        raise SchemaError(f"the JSON Schema {path!r} is over {SCHEMA_MAX_BYTES} bytes")
    try:
        schema = json.loads(data)
    except ValueError as exc:
        raise SchemaError(f"the JSON Schema {path!r} is not JSON: {exc}") from None
    validator_class = jsonschema.Draft202012Validator
    try:
        validator_class.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise SchemaError(f"the JSON Schema {path!r} is not a valid schema: {exc.message}") from None
    return validator_class(schema)


def parse_schema_rule(text: str) -> tuple[str, str]:
    """``GLOB=FILE`` as (glob, file); ``ValueError`` naming the problem."""
    glob, sep, path = text.partition("=")
    if not sep or not glob.strip() or not path.strip():
        raise ValueError(f"--json-schema must be GLOB=FILE (for example 'ui/*.json=schemas/ui.json'), not {text!r}")
    return glob.strip(), path.strip()


class Gate:
    """The rules of one server: which paths must parse, which must satisfy which schema."""

    def __init__(self, validate: Sequence[str] = (), schemas: Sequence[tuple[str, str]] = ()):
        self.validate = tuple(validate)
        self.schema_rules = tuple(schemas)
        self._validators: dict[str, Any] = {}
        self._stamps: dict[str, tuple[int, int] | None] = {}
        for _, path in self.schema_rules:  # SchemaError at start: the caller says it in one line
            self._validators[path] = load_schema(path)
            self._stamps[path] = _stamp(path)

    def __bool__(self) -> bool:
        return bool(self.validate or self.schema_rules)

    def applies(self, path: str) -> bool:
        return structured.parser_for(path) is not None and (
            path_matches(path, self.validate) or any(path_matches(path, (glob,)) for glob, _ in self.schema_rules)
        )

    def check(self, path: str, data: bytes) -> Failure | None:
        """Whether a version of ``path`` may be announced: None, or the ``Failure`` that refuses it."""
        if not self.applies(path):
            return None
        return self.judge(path, structured.parse(path, data))

    def judge(self, path: str, doc: Any) -> Failure | None:
        """``check`` of a version already parsed (a document, or the ``Unparsed`` it is)."""
        if isinstance(doc, structured.Unparsed):
            return Failure("", _unparsed_reason(path, doc))
        for glob, schema_path in self.schema_rules:
            if path_matches(path, (glob,)):
                validator = self._validators.get(schema_path)
                if validator is None:
                    continue
                error = next(iter(sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))), None)
                if error is not None:
                    pointer = "".join("/" + structured.escape(str(p)) for p in error.absolute_path)
                    return Failure(pointer, _cut(f"{error.message} (schema {os.path.basename(schema_path)})"))
        return None

    def reload(self) -> list[str]:
        """Load again the schema files that changed; returns what went wrong (the previous
        schema of a file that fails stays in use)."""
        problems = []
        for path, stamp in list(self._stamps.items()):
            now = _stamp(path)
            if now == stamp:
                continue
            self._stamps[path] = now
            try:
                self._validators[path] = load_schema(path)
            except SchemaError as exc:
                problems.append(f"{exc}; keeping the previous one")
        return problems


def _stamp(path: str) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size


def _unparsed_reason(path: str, doc: structured.Unparsed) -> str:
    kind = os.path.splitext(path)[1].lstrip(".").upper() or "structured"
    if doc.reason == structured.DOES_NOT_PARSE:
        return _cut(f"does not parse as {kind}: {doc.detail}" if doc.detail else f"does not parse as {kind}")
    if doc.reason == structured.TOO_LARGE:
        return "larger than the gate parses (JSON and TOML 1 MiB, YAML 256 KiB)"
    return f"more than {structured.MAX_NODES} values (YAML aliases counted as expanded)"


def _cut(text: str) -> str:
    return text if len(text) <= REASON_MAX else text[: REASON_MAX - 1] + "…"

"""marshmallow schemas: the one place where outside input is judged.

* the tenant id rule (docs/protocol.md section 1), used by every edge;
* ``ConfigChangedSchema``: what a source's ``emit`` and the publish API accept;
* ``ClientMessageSchema``: what a client may send over ``/ws``.

Unknown fields are refused everywhere (marshmallow's default ``RAISE``; set again on every
``Nested``, where the default does not reach). Every string field that can reach the wire
holds to the wire rule (``rules.wire_string_error``: valid Unicode, no lone surrogate), so
nothing accepted here can fail to encode later, after it was stored.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)

# The rules themselves live in ``rules`` (no marshmallow there); re-exported for plugins that
# import them from here (plugins/cfgpush-webhook does).
from .rules import (  # noqa: F401
    CHECKSUM_RE,
    EVENT_ID_RE,
    JSON_POINTER_RE,
    PATH_MAX,
    SEGMENT_MAX,
    TENANT_ID_MAX,
    is_valid_tenant_id,
    path_error,
    safe_text,
    tenant_id_error,
    wire_string_error,
    wire_value_error,
)

CHANGE_TYPES = ("created", "modified", "deleted", "moved")
META_MAX_BYTES = 4096
# json.loads raises RecursionError, not ValueError, past about a thousand nested levels: a
# 4 KiB client frame or a 64 KiB body can nest that deep.
TOO_DEEP = "nested too deeply"


class WireString(fields.String):
    """A string that may reach the wire: the wire rule (valid Unicode, no lone surrogate)."""

    def _deserialize(self, value, attr, data, **kwargs):
        value = super()._deserialize(value, attr, data, **kwargs)
        problem = wire_string_error(value)
        if problem:
            raise ValidationError(problem)
        return value


class WireJson(fields.Raw):
    """Any JSON value whose strings (object keys included, at any depth) hold to the wire rule."""

    def _deserialize(self, value, attr, data, **kwargs):
        problem = wire_value_error(value)
        if problem:
            raise ValidationError(problem)
        return value


class TenantId(fields.String):
    """A string field holding to the tenant-id rule."""

    def _deserialize(self, value, attr, data, **kwargs):
        problem = tenant_id_error(value)
        if problem:
            raise ValidationError(f"tenant_id {problem}.")
        return value


class RelativePath(fields.String):
    """``rules.path_error``, which holds to the wire rule itself (the filesystem source calls it
    without marshmallow)."""

    def _deserialize(self, value, attr, data, **kwargs):
        value = super()._deserialize(value, attr, data, **kwargs)
        problem = path_error(value)
        if problem:
            raise ValidationError(f"path {problem}.")
        return value


class EventId(fields.String):
    def _deserialize(self, value, attr, data, **kwargs):
        value = super()._deserialize(value, attr, data, **kwargs)
        if not EVENT_ID_RE.match(value):
            raise ValidationError("event_id must look like '<digits>-<digits>'.")
        return value


class JsonScalar(fields.Raw):
    """A JSON scalar: string (at most 128 characters, the wire rule), number, boolean or null."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str) and len(value) <= 128:
            problem = wire_string_error(value)
            if problem:
                raise ValidationError(problem)
            return value
        if value is None or isinstance(value, (bool, int, float)):
            return value
        raise ValidationError("must be a JSON scalar (string of at most 128 characters, number, boolean or null).")


def _json_pointer_list() -> fields.List:
    # rules.JSON_POINTER_RE says why control characters are allowed in a pointer.
    return fields.List(
        WireString(validate=validate.Regexp(JSON_POINTER_RE, error="must be a JSON Pointer (RFC 6901).")),
        load_default=list,
        validate=validate.Length(max=1000),
    )


class DiffSchema(Schema):
    """What changed in a structured file, as JSON Pointers (RFC 6901), never values."""

    added = _json_pointer_list()
    removed = _json_pointer_list()
    changed = _json_pointer_list()


PATCH_OPS = ("add", "remove", "replace", "move", "copy", "test")
PATCH_MAX_OPS = 10_000


def _pointer(**kwargs: Any) -> WireString:
    return WireString(validate=validate.Regexp(JSON_POINTER_RE, error="must be a JSON Pointer (RFC 6901)."), **kwargs)


class PatchOperationSchema(Schema):
    """One RFC 6902 operation: values are configuration (only ever sent for paths the operator
    serves, ``--serve-content``), so every string in them holds to the wire rule."""

    op = fields.String(
        required=True, validate=validate.OneOf(PATCH_OPS, error="must be one of: " + ", ".join(PATCH_OPS) + ".")
    )
    path = _pointer(required=True)
    value = WireJson(allow_none=True)
    from_ = _pointer(data_key="from")

    @validates_schema(pass_original=True)
    def _operands(self, data, original, **kwargs):
        kind = data.get("op")
        if kind in ("add", "replace", "test") and not (isinstance(original, dict) and "value" in original):
            raise ValidationError(f"{kind} needs a value.", "value")
        if kind in ("move", "copy") and "from_" not in data:
            raise ValidationError(f"{kind} needs from.", "from")

    @post_load
    def _named(self, data, **kwargs):
        if "from_" in data:
            data["from"] = data.pop("from_")
        return data


class ConfigChangedSchema(Schema):
    """The inside of ``ConfigChanged`` without ``event_id``: what ``emit`` accepts."""

    tenant_id = TenantId(required=True)
    change_type = fields.String(
        required=True,
        validate=validate.OneOf(CHANGE_TYPES, error="must be one of: " + ", ".join(CHANGE_TYPES) + "."),
    )
    path = RelativePath(allow_none=True)
    checksum = fields.String(
        allow_none=True,
        validate=validate.Regexp(CHECKSUM_RE, error="must be 'sha256:' and 64 lowercase hex digits."),
    )
    timestamp = fields.AwareDateTime(format="iso")
    source = WireString(validate=validate.Length(min=1, max=64))
    meta = fields.Dict(keys=WireString(), values=WireJson(allow_none=True))  # any JSON, null too
    diff = fields.Nested(DiffSchema, unknown=RAISE)
    # Served files only (--serve-content; docs/protocol.md, Additions): the change as an
    # RFC 6902 patch from the version ``base_checksum`` names, and the SHA-256 of the new
    # document's RFC 8785 canonical JSON. All three or none.
    patch = fields.List(fields.Nested(PatchOperationSchema, unknown=RAISE), validate=validate.Length(max=PATCH_MAX_OPS))
    base_checksum = fields.String(
        validate=validate.Regexp(CHECKSUM_RE, error="must be 'sha256:' and 64 lowercase hex digits.")
    )
    document_checksum = fields.String(
        validate=validate.Regexp(CHECKSUM_RE, error="must be 'sha256:' and 64 lowercase hex digits.")
    )

    @validates_schema
    def _consistent(self, data, **kwargs):
        if data.get("change_type") == "deleted" and data.get("checksum") is not None:
            raise ValidationError("a deleted file has no checksum (null).", "checksum")
        if data.get("change_type") == "moved" and not data.get("path"):
            raise ValidationError("a moved event needs the new path.", "path")
        if "timestamp" in data:
            try:  # year 1 with a positive offset is before year 1 in UTC
                data["timestamp"].astimezone(UTC)
            except (OverflowError, ValueError):
                raise ValidationError("timestamp is out of range.", "timestamp") from None
        given = [name for name in ("patch", "base_checksum", "document_checksum") if name in data]
        if given and len(given) != 3:
            raise ValidationError("patch, base_checksum and document_checksum go together.", given[0])
        if given and data.get("change_type") != "modified":
            raise ValidationError("only a modified event carries a patch.", "patch")
        if "meta" in data:
            try:
                encoded = json.dumps(data["meta"], allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise ValidationError(f"meta must be JSON-serialisable ({exc}).", "meta") from None
            except RecursionError:
                raise ValidationError(f"meta is {TOO_DEEP}.", "meta") from None
            if len(encoded) > META_MAX_BYTES:
                raise ValidationError(f"meta must encode to at most {META_MAX_BYTES} bytes.", "meta")

    @post_load
    def _normalise(self, data, **kwargs):
        when = data.get("timestamp") or datetime.now(UTC)
        data["timestamp"] = format_timestamp(when)
        if data["change_type"] == "deleted":
            data["checksum"] = None
        return data


def format_timestamp(when: datetime) -> str:
    """UTC, ISO 8601, millisecond precision, ``Z`` suffix (docs/protocol.md's example form)."""
    when = when.astimezone(UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


class PingSchema(Schema):
    id = JsonScalar(allow_none=True)


# Characters of an Ack's ``error``: a short reason (an exception's message), never a report.
ACK_ERROR_MAX = 200


class AckSchema(Schema):
    """``{"event_id": ...}``: applied up to that event; with ``error``: could not apply it."""

    event_id = EventId(required=True)
    error = WireString(validate=validate.Length(min=1, max=ACK_ERROR_MAX))


class RefreshSchema(Schema):
    """A newer token for the same tenant, before the current one expires (tornado_cfgpush.auth)."""

    token = WireString(required=True, validate=validate.Length(min=1, max=16 * 1024))


class ClientMessageSchema(Schema):
    """A client frame, externally tagged: exactly one of ``Ping``, ``Ack`` or ``Refresh``."""

    Ping = fields.Nested(PingSchema, unknown=RAISE, allow_none=True)
    Ack = fields.Nested(AckSchema, unknown=RAISE)
    Refresh = fields.Nested(RefreshSchema, unknown=RAISE)

    @validates_schema(pass_original=True)
    def _exactly_one(self, data, original, **kwargs):
        if not isinstance(original, dict) or len(original) != 1:
            raise ValidationError("expected exactly one message type: Ping, Ack or Refresh.")


config_changed_schema = ConfigChangedSchema()
client_message_schema = ClientMessageSchema()


def parse_client_message(text: str) -> tuple[str, dict]:
    """Parse one client text frame into ``(type, body)``.

    ``"Ping"`` (JSON string) and bare ``Ping`` become ``("Ping", {})``. Raises
    ``ValidationError`` with a message fit to send back in an ``Error``.
    """
    if text == "Ping":
        return "Ping", {}
    try:
        message = json.loads(text)
    except ValueError:
        raise ValidationError('not JSON: expected "Ping", {"Ping": {...}} or {"Ack": {...}}.') from None
    except RecursionError:
        raise ValidationError(f"the message is {TOO_DEEP}.") from None
    if message == "Ping":
        return "Ping", {}
    if not isinstance(message, dict):
        raise ValidationError('expected "Ping", {"Ping": {...}} or {"Ack": {...}}.')
    loaded = client_message_schema.load(message)
    ((kind, body),) = loaded.items()
    return kind, body or {}


def flatten_messages(messages: Any) -> str:
    """One line from marshmallow's nested ``messages``, for an ``Error`` or a log line.

    Field names come from the input ({"\ud800": 1} is "\ud800: Unknown field."): written so
    that the line itself holds to the wire rule.
    """
    if isinstance(messages, dict):
        parts = []
        for key, value in messages.items():
            inner = flatten_messages(value)
            parts.append(inner if key == "_schema" else f"{safe_text(str(key))}: {inner}")
        return "; ".join(parts)
    if isinstance(messages, list):
        return " ".join(flatten_messages(m) for m in messages)
    return safe_text(str(messages))


def wire_safe_messages(messages: Any) -> Any:
    """marshmallow's nested ``messages`` as they are, but with every field name and message
    holding to the wire rule: for a JSON answer that names hostile fields."""
    if isinstance(messages, dict):
        return {safe_text(str(key)): wire_safe_messages(value) for key, value in messages.items()}
    if isinstance(messages, list):
        return [wire_safe_messages(m) for m in messages]
    return safe_text(messages) if isinstance(messages, str) else messages

"""JSON Patch (RFC 6902) and canonical JSON (RFC 8785) for the content of served files (issue #14).

The server makes a patch from a file's previous document to its new one (``make_patch``: add,
remove and replace operations only) and the SHA-256 of the new document's canonical JSON
(``document_checksum``); a client that holds the previous version applies the patch
(``apply_patch``: every RFC 6902 operation) and checks what it got against that checksum.
``cfgpush.js`` does the same in a page (``canonicalJson``, ``applyPatch``), so both sides must
agree to the byte:

* RFC 8785 (JCS): object members sorted by their keys' UTF-16 code units, no whitespace,
  strings as ECMAScript's ``JSON.stringify`` writes them (``\\b \\t \\n \\f \\r \\" \\\\``, other
  control characters as ``\\u00xx``, everything else as itself, in UTF-8), numbers as
  ECMAScript's ``Number.prototype.toString`` writes the IEEE 754 double they are (``1.0`` and
  ``1`` are ``1``; ``1e21`` is ``1e+21``; ``0.000001`` is ``0.000001``, ``1e-7`` is ``1e-7``).
* Supported values: objects with string keys, arrays, strings, booleans, null, integers and
  finite floats. An integer beyond 2**53 is written as the double a browser reads it as (its
  precision lost on both sides alike). NaN, infinities, strings with lone surrogates, and
  whatever is not JSON (TOML dates and times, YAML's binary, sets or non-string keys) make a
  document ``NotJson``: its events carry no patch, and clients fetch.

Plain: no Tornado, no asyncio, no marshmallow (the filesystem worker imports it).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from typing import Any


class NotJson(ValueError):
    """A document that is not a JSON value canonical JSON can write (the reason says what)."""


class PatchFailed(ValueError):
    """A patch that does not apply to the document (a path that is missing, a failed test)."""


# -- canonical JSON (RFC 8785) -------------------------------------------------------------------


def canonical(doc: Any) -> bytes:
    """The RFC 8785 canonical JSON of ``doc``, UTF-8; ``NotJson`` for what it cannot write."""
    out: list[str] = []
    _write(doc, out, 0)
    try:
        return "".join(out).encode("utf-8")
    except UnicodeEncodeError:
        raise NotJson("a string holds a lone surrogate") from None


def document_checksum(doc: Any) -> str:
    """``sha256:<hex>`` of ``canonical(doc)``: what an event's ``document_checksum`` is."""
    return "sha256:" + hashlib.sha256(canonical(doc)).hexdigest()


_MAX_DEPTH = 512


def _write(value: Any, out: list[str], depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise NotJson("nested too deeply")
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, (int, float)):
        out.append(es_number(value))
    elif isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise NotJson(f"an object key is not a string ({type(key).__name__})")
        try:
            keys = sorted(value, key=lambda k: k.encode("utf-16-be"))
        except UnicodeEncodeError:
            raise NotJson("a key holds a lone surrogate") from None
        out.append("{")
        for n, key in enumerate(keys):
            if n:
                out.append(",")
            out.append(_string(key))
            out.append(":")
            _write(value[key], out, depth + 1)
        out.append("}")
    elif isinstance(value, (list, tuple)):
        out.append("[")
        for n, item in enumerate(value):
            if n:
                out.append(",")
            _write(item, out, depth + 1)
        out.append("]")
    else:
        raise NotJson(f"a value is not JSON ({type(value).__name__})")


_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _string(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif ch < " ":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def es_number(value: int | float) -> str:
    """``value`` as ECMAScript's Number::toString writes the double it is (RFC 8785 3.2.2.3)."""
    try:
        x = float(value)
    except OverflowError:
        raise NotJson("an integer beyond a double's range") from None
    if not math.isfinite(x):
        raise NotJson("NaN or an infinity")
    if x == 0:
        return "0"  # -0 too
    sign = "-" if x < 0 else ""
    # repr gives the shortest digits that read back as x: the digits ECMAScript picks too.
    mantissa, _, exp = repr(abs(x)).partition("e")
    whole, _, frac = mantissa.partition(".")
    digits = (whole + frac).lstrip("0")
    # value = 0.digits * 10**n
    n = len(whole) + (int(exp) if exp else 0)
    if whole == "0":  # 0.000123: the leading zeros of frac move the point
        n = int(exp) if exp else 0
        n -= len(frac) - len(frac.lstrip("0"))
    digits = digits.rstrip("0") or "0"
    k = len(digits)
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * (-n) + digits
    e = n - 1
    exponent = ("+" if e >= 0 else "-") + str(abs(e))
    if k == 1:
        return sign + digits + "e" + exponent
    return sign + digits[0] + "." + digits[1:] + "e" + exponent


# -- making a patch ---------------------------------------------------------------------------------


def escape(key: str) -> str:
    """A key as a JSON Pointer segment (RFC 6901: ``~`` -> ``~0``, ``/`` -> ``~1``)."""
    return key.replace("~", "~0").replace("/", "~1")


def make_patch(old: Any, new: Any) -> list[dict[str, Any]]:
    """An RFC 6902 patch taking ``old`` to ``new`` (both JSON values): members removed, added
    and replaced, recursively; an array whose length changed is replaced whole unless only
    its end changed (items appended or removed there)."""
    ops: list[dict[str, Any]] = []
    _diff(old, new, "", ops)
    return ops


def _diff(old: Any, new: Any, where: str, ops: list[dict[str, Any]]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in old:
            if key not in new:
                ops.append({"op": "remove", "path": f"{where}/{escape(key)}"})
        for key, value in new.items():
            if key not in old:
                ops.append({"op": "add", "path": f"{where}/{escape(key)}", "value": value})
            else:
                _diff(old[key], value, f"{where}/{escape(key)}", ops)
        return
    if isinstance(old, list) and isinstance(new, list):
        common = min(len(old), len(new))
        if common or not (old or new):
            for i in range(common):
                _diff(old[i], new[i], f"{where}/{i}", ops)
            for i in range(len(old) - 1, common - 1, -1):  # from the end: indexes stay valid
                ops.append({"op": "remove", "path": f"{where}/{i}"})
            for i in range(common, len(new)):
                ops.append({"op": "add", "path": f"{where}/{i}", "value": new[i]})
            return
    # 1 == 1.0 == True in Python; in JSON true is not 1: the types must match too.
    if type(old) is not type(new) or old != new:
        ops.append({"op": "replace", "path": where, "value": new})


# -- applying a patch -------------------------------------------------------------------------------


def _segments(pointer: str) -> list[str]:
    if pointer == "":
        return []
    if not pointer.startswith("/"):
        raise PatchFailed(f"{pointer!r} is not a JSON Pointer")
    return [s.replace("~1", "/").replace("~0", "~") for s in pointer[1:].split("/")]


def _index(container: list[Any], segment: str, *, adding: bool) -> int:
    if segment == "-" and adding:
        return len(container)
    if not segment.isdigit() or (segment != "0" and segment.startswith("0")):
        raise PatchFailed(f"{segment!r} is not an array index")
    i = int(segment)
    if i > len(container) or (i == len(container) and not adding):
        raise PatchFailed(f"index {i} is out of range")
    return i


def _parent(doc: Any, pointer: str) -> tuple[Any, str]:
    parts = _segments(pointer)
    if not parts:
        raise PatchFailed("the whole document has no parent")
    target = doc
    for segment in parts[:-1]:
        target = _get_child(target, segment)
    return target, parts[-1]


def _get_child(target: Any, segment: str) -> Any:
    if isinstance(target, dict):
        if segment not in target:
            raise PatchFailed(f"no member {segment!r}")
        return target[segment]
    if isinstance(target, list):
        return target[_index(target, segment, adding=False)]
    raise PatchFailed(f"{segment!r} is below a value that is not a container")


def _get(doc: Any, pointer: str) -> Any:
    target = doc
    for segment in _segments(pointer):
        target = _get_child(target, segment)
    return target


def _remove(doc: Any, pointer: str) -> Any:
    parent, last = _parent(doc, pointer)
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchFailed(f"no member {last!r} to remove")
        return parent.pop(last)
    if isinstance(parent, list):
        return parent.pop(_index(parent, last, adding=False))
    raise PatchFailed("remove below a value that is not a container")


def _add(doc: Any, pointer: str, value: Any) -> Any:
    if pointer == "":
        return value
    parent, last = _parent(doc, pointer)
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, adding=True), value)
    else:
        raise PatchFailed("add below a value that is not a container")
    return doc


def apply_patch(doc: Any, patch: list[dict[str, Any]]) -> Any:
    """``doc`` with ``patch`` applied (RFC 6902: add, remove, replace, move, copy, test), as a
    new value (``doc`` is left as it was); ``PatchFailed`` when an operation does not apply."""
    doc = copy.deepcopy(doc)
    for op in patch:
        if not isinstance(op, dict) or not isinstance(op.get("path"), str):
            raise PatchFailed(f"not a patch operation: {op!r}")
        kind, path = op.get("op"), op["path"]
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op["value"]))
        elif kind == "remove":
            _remove(doc, path)
        elif kind == "replace":
            if path == "":
                doc = copy.deepcopy(op["value"])
            else:
                _get(doc, path)  # it must exist
                parent, last = _parent(doc, path)
                value = copy.deepcopy(op["value"])
                if isinstance(parent, dict):
                    parent[last] = value
                else:
                    parent[_index(parent, last, adding=False)] = value
        elif kind in ("move", "copy"):
            source = op.get("from")
            if not isinstance(source, str):
                raise PatchFailed(f"{kind} needs 'from'")
            if kind == "move" and (path == source or path.startswith(source + "/")):
                if path != source:
                    raise PatchFailed("cannot move a value into itself")
                continue
            value = _remove(doc, source) if kind == "move" else copy.deepcopy(_get(doc, source))
            doc = _add(doc, path, value)
        elif kind == "test":
            if canonical(_get(doc, path)) != canonical(op.get("value")):
                raise PatchFailed(f"test failed at {path!r}")
        else:
            raise PatchFailed(f"unknown operation {kind!r}")
    return doc


# Why an event of a served file carries no patch (meta.patch_skipped).
PATCH_TOO_LARGE = "too_large"  # over --max-patch-bytes
PATCH_NOT_JSON = "not_json"  # a value canonical JSON cannot write


def patch_between(old: Any, new: Any, max_bytes: int) -> tuple[list[dict[str, Any]], str] | str:
    """What a served file's event carries, made once for every client: ``(patch,
    document_checksum)`` from ``old`` to ``new``, or why there is none (``PATCH_TOO_LARGE``
    past ``max_bytes``, ``PATCH_NOT_JSON``)."""
    try:
        checksum = document_checksum(new)
    except NotJson:
        return PATCH_NOT_JSON
    patch = make_patch(old, new)
    if patch_bytes(patch) > max_bytes:
        return PATCH_TOO_LARGE
    return patch, checksum


def patch_bytes(patch: list[dict[str, Any]]) -> int:
    """The size of ``patch`` as an event carries it (compact JSON)."""
    return len(json.dumps(patch, separators=(",", ":"), ensure_ascii=False).encode("utf-8", "surrogatepass"))

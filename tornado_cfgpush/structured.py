"""What changed in a structured file (JSON, TOML, YAML), as JSON Pointers, never values.

PROTOCOL.md: ``"diff": {"added": [...], "removed": [...], "changed": [...]}`` with RFC 6901
pointers. Values may be secrets, so only their locations leave the server. Lists are
compared by index; a value whose type changes is ``changed`` at its own pointer.
"""
from __future__ import annotations

import json
import tomllib
from typing import Any, Callable

try:  # YAML only when PyYAML is installed
    import yaml
except ImportError:  # pragma: no cover - exercised where PyYAML is absent
    yaml = None

# Files larger than this are not parsed (and their previous content not kept).
MAX_PARSED_BYTES = 1024 * 1024
# A diff naming more pointers than this is cut, with "/" standing for "and more".
MAX_POINTERS = 1000


def _load_yaml(data: bytes) -> Any:
    return yaml.safe_load(data)


def parser_for(path: str) -> Callable[[bytes], Any] | None:
    """The parser for ``path``'s extension, or None when it is not a structured file."""
    lower = path.lower()
    if lower.endswith(".json"):
        return json.loads
    if lower.endswith(".toml"):
        return lambda data: tomllib.loads(data.decode("utf-8"))
    if lower.endswith((".yaml", ".yml")) and yaml is not None:
        return _load_yaml
    return None


def parse(path: str, data: bytes) -> tuple[bool, Any]:
    """``(True, document)`` when ``path`` is structured and ``data`` parses, else ``(False, None)``."""
    parser = parser_for(path)
    if parser is None or len(data) > MAX_PARSED_BYTES:
        return False, None
    try:
        return True, parser(data)
    except Exception:  # any parse error: the event still goes out, without a diff
        return False, None


def escape(token: str) -> str:
    """One reference token of a JSON Pointer (RFC 6901 section 3)."""
    return token.replace("~", "~0").replace("/", "~1")


def diff(old: Any, new: Any) -> dict[str, list[str]]:
    """Pointers added, removed and changed between two parsed documents."""
    out: dict[str, list[str]] = {"added": [], "removed": [], "changed": []}
    _walk(old, new, "", out)
    for key, pointers in out.items():
        if len(pointers) > MAX_POINTERS:
            out[key] = pointers[:MAX_POINTERS]
    return out


def _walk(old: Any, new: Any, pointer: str, out: dict[str, list[str]]) -> None:
    if isinstance(old, dict) and isinstance(new, dict):
        for key in old:
            if key not in new:
                out["removed"].append(f"{pointer}/{escape(str(key))}")
        for key in new:
            child = f"{pointer}/{escape(str(key))}"
            if key not in old:
                out["added"].append(child)
            else:
                _walk(old[key], new[key], child, out)
    elif isinstance(old, list) and isinstance(new, list):
        for i in range(len(new), len(old)):
            out["removed"].append(f"{pointer}/{i}")
        for i in range(len(old), len(new)):
            out["added"].append(f"{pointer}/{i}")
        for i in range(min(len(old), len(new))):
            _walk(old[i], new[i], f"{pointer}/{i}", out)
    elif type(old) is not type(new) or old != new:
        out["changed"].append(pointer)

"""What changed in a structured file (JSON, TOML, YAML), as JSON Pointers, never values.

docs/protocol.md: ``"diff": {"added": [...], "removed": [...], "changed": [...]}`` with RFC 6901
pointers. Values may be secrets, so only their locations leave the server. Lists are
compared by index; a value whose type changes is ``changed`` at its own pointer.

A tenant's files are hostile input (SECURITY.md): parsing is bounded so that no file can hold
the watcher for long or blow up in memory.

* ``MAX_PARSED_BYTES`` (1 MiB) for JSON and TOML, ``MAX_YAML_BYTES`` (256 KiB) for YAML, whose
  parser costs about 3 µs per byte even with libyaml; larger files get their event without a diff.
* ``MAX_NODES`` (100 000) values per document, YAML aliases counted as expanded (a 354-byte
  file of nested aliases expands to 4^11 leaves): past it, no diff. The count is taken on the
  composed YAML node graph, before anything is constructed, so a bomb is never built.
* A recursive YAML alias (``&a [*a]``) does not parse; walking a document never recurses, so
  nesting depth costs no stack.

Past a bound the event still goes out, without ``diff``, and ``parse`` says why (``Unparsed``).
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable, Iterator
from typing import Any

try:  # YAML only when PyYAML is installed
    import yaml
except ImportError:  # pragma: no cover - exercised where PyYAML is absent
    yaml = None

MAX_PARSED_BYTES = 1024 * 1024
MAX_YAML_BYTES = 256 * 1024
MAX_NODES = 100_000
# A diff naming more pointers than this per kind is cut to this many.
MAX_POINTERS = 1000

# Why a structured file has no parsed document (the event's ``meta.diff_skipped``).
TOO_LARGE = "too_large"
DOES_NOT_PARSE = "does_not_parse"
TOO_MANY_NODES = "too_many_nodes"

_YAML_LOADER: Any = getattr(yaml, "CSafeLoader", None) or getattr(yaml, "SafeLoader", None)


class Unparsed:
    """A structured file with no document to diff, and why (one of the reasons above); for a
    document that does not parse, ``detail`` is the parser's own words (a line and column)."""

    __slots__ = ("reason", "detail")

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail

    def __repr__(self) -> str:
        return f"Unparsed({self.reason!r})"


class _TooBig(Exception):
    pass


def _count_json_nodes(doc: Any, limit: int) -> int:
    """Values in a parsed document (containers and scalars), without recursion; raises
    ``_TooBig`` past ``limit``."""
    count, stack = 0, [doc]
    while stack:
        value = stack.pop()
        count += 1
        if count > limit:
            raise _TooBig
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return count


def _count_yaml_nodes(root: Any, limit: int) -> int:
    """Values of a composed YAML node graph as construction would expand them: an alias counts
    its target's whole size again. Memoised per node, so the cost is the graph's size, not the
    expansion's; a node that contains itself raises ``ValueError``."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[Any, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            on_path.discard(key)
            value = node.value
            if isinstance(node, yaml.MappingNode):
                children = [n for pair in value for n in pair]
            elif isinstance(node, yaml.SequenceNode):
                children = value
            else:
                children = []
            size = 1 + sum(sizes[id(c)] for c in children)
            if size > limit:
                raise _TooBig
            sizes[key] = size
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise ValueError("a YAML alias refers to a node that contains it")
        on_path.add(key)
        stack.append((node, True))
        if isinstance(node, yaml.MappingNode):
            stack.extend((n, False) for pair in node.value for n in pair if id(n) not in sizes)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend((n, False) for n in node.value if id(n) not in sizes)
    return sizes[id(root)]


def _load_yaml(data: bytes) -> Any:
    loader = _YAML_LOADER(data)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _count_yaml_nodes(node, MAX_NODES)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _load_toml(data: bytes) -> Any:
    return tomllib.loads(data.decode("utf-8"))


def parser_for(path: str) -> tuple[Callable[[bytes], Any], int] | None:
    """``(parser, size limit)`` for ``path``'s extension, or None when it is not structured."""
    lower = path.lower()
    if lower.endswith(".json"):
        return json.loads, MAX_PARSED_BYTES
    if lower.endswith(".toml"):
        return _load_toml, MAX_PARSED_BYTES
    if lower.endswith((".yaml", ".yml")) and yaml is not None:
        return _load_yaml, MAX_YAML_BYTES
    return None


def size_limit(path: str) -> int | None:
    """The largest file of this kind that is parsed; None when it is not structured."""
    found = parser_for(path)
    return found[1] if found is not None else None


def parse(path: str, data: bytes) -> Any:
    """The document of a structured file, an ``Unparsed`` saying why there is none, or None
    when ``path`` is not a structured file at all."""
    found = parser_for(path)
    if found is None:
        return None
    parser, limit = found
    if len(data) > limit:
        return Unparsed(TOO_LARGE)
    try:
        doc = parser(data)
        _count_json_nodes(doc, MAX_NODES)
    except _TooBig:
        return Unparsed(TOO_MANY_NODES)
    except Exception as exc:  # any parse error (RecursionError for absurd nesting too)
        return Unparsed(DOES_NOT_PARSE, " ".join(str(exc).split())[:200])
    return doc


def escape(token: str) -> str:
    """One reference token of a JSON Pointer (RFC 6901 section 3)."""
    return token.replace("~", "~0").replace("/", "~1")


def diff(old: Any, new: Any) -> dict[str, list[str]]:
    """Pointers added, removed and changed between two parsed documents, in document order.

    Depth first like a recursive walk, but over a list of iterators instead of the call
    stack: a document nested ten thousand levels deep costs no recursion."""
    out: dict[str, list[str]] = {"added": [], "removed": [], "changed": []}
    added, removed, changed = out["added"], out["removed"], out["changed"]

    def mapping(a: dict, b: dict, pointer: str) -> Iterator[tuple[Any, Any, str]]:
        for key in b:
            child = f"{pointer}/{escape(str(key))}"
            if key in a:
                yield a[key], b[key], child
            else:
                added.append(child)

    def sequence(a: list, b: list, pointer: str) -> Iterator[tuple[Any, Any, str]]:
        for i in range(min(len(a), len(b))):
            yield a[i], b[i], f"{pointer}/{i}"

    stack: list[Iterator[tuple[Any, Any, str]]] = [iter([(old, new, "")])]
    while stack:
        try:
            a, b, pointer = next(stack[-1])
        except StopIteration:
            stack.pop()
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            removed.extend(f"{pointer}/{escape(str(key))}" for key in a if key not in b)
            stack.append(mapping(a, b, pointer))
        elif isinstance(a, list) and isinstance(b, list):
            removed.extend(f"{pointer}/{i}" for i in range(len(b), len(a)))
            added.extend(f"{pointer}/{i}" for i in range(len(a), len(b)))
            stack.append(sequence(a, b, pointer))
        elif type(a) is not type(b) or a != b:
            changed.append(pointer)
    for key, pointers in out.items():
        if len(pointers) > MAX_POINTERS:
            out[key] = pointers[:MAX_POINTERS]
    return out

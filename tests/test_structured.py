"""structured.py on bytes: pointers never values, and bounded parsing of hostile files."""

import json

import pytest

from tornado_cfgpush import structured
from tornado_cfgpush.schemas import DiffSchema
from tornado_cfgpush.structured import DOES_NOT_PARSE, TOO_LARGE, TOO_MANY_NODES, Unparsed

need_yaml = pytest.mark.skipif(structured.yaml is None, reason="PyYAML is not installed (pip install PyYAML)")


def reason(result) -> str | None:
    return result.reason if isinstance(result, Unparsed) else None


def test_diff_names_pointers_never_values():
    old = {"limits": {"rate": 10, "burst": 5}, "name": "a", "gone": True, "list": [1, 2, 3]}
    new = {"limits": {"rate": 20, "burst": 5, "extra": 1}, "name": "a", "list": [1, 9], "a/b": {"c~d": 1}}
    result = structured.diff(old, new)
    assert result == {
        "added": ["/limits/extra", "/a~1b"],
        "removed": ["/gone", "/list/2"],
        "changed": ["/limits/rate", "/list/1"],
    }
    assert "20" not in str(result) and "secret" not in str(result)
    DiffSchema().load(result)  # what the schema accepts


def test_type_change_and_whole_document():
    assert structured.diff({"a": 1}, {"a": "1"})["changed"] == ["/a"]
    assert structured.diff([1], {"a": 1})["changed"] == [""]
    assert structured.diff({"a": True}, {"a": 1})["changed"] == ["/a"]
    assert structured.diff({"a": 1}, {"a": 1}) == {"added": [], "removed": [], "changed": []}


def test_diff_of_deep_documents_needs_no_recursion():
    depth = 50_000  # far past the interpreter's recursion limit
    old: dict = {}
    new: dict = {}
    a, b = old, new
    for _ in range(depth):
        a["k"], b["k"] = {}, {}
        a, b = a["k"], b["k"]
    b["leaf"] = 1
    result = structured.diff(old, new)
    assert result["added"] == ["/k" * depth + "/leaf"]


@pytest.mark.parametrize(
    "path, data, expected",
    [
        ("a.json", b'{"a": 1}', {"a": 1}),
        ("a.toml", b'a = 1\n[b]\nc = "x"\n', {"a": 1, "b": {"c": "x"}}),
        pytest.param("a.yaml", b"a: 1\nb: [1, 2]\n", {"a": 1, "b": [1, 2]}, marks=need_yaml),
        pytest.param("a.YML", b"a: 1\n", {"a": 1}, marks=need_yaml),
    ],
)
def test_parse_structured_files(path, data, expected):
    assert structured.parse(path, data) == expected


@pytest.mark.parametrize(
    "path, data, why",
    [
        ("a.json", b"{not json", DOES_NOT_PARSE),
        ("a.toml", b"= broken", DOES_NOT_PARSE),
        ("a.toml", b"\xff\xfe", DOES_NOT_PARSE),
        ("a.json", b" " * (structured.MAX_PARSED_BYTES + 1), TOO_LARGE),
        ("a.json", b"[" * 100_000 + b"]" * 100_000, DOES_NOT_PARSE),  # nesting past the parser's limit
        ("a.json", json.dumps(list(range(structured.MAX_NODES))).encode(), TOO_MANY_NODES),
    ],
)
def test_files_that_give_no_document_say_why(path, data, why):
    assert reason(structured.parse(path, data)) == why


def test_unstructured_files_are_not_parsed():
    assert structured.parse("a.txt", b'{"a": 1}') is None


@need_yaml
def test_yaml_is_parsed_safely():
    assert reason(structured.parse("a.yaml", b"!!python/object/apply:os.system ['true']")) == DOES_NOT_PARSE


@need_yaml
def test_a_yaml_alias_bomb_is_counted_as_expanded_and_never_built():
    # 354 bytes, 4^11 leaves once expanded (SECURITY.md): refused on the composed graph.
    lines = ["a0: &a0 [x, x, x, x]"]
    for i in range(1, 12):
        lines.append(f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]")
    data = "\n".join(lines).encode()
    assert len(data) < 400
    assert reason(structured.parse("bomb.yaml", data)) == TOO_MANY_NODES
    # A few aliases well within the bound are fine.
    assert structured.parse("ok.yaml", b"base: &b {x: 1}\nother: *b\n") == {"base": {"x": 1}, "other": {"x": 1}}


@need_yaml
def test_a_recursive_yaml_alias_does_not_parse():
    assert reason(structured.parse("loop.yaml", b"a: &a [*a]\n")) == DOES_NOT_PARSE


@need_yaml
def test_large_yaml_is_not_parsed():
    data = b"k: " + b"x" * structured.MAX_YAML_BYTES
    assert reason(structured.parse("big.yaml", data)) == TOO_LARGE

import pytest

from tornado_cfgpush import structured
from tornado_cfgpush.schemas import DiffSchema


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


@pytest.mark.parametrize("path, data, expected", [
    ("a.json", b'{"a": 1}', {"a": 1}),
    ("a.toml", b'a = 1\n[b]\nc = "x"\n', {"a": 1, "b": {"c": "x"}}),
    ("a.yaml", b"a: 1\nb: [1, 2]\n", {"a": 1, "b": [1, 2]}),
    ("a.YML", b"a: 1\n", {"a": 1}),
])
def test_parse_structured_files(path, data, expected):
    if path.lower().endswith((".yaml", ".yml")) and structured.yaml is None:
        pytest.skip("PyYAML is not installed")
    assert structured.parse(path, data) == (True, expected)


@pytest.mark.parametrize("path, data", [
    ("a.json", b"{not json"),
    ("a.toml", b"= broken"),
    ("a.toml", b"\xff\xfe"),
    ("a.txt", b'{"a": 1}'),
    ("a.json", b" " * (structured.MAX_PARSED_BYTES + 1)),
])
def test_unparsable_or_unstructured_files_give_no_document(path, data):
    assert structured.parse(path, data) == (False, None)


def test_yaml_is_parsed_safely():
    if structured.yaml is None:
        pytest.skip("PyYAML is not installed")
    ok, _ = structured.parse("a.yaml", b"!!python/object/apply:os.system ['true']")
    assert ok is False

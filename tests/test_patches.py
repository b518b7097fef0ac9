"""Patches in events (issue #14, slice 2): a served structured file's ``modified`` event carries
an RFC 6902 patch from the version before, that version's checksum and the new document's
RFC 8785 checksum; nothing of a file that is not served ever leaves. Canonical JSON and the
patch functions are checked on their own too."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tornado_cfgpush.patching import (
    NotJson,
    PatchFailed,
    apply_patch,
    canonical,
    document_checksum,
    es_number,
    make_patch,
)
from tornado_cfgpush.testing import publish, wait_for

from .fshelpers import change, sha, subscribe

# -- canonical JSON and patches, alone ------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "text"),
    [  # RFC 8785 appendix B and ECMAScript's own choices
        (0.0, "0"),
        (-0.0, "0"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (9007199254740992, "9007199254740992"),
        (9007199254740993, "9007199254740992"),  # read as the double a browser reads
        (295147905179352830000.0, "295147905179352830000"),
        (1e21, "1e+21"),
        (1e-6, "0.000001"),
        (1e-7, "1e-7"),
        (333333333.3333333, "333333333.3333333"),
        (1.0, "1"),
        (-12.5, "-12.5"),
    ],
)
def test_numbers_are_written_as_ecmascript_writes_them(number, text):
    assert es_number(number) == text


def test_canonical_json_sorts_by_utf16_and_escapes_as_json_stringify():
    doc = {"\u20ac": 1, "\U0001f600": 2, "\r": 3, "1": [True, None, '\u00e9\x1f\n"\\'], "a": {}}
    assert (
        canonical(doc)
        == '{"\\r":3,"1":[true,null,"\u00e9\\u001f\\n\\"\\\\"],"a":{},"\u20ac":1,"\U0001f600":2}'.encode()
    )
    for bad in (float("nan"), {"k": float("inf")}, {1: "x"}, {"x": {1, 2}}, "\ud800"):
        with pytest.raises(NotJson):
            canonical(bad)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(json_values, json_values)
def test_a_patch_takes_the_old_document_to_the_new(old, new):
    try:
        canonical(old), canonical(new)
    except NotJson:  # lone surrogates from st.text()
        return
    patch = make_patch(old, new)
    assert canonical(apply_patch(old, patch)) == canonical(new)
    json.dumps(patch)  # on the wire as it is


def test_every_rfc6902_operation_applies_and_a_bad_one_is_refused():
    doc = {"a": [1, 2], "b": {"c": "d"}}
    patch = [
        {"op": "add", "path": "/a/-", "value": 3},
        {"op": "move", "from": "/b/c", "path": "/e"},
        {"op": "copy", "from": "/a", "path": "/f"},
        {"op": "test", "path": "/e", "value": "d"},
        {"op": "replace", "path": "/a/0", "value": 0},
        {"op": "remove", "path": "/f/1"},
    ]
    assert apply_patch(doc, patch) == {"a": [0, 2, 3], "b": {}, "e": "d", "f": [1, 3]}
    assert doc == {"a": [1, 2], "b": {"c": "d"}}  # left as it was
    for bad in (
        [{"op": "remove", "path": "/nope"}],
        [{"op": "test", "path": "/b/c", "value": "x"}],
        [{"op": "replace", "path": "/a/9", "value": 1}],
        [{"op": "add", "path": "/a/01", "value": 1}],
    ):
        with pytest.raises(PatchFailed):
            apply_patch(doc, bad)


# -- in events, through a real server -------------------------------------------------------------

THEME = {"color": "blue", "sizes": [1, 2, 3], "nested": {"deep": {"x": 1}}, "pad": "p" * 300}


@pytest.fixture
def config_dir(config_dir):
    (config_dir / "acme" / "ui").mkdir()
    (config_dir / "acme" / "ui" / "theme.json").write_text(json.dumps(THEME))
    (config_dir / "acme" / "secret.json").write_text('{"password": "hunter2"}')
    (config_dir / "acme" / "limits.toml").write_text('rate = 5\nname = "x"\n')
    return config_dir


pytestmark = pytest.mark.settings(serve_content=("ui/*.json", "*.toml"), max_patch_bytes=2048)


@pytest.mark.gen_test(timeout=60)
async def test_a_served_files_change_carries_its_patch(config_dir, connect, core):
    client = await subscribe(connect, "acme")
    target = config_dir / "acme" / "ui" / "theme.json"
    before = target.read_bytes()
    new = {**THEME, "color": "red", "sizes": [1, 2], "nested": {"deep": {"x": 1, "y": [None]}}}
    target.write_text(json.dumps(new, indent=2))
    event = await change(client)
    assert event["base_checksum"] == sha(before)
    assert event["document_checksum"] == document_checksum(new)
    assert apply_patch(THEME, event["patch"]) == new
    assert len(json.dumps(event["patch"])) < 200  # the change, not the file
    assert event["diff"]["changed"] == ["/color"]
    toml = config_dir / "acme" / "limits.toml"
    toml.write_text('rate = 6\nname = "x"\n')
    event = await change(client)
    assert event["patch"] == [{"op": "replace", "path": "/rate", "value": 6}]
    assert event["document_checksum"] == document_checksum({"rate": 6, "name": "x"})


@pytest.mark.gen_test(timeout=60)
async def test_values_of_a_file_that_is_not_served_never_leave(config_dir, connect, core):
    client = await subscribe(connect, "acme")
    (config_dir / "acme" / "secret.json").write_text('{"password": "hunter3"}')
    event = await change(client)
    assert event["diff"] == {"added": [], "removed": [], "changed": ["/password"]}
    assert "hunter" not in json.dumps(event)
    assert not {"patch", "base_checksum", "document_checksum"} & set(event)
    # Nor from a publisher: the values of a path not served are dropped at the one gate.
    fields = {"patch": [{"op": "replace", "path": "/password", "value": "hunter4"}]}
    fields.update(base_checksum=sha(b"a"), document_checksum=sha(b"b"))
    await publish(core, "acme", "secret.json", checksum=sha(b"c"), **fields)
    published = await client.expect("ConfigChanged")
    assert "hunter" not in json.dumps(published) and "patch" not in published
    await publish(core, "acme", "ui/theme.json", checksum=sha(b"d"), **fields)
    assert (await client.expect("ConfigChanged"))["patch"] == fields["patch"]  # a served path keeps it


@pytest.mark.gen_test(timeout=60)
async def test_a_patch_over_the_bound_is_left_out(config_dir, connect, core):
    client = await subscribe(connect, "acme")
    (config_dir / "acme" / "ui" / "theme.json").write_text(json.dumps({**THEME, "pad": "q" * 3000}))
    event = await change(client)
    assert "patch" not in event and event["meta"]["patch_skipped"] == "too_large"
    assert event["diff"]["changed"] == ["/pad"]


# -- the Python client and cfgpush-tail --content -------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_the_python_client_applies_the_patch_and_fetches_only_what_it_must(config_dir, http_url, core):
    from tornado_cfgpush.client import ConfigChanged, Files, Resync, subscribe

    target = config_dir / "acme" / "ui" / "theme.json"
    async with subscribe(http_url, "acme", content=True, welcome=True) as sub:
        events = aiter(sub)
        await anext(events)  # Welcome
        theme = await sub.file("ui/theme.json")
        assert theme.document == THEME and theme.content == target.read_bytes()
        new = {**THEME, "color": "red"}
        target.write_text(json.dumps(new))
        event = await asyncio.wait_for(anext(events), 10)
        assert isinstance(event, ConfigChanged) and event.value.document == new
        assert event.value.content is None and event.value.checksum == event.checksum  # from the patch
        (config_dir / "acme" / "secret.json").write_text('{"password": "x"}')
        other = await asyncio.wait_for(anext(events), 10)
        assert other.path == "secret.json" and other.value is None  # not a file it keeps
        assert sub.files.fetches == 1
    # A Resync asks again for the kept files whose checksum changed, and only those.
    files = Files(http_url, "acme", lambda: None, fetch_jitter=0)
    await files.get("ui/theme.json")
    toml = await files.get("limits.toml")
    assert toml.document == {"rate": 5, "name": "x"}
    target.write_text(json.dumps({"color": "green"}))
    await wait_for(lambda: core.manifest("acme")["ui/theme.json"] == sha(target.read_bytes()))
    changed = await files.resynced(Resync("acme", None, "source_gap", manifest=core.manifest("acme")))
    assert list(changed) == ["ui/theme.json"] and changed["ui/theme.json"].document == {"color": "green"}
    assert files.fetches == 3


@pytest.mark.gen_test(timeout=60)
async def test_tail_content_prints_the_new_value(config_dir, http_url, core):
    import subprocess
    import sys
    from pathlib import Path

    tail = Path(sys.executable).with_name("cfgpush-tail")
    proc = subprocess.Popen(
        [str(tail), http_url, "--tenant", "acme", "--content", "--file", "ui/theme.json", "-q"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
    )
    loop = asyncio.get_running_loop()
    try:
        first = json.loads(await asyncio.wait_for(loop.run_in_executor(None, proc.stdout.readline), 20))
        assert first["File"]["document"] == THEME
        await wait_for(lambda: core.hub.connection_count("acme") == 1, 10)
        (config_dir / "acme" / "ui" / "theme.json").write_text(json.dumps({**THEME, "color": "red"}))
        event = json.loads(await asyncio.wait_for(loop.run_in_executor(None, proc.stdout.readline), 10))
        shown = json.loads(await asyncio.wait_for(loop.run_in_executor(None, proc.stdout.readline), 10))
        assert event["ConfigChanged"]["patch"] == [{"op": "replace", "path": "/color", "value": "red"}]
        assert shown["File"]["document"]["color"] == "red" and shown["File"]["text"] is None
    finally:
        proc.terminate()
        proc.wait()
        proc.stdout.close()

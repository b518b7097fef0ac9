"""The validation gate (issue #16.1): a broken save never reaches a browser; the previous good
version stays current, the failure is said once with where and why, and the next good save is
announced as a change from the last good version. A real server, real files, real clients."""

from __future__ import annotations

import json
import time
from datetime import datetime

import pytest
from tornado.httpclient import AsyncHTTPClient

from tornado_cfgpush.gate import Gate, SchemaError, load_schema
from tornado_cfgpush.testing import wait_for

from .fshelpers import EXPECT, change, fs_source, nothing, sha, subscribe

SCHEMA = {
    "type": "object",
    "properties": {"limits": {"type": "object", "properties": {"rate": {"type": "integer", "minimum": 1}}}},
}


@pytest.fixture
def schema_file(tmp_path):
    path = tmp_path / "limits.schema.json"
    path.write_text(json.dumps(SCHEMA))
    return path


@pytest.fixture
def settings(request, config_dir, schema_file):
    from tornado_cfgpush.settings import Settings

    marker = request.node.get_closest_marker("settings")
    return Settings(
        config_dir=config_dir,
        debounce_ms=30,
        validate=("*.json", "*.yaml", "*.toml"),
        json_schemas=(f"billing/*.json={schema_file}",),
        **(marker.kwargs if marker else {}),
    )


async def rejected(http_url) -> float:
    body = (await AsyncHTTPClient().fetch(f"{http_url}/metrics")).body.decode()
    for line in body.splitlines():
        if line.startswith("cfgpush_events_rejected_total") and 'reason="invalid_content"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.gen_test(timeout=60)
async def test_a_broken_save_is_never_announced_and_the_fix_is_a_change_from_the_last_good(
    connect, config_dir, core, http_url, caplog
):
    client = await subscribe(connect, "acme")
    target = config_dir / "acme" / "app.json"
    good = target.read_bytes()
    for _ in range(2):  # an editor saving the same broken file twice: said once
        target.write_bytes(b'{"a": ')
        await wait_for(lambda: fs_source(core).invalid("acme"), EXPECT)
    await nothing(client)
    (entry,) = fs_source(core).invalid("acme")
    assert entry["path"] == "app.json" and entry["pointer"] == ""
    assert entry["reason"].startswith("does not parse as JSON: ") and "line 1 column" in entry["reason"]
    assert abs(entry["since"] - time.time()) < 60
    assert fs_source(core).manifest("acme")["app.json"] == sha(good)  # the last good one stays
    late = await connect("acme", manifest=1)
    assert (await late.expect("Welcome"))["manifest"]["app.json"] == sha(good)
    assert await rejected(http_url) >= 1
    assert caplog.text.count("refused by the validation gate") == 1
    target.write_bytes(b'{"a": 2, "b": 1}')
    event = await change(client)
    assert (event["change_type"], event["checksum"]) == ("modified", sha(b'{"a": 2, "b": 1}'))
    assert event["diff"] == {"added": ["/b"], "removed": [], "changed": ["/a"]}  # from {"a": 1}
    assert fs_source(core).invalid("acme") == []


@pytest.mark.settings(admin_token="gate-admin")
@pytest.mark.gen_test(timeout=60)
async def test_the_status_api_lists_what_the_gate_refuses_until_a_good_version(connect, config_dir, core, http_url):
    """issue #16.1's failure view: per tenant, the refused file, its JSON Pointer, the reason and
    since when, in the status API and the dashboard's list; a good version clears it."""
    headers = {"Authorization": "Bearer gate-admin"}

    async def views():
        one = json.loads((await AsyncHTTPClient().fetch(f"{http_url}/api/v1/tenants/acme", headers=headers)).body)
        listed = json.loads((await AsyncHTTPClient().fetch(f"{http_url}/api/v1/tenants", headers=headers)).body)
        assert one == next(t for t in listed["tenants"] if t["tenant_id"] == "acme")
        return one["invalid"]

    client = await subscribe(connect, "acme")
    limits = config_dir / "acme" / "billing" / "limits.json"
    limits.parent.mkdir(exist_ok=True)
    limits.write_text('{"limits": {"rate": 5}}')
    await change(client)
    before = time.time()
    limits.write_text('{"limits": {"rate": 0}}')
    await wait_for(lambda: fs_source(core).invalid("acme"), EXPECT)
    (entry,) = await views()
    assert (entry["path"], entry["pointer"]) == ("billing/limits.json", "/limits/rate")
    assert "minimum of 1" in entry["reason"] and "limits.schema.json" in entry["reason"]
    since = datetime.fromisoformat(entry["since"].replace("Z", "+00:00")).timestamp()
    assert before - 1 <= since <= time.time() + 1
    limits.write_text('{"limits": {"rate": 7}}')
    assert (await change(client))["path"] == "billing/limits.json"
    await wait_for(lambda: not fs_source(core).invalid("acme"), EXPECT)
    assert await views() == []


@pytest.mark.gen_test(timeout=60)
async def test_a_json_schema_failure_names_the_pointer(connect, config_dir, core):
    client = await subscribe(connect, "acme")
    (config_dir / "acme" / "billing").mkdir()
    limits = config_dir / "acme" / "billing" / "limits.json"
    limits.write_text(json.dumps({"limits": {"rate": 10}}))
    assert (await change(client))["change_type"] == "created"
    limits.write_text(json.dumps({"limits": {"rate": 0}}))
    await wait_for(lambda: fs_source(core).invalid("acme"), EXPECT)
    (entry,) = fs_source(core).invalid("acme")
    assert entry["pointer"] == "/limits/rate" and "minimum of 1" in entry["reason"], entry
    await nothing(client)
    # Not under billing/: parsing is the only rule there.
    (config_dir / "acme" / "free.json").write_text(json.dumps({"limits": {"rate": 0}}))
    assert (await change(client))["path"] == "free.json"
    # Deleting a refused file is a change like any other.
    limits.unlink()
    event = await change(client)
    assert (event["change_type"], event["path"]) == ("deleted", "billing/limits.json")
    assert fs_source(core).invalid("acme") == []


@pytest.mark.gen_test(timeout=60)
async def test_yaml_and_toml_must_parse_too(connect, config_dir, core):
    client = await subscribe(connect, "acme")
    (config_dir / "acme" / "a.yaml").write_text("a: [1, 2\n")
    (config_dir / "acme" / "b.toml").write_text("= broken\n")
    await wait_for(lambda: len(fs_source(core).invalid("acme")) == 2, EXPECT)
    await nothing(client)
    reasons = {e["path"]: e["reason"] for e in fs_source(core).invalid("acme")}
    assert reasons["a.yaml"].startswith("does not parse as YAML") and reasons["b.toml"].startswith(
        "does not parse as TOML"
    )
    (config_dir / "acme" / "a.yaml").write_text("a: [1, 2]\n")
    assert (await change(client))["change_type"] == "created"


@pytest.mark.gen_test(timeout=60)
async def test_a_schema_file_that_changes_is_loaded_again_and_a_bad_one_keeps_the_previous(
    connect, config_dir, core, schema_file, caplog
):
    client = await subscribe(connect, "acme")
    (config_dir / "acme" / "billing").mkdir()
    limits = config_dir / "acme" / "billing" / "limits.json"
    schema_file.write_text("{not json")  # a bad edit of the schema: logged, the previous kept
    await wait_for(lambda: "keeping the previous one" in caplog.text, 10)
    limits.write_text(json.dumps({"limits": {"rate": 0}}))
    await wait_for(lambda: fs_source(core).invalid("acme"), EXPECT)  # still the previous rule
    relaxed = {**SCHEMA, "properties": {"limits": {"type": "object"}}}
    schema_file.write_text(json.dumps(relaxed))
    await wait_for(lambda: caplog.text.count("JSON Schema") >= 1, 10)
    await client.expect_nothing(3)  # the worker looks at schema files every 2 s
    limits.write_text(json.dumps({"limits": {"rate": 0}, "v": 2}))
    event = await change(client)
    assert event["path"] == "billing/limits.json"


@pytest.mark.gen_test(timeout=60)
async def test_a_broken_file_at_start_is_not_announced_nor_listed(tmp_path, schema_file):
    from tornado_cfgpush.app import CfgPush
    from tornado_cfgpush.plugins import get_plugin_manager
    from tornado_cfgpush.settings import Settings

    root = tmp_path / "start"
    (root / "acme").mkdir(parents=True)
    (root / "acme" / "good.json").write_text("{}")
    (root / "acme" / "bad.json").write_text("{")
    service = CfgPush(Settings(config_dir=root, validate=("*.json",)), get_plugin_manager(load_entry_points=False))
    await service.start()
    try:
        await service.wait_started()
        source = fs_source(service)
        assert set(source.manifest("acme")) == {"good.json"}
        assert [e["path"] for e in source.invalid("acme")] == ["bad.json"]
    finally:
        await service.stop()


def test_schemas_that_cannot_be_used_say_why(tmp_path):
    bad = tmp_path / "bad.json"
    for text, words in (("{", "is not JSON"), ('{"type": 7}', "is not a valid schema")):
        bad.write_text(text)
        with pytest.raises(SchemaError, match=words):
            load_schema(str(bad))
    with pytest.raises(SchemaError, match="cannot read"):
        load_schema(str(tmp_path / "missing.json"))


def test_the_gate_parses_within_its_bounds():
    gate = Gate(["*.json", "*.yaml"])
    assert gate.check("a.txt", b"anything") is None  # not structured: nothing to check
    assert gate.check("a.json", b"{}") is None
    deep = b"[" * 100_000 + b"]" * 100_000
    assert gate.check("deep.json", deep).reason.startswith("does not parse as JSON")
    big = b'{"k": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    assert gate.check("big.json", big).reason.startswith("larger than the gate parses")
    bomb = "\n".join(
        ["a0: &a0 [x, x, x, x]"] + [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 12)]
    ).encode()
    assert gate.check("bomb.yaml", bomb).reason.startswith("more than")

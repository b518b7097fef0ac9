"""Content from other sources (issue #14, slice 4): ``emit(payload, content=bytes)`` and the
publish API's ``content``: checked by the validation gate (refused: nothing published, 422 with
where and why, counted ``invalid_content``), served by the files API, patched from the previous
version handed. A real server over real sockets."""

from __future__ import annotations

import base64
import hashlib
import json
import os

import pytest
from tornado.httpclient import AsyncHTTPClient

from tornado_cfgpush.content import ContentRefused
from tornado_cfgpush.patching import apply_patch, document_checksum
from tornado_cfgpush.sources.runner import SourceEmit

from .fshelpers import subscribe

TOKEN = "content-publish-token"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture
def settings(config_dir, tmp_path):
    from tornado_cfgpush.settings import Settings

    schema = tmp_path / "limits.schema.json"
    schema.write_text(json.dumps({"properties": {"rate": {"type": "integer", "minimum": 1}}}))
    return Settings(
        config_dir=config_dir,
        debounce_ms=30,
        publish_token=TOKEN,
        validate=("*.json",),
        json_schemas=(f"billing/*.json={schema}",),
        serve_content=("ui/*", "billing/*"),
        disabled_plugins=("filesystem",),
    )


async def post(http_url, path: str, data: bytes | None, **fields):
    body = {"tenant_id": "acme", "change_type": "modified", "path": path, "checksum": sha(data or b""), **fields}
    if data is not None:
        body["content"] = base64.b64encode(data).decode()
    return await post_body(http_url, body)


async def post_body(http_url, body: dict):
    """``POST /api/v1/events`` of ``body`` as it is; the status and the JSON answer."""
    response = await AsyncHTTPClient().fetch(
        f"{http_url}/api/v1/events",
        method="POST",
        body=json.dumps(body),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        raise_error=False,
    )
    return response.code, json.loads(response.body)


async def rejected(http_url) -> float:
    body = (await AsyncHTTPClient().fetch(f"{http_url}/metrics")).body.decode()
    for line in body.splitlines():
        if line.startswith('cfgpush_events_rejected_total{reason="invalid_content"'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.gen_test(timeout=60)
async def test_published_content_is_served_patched_and_gated(connect, core, http_url):
    client = await subscribe(connect, "acme")
    first = json.dumps({"rate": 5, "name": "a"}).encode()
    assert (await post(http_url, "billing/limits.json", first, change_type="created"))[0] == 202
    assert "patch" not in await client.expect("ConfigChanged")
    got = await AsyncHTTPClient().fetch(f"{http_url}/api/v1/tenants/acme/files/billing/limits.json")
    assert got.body == first and got.headers["ETag"] == f'"{sha(first)}"'
    second = json.dumps({"rate": 6, "name": "a"}).encode()
    assert (await post(http_url, "billing/limits.json", second))[0] == 202
    event = await client.expect("ConfigChanged")
    assert event["patch"] == [{"op": "replace", "path": "/rate", "value": 6}]
    assert event["base_checksum"] == sha(first)
    assert event["document_checksum"] == document_checksum(apply_patch({"rate": 5, "name": "a"}, event["patch"]))
    # The gate: a schema failure names its pointer; what does not parse, the whole document.
    code, answer = await post(http_url, "billing/limits.json", b'{"rate": 0}')
    assert code == 422 and answer["pointer"] == "/rate" and "minimum" in answer["reason"]
    code, answer = await post(http_url, "ui/theme.json", b'{"a": ')
    assert code == 422 and answer["pointer"] == "" and answer["reason"].startswith("does not parse as JSON")
    await client.expect_nothing(0.3)
    assert await rejected(http_url) == 2
    # The served version stays the last good one.
    got = await AsyncHTTPClient().fetch(f"{http_url}/api/v1/tenants/acme/files/billing/limits.json")
    assert got.body == second


@pytest.mark.gen_test(timeout=60)
async def test_bad_content_is_refused_with_its_reason(core, http_url):
    code, answer = await post(http_url, "ui/a.json", b"{}", checksum=sha(b"other"))
    assert code == 422 and "checksum" in answer["reason"]
    body = {"tenant_id": "acme", "change_type": "modified", "path": "ui/a.json", "content": "not base64!"}
    code, answer = await post_body(http_url, body)
    assert code == 400 and "base64" in answer["error"]
    code, answer = await post(http_url, "ui/a.json", b"x" * (256 * 1024 + 1))
    assert code == 413 and "content" in answer["error"]
    code, _ = await post(http_url, "ui/gone.json", b"{}", change_type="deleted", checksum=None)
    assert code == 422


@pytest.mark.gen_test(timeout=60)
async def test_a_sources_emit_hands_content_and_an_unserved_path_keeps_it_in(connect, core, http_url):
    client = await subscribe(connect, "acme")
    emit = SourceEmit(core.runner, "plugin")
    data = b"secret = 1\n"
    await emit(
        {"tenant_id": "acme", "change_type": "created", "path": "private.toml", "checksum": sha(data)}, content=data
    )
    await client.expect("ConfigChanged")
    missing = await AsyncHTTPClient().fetch(f"{http_url}/api/v1/tenants/acme/files/private.toml", raise_error=False)
    assert missing.code == 404  # not served: validated, published, never kept
    with pytest.raises(ContentRefused):
        await emit(
            {"tenant_id": "acme", "change_type": "modified", "path": "ui/x.json", "checksum": sha(b"[")}, content=b"["
        )
    listing = await AsyncHTTPClient().fetch(f"{http_url}/api/v1/tenants/acme/files")
    assert json.loads(listing.body)["files"] == {}
    await emit(
        {"tenant_id": "acme", "change_type": "created", "path": "ui/x.json", "checksum": sha(b"[1]")}, content=b"[1]"
    )
    listing = await AsyncHTTPClient().fetch(f"{http_url}/api/v1/tenants/acme/files")
    assert json.loads(listing.body)["files"] == {"ui/x.json": sha(b"[1]")}


# -- a cluster: content handed on one node is served by every node ----------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_content_handed_on_one_node_is_served_and_patched_on_the_other(cluster, settings):
    a, b = await cluster(), await cluster()
    client = await subscribe(b.connect, "acme")
    first = json.dumps({"rate": 5, "name": "a"}).encode()
    payload = {"tenant_id": "acme", "change_type": "created", "path": "ui/a.json", "checksum": sha(first)}
    await a.service.publish(payload, "api", content=first)
    await client.expect("ConfigChanged")
    got = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{b.port}/api/v1/tenants/acme/files/ui/a.json")
    assert got.body == first and got.headers["ETag"] == f'"{sha(first)}"'
    listing = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{b.port}/api/v1/tenants/acme/files")
    assert json.loads(listing.body)["files"]["ui/a.json"] == sha(first)
    # The next version handed on b is patched from what a handed.
    second = json.dumps({"rate": 7, "name": "a"}).encode()
    await b.service.publish({**payload, "change_type": "modified", "checksum": sha(second)}, "api", content=second)
    event = await client.expect("ConfigChanged")
    assert event["patch"] == [{"op": "replace", "path": "/rate", "value": 7}] and event["base_checksum"] == sha(first)
    got = await AsyncHTTPClient().fetch(f"http://127.0.0.1:{a.port}/api/v1/tenants/acme/files/ui/a.json")
    assert got.body == second
    # An event of the path without content: what was kept is no longer the announced version.
    await a.publish("acme", "ui/a.json", checksum=sha(b"third"))
    await client.expect("ConfigChanged")
    for node in (a, b):
        gone = await AsyncHTTPClient().fetch(
            f"http://127.0.0.1:{node.port}/api/v1/tenants/acme/files/ui/a.json", raise_error=False
        )
        assert gone.code == 404


@pytest.mark.gen_test(timeout=60)
async def test_a_schema_file_that_changes_applies_to_published_content(core, http_url, settings):
    (schema_path,) = [rule.split("=", 1)[1] for rule in settings.json_schemas]
    ok = b'{"rate": 3}'
    assert (await post(http_url, "billing/limits.json", ok))[0] == 202
    with open(schema_path, "w") as f:  # now rate must be at least 5
        json.dump({"properties": {"rate": {"type": "integer", "minimum": 5}}}, f)
    os.utime(schema_path, (1, 1))  # a new stamp, however coarse the clock
    code, answer = await post(http_url, "billing/limits.json", b'{"rate": 4}')
    assert code == 422 and answer["pointer"] == "/rate"

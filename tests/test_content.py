"""Configuration content (issue #14): the files API of ``--serve-content``. A real server, real
files, real sockets: what is served, to whom, with which validators, and what never is."""

from __future__ import annotations

import gzip
import json
import os
import time

import jwt
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPResponse

from tornado_cfgpush.testing import wait_for

from .fshelpers import EXPECT, change, fs_source, sha, subscribe

SECRET = "a-test-secret-of-at-least-32-bytes!!"
ADMIN = "the-admin-token"
SERVED = ("ui/*.json", "*.toml", "app.json")


def token(tenant: str = "acme") -> str:
    return jwt.encode({"tenant_id": tenant, "exp": int(time.time() + 300)}, SECRET, algorithm="HS256")


async def get(http_url: str, path: str, *, auth: str | None = token(), **headers: str) -> HTTPResponse:
    if auth is not None:
        headers["Authorization"] = f"Bearer {auth}"
    return await AsyncHTTPClient().fetch(
        f"{http_url}{path}", headers=headers, raise_error=False, decompress_response=False
    )


@pytest.fixture
def config_dir(config_dir):
    ui = config_dir / "acme" / "ui"
    ui.mkdir()
    (ui / "theme.json").write_text(json.dumps({"color": "blue", "size": 12, "pad": "x" * 600}))
    (config_dir / "acme" / "secret.json").write_text('{"password": "hunter2"}')
    (config_dir / "acme" / "limits.toml").write_text("rate = 5\n")
    (config_dir / "globex" / "ui").mkdir()
    (config_dir / "globex" / "ui" / "theme.json").write_text('{"globex": "private"}')
    # A link out of acme's folder, into globex's: never followed.
    os.symlink(config_dir / "globex" / "ui" / "theme.json", ui / "stolen.json")
    return config_dir


pytestmark = pytest.mark.settings(serve_content=SERVED, jwt_secret=SECRET, admin_token=ADMIN)


@pytest.mark.gen_test(timeout=60)
async def test_a_served_file_is_answered_with_its_checksum_as_etag_and_304_when_held(config_dir, core, http_url):
    body = (config_dir / "acme" / "ui" / "theme.json").read_bytes()
    r = await get(http_url, "/api/v1/tenants/acme/files/ui/theme.json")
    assert r.code == 200 and r.body == body
    assert r.headers["ETag"] == f'"{sha(body)}"'
    assert r.headers["Content-Type"] == "application/json"
    assert r.headers["Cache-Control"] == "no-cache"
    again = await get(http_url, "/api/v1/tenants/acme/files/ui/theme.json", **{"If-None-Match": r.headers["ETag"]})
    assert again.code == 304 and again.body == b""
    zipped = await get(http_url, "/api/v1/tenants/acme/files/ui/theme.json", **{"Accept-Encoding": "gzip"})
    assert zipped.headers["Content-Encoding"] == "gzip" and gzip.decompress(zipped.body) == body
    assert len(zipped.body) < len(body)
    toml = await get(http_url, "/api/v1/tenants/acme/files/limits.toml")
    assert (toml.code, toml.body, toml.headers["Content-Type"]) == (200, b"rate = 5\n", "application/toml")
    listing = await get(http_url, "/api/v1/tenants/acme/files")
    assert json.loads(listing.body) == {
        "tenant_id": "acme",
        "files": {"app.json": sha(b'{"a": 1}'), "limits.toml": sha(b"rate = 5\n"), "ui/theme.json": sha(body)},
    }  # secret.json is not served; the link out of the tenant is no file at all
    metrics = (await get(http_url, "/metrics", auth=ADMIN)).body.decode()
    assert 'cfgpush_file_requests_total{status="200"} 4.0' in metrics
    assert 'cfgpush_file_requests_total{status="304"} 1.0' in metrics


@pytest.mark.gen_test(timeout=60)
async def test_missing_not_served_and_outside_the_tenant_are_the_same_404(config_dir, core, http_url):
    answers = []
    for path in (
        "nope.json",  # no such file
        "secret.json",  # exists, not served
        "ui/stolen.json",  # a link into another tenant
        "ui/../secret.json",
        "ui/%2e%2e/secret.json",
        "../globex/ui/theme.json",
        "ui",
    ):
        r = await get(http_url, f"/api/v1/tenants/acme/files/{path}")
        answers.append((r.code, r.body))
    assert set(answers) == {(404, b'{"error": "no such served file"}')}, answers
    assert b"hunter2" not in b"".join(b for _, b in answers)


@pytest.mark.gen_test(timeout=60)
async def test_the_tenant_rule_of_ws_applies(core, http_url):
    path = "/api/v1/tenants/acme/files/ui/theme.json"
    assert (await get(http_url, path, auth=None)).code == 401
    assert (await get(http_url, path, auth=token("globex"))).code == 403
    assert (await get(http_url, "/api/v1/tenants/acme/files", auth=token("globex"))).code == 403
    assert (await get(http_url, path, auth=ADMIN)).code == 200
    assert (await get(http_url, f"{path}?token={token()}", auth=None)).code == 200
    assert (await get(http_url, "/api/v1/tenants/..%2F/files/x.json")).code == 400
    foreign = await get(http_url, path, Origin="https://evil.example")
    assert foreign.code == 403


@pytest.mark.gen_test(timeout=60)
async def test_after_a_save_the_new_version_is_served_under_the_events_checksum(config_dir, connect, core, http_url):
    client = await subscribe(connect, "acme", token=token())
    path = "/api/v1/tenants/acme/files/ui/theme.json"
    old = await get(http_url, path)
    new = json.dumps({"color": "red", "size": 12}).encode()
    (config_dir / "acme" / "ui" / "theme.json").write_bytes(new)
    event = await change(client)
    r = await get(http_url, path, **{"If-None-Match": old.headers["ETag"]})
    assert r.code == 200 and r.body == new and r.headers["ETag"] == f'"{event["checksum"]}"'


@pytest.mark.gen_test(timeout=60)
async def test_a_herd_of_requests_for_a_new_version_reads_it_once(config_dir, core, http_url, monkeypatch):
    source = fs_source(core)
    reads = []
    original = type(source).content

    async def counted(self, tenant_id, path):
        reads.append(path)
        return await original(self, tenant_id, path)

    monkeypatch.setattr(type(source), "content", counted)
    answers = await __import__("asyncio").gather(
        *(get(http_url, "/api/v1/tenants/acme/files/ui/theme.json") for _ in range(20))
    )
    assert {a.code for a in answers} == {200}
    assert reads == ["ui/theme.json"]


@pytest.mark.gen_test(timeout=60)
async def test_bytes_never_announced_are_never_served(config_dir, connect, core, http_url):
    """A save not yet announced (or refused by the gate) is not what the file's checksum names:
    the server answers the announced version, or 503 while the file changes, never those bytes."""
    target = config_dir / "acme" / "app.json"
    path = "/api/v1/tenants/acme/files/app.json"
    source = fs_source(core)
    held = dict(source._by_tenant["acme"])  # what was announced, frozen: the next save stays unannounced
    monkey = type(source)
    original = monkey.manifest
    monkey.manifest = lambda self, tenant_id: dict(held) if tenant_id == "acme" else original(self, tenant_id)
    try:
        target.write_bytes(b'{"a": "never announced"}')
        r = await get(http_url, path)
        assert r.code == 503 and r.headers["Retry-After"] == "1"
        assert b"never announced" not in r.body
    finally:
        monkey.manifest = original
    await wait_for(lambda: source.manifest("acme")["app.json"] == sha(b'{"a": "never announced"}'), EXPECT)
    assert (await get(http_url, path)).body == b'{"a": "never announced"}'


@pytest.mark.gen_test(timeout=60)
@pytest.mark.settings(serve_content=(), jwt_secret=SECRET, admin_token=ADMIN)
async def test_nothing_is_served_unless_the_operator_opts_in(core, http_url):
    assert (await get(http_url, "/api/v1/tenants/acme/files/app.json")).code == 404
    assert json.loads((await get(http_url, "/api/v1/tenants/acme/files")).body)["files"] == {}


@pytest.mark.gen_test(timeout=60)
@pytest.mark.settings(
    serve_content=SERVED, jwt_secret=SECRET, admin_token=ADMIN, allowed_origins=("https://app.example",)
)
async def test_an_allowed_page_of_another_origin_may_read_a_served_file(core, http_url):
    """CORS: the preflight of a fetch with Authorization, then the GET, from an allowed origin;
    any other origin is refused as on /ws."""
    path = "/api/v1/tenants/acme/files/ui/theme.json"
    preflight = await AsyncHTTPClient().fetch(
        f"{http_url}{path}",
        method="OPTIONS",
        headers={"Origin": "https://app.example", "Access-Control-Request-Headers": "authorization"},
        raise_error=False,
    )
    assert preflight.code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    r = await get(http_url, path, Origin="https://app.example")
    assert r.code == 200 and r.headers["Access-Control-Allow-Origin"] == "https://app.example"
    assert "ETag" in r.headers["Access-Control-Expose-Headers"]
    assert "Cfgpush-Checksum" in r.headers["Access-Control-Expose-Headers"]  # ?form=document's
    other = await AsyncHTTPClient().fetch(
        f"{http_url}{path}", method="OPTIONS", headers={"Origin": "https://evil.example"}, raise_error=False
    )
    assert other.code == 403


@pytest.mark.gen_test(timeout=60)
@pytest.mark.settings(serve_content=SERVED)
async def test_the_python_client_asks_again_after_a_503(config_dir, core, http_url):
    """A node that has not read the new version yet answers 503: the client waits its
    Retry-After and asks again."""
    import asyncio

    from tornado_cfgpush.client import Files

    source = fs_source(core)
    held = dict(source._by_tenant["acme"])
    monkey = type(source)
    original = monkey.manifest
    monkey.manifest = lambda self, tenant_id: dict(held) if tenant_id == "acme" else original(self, tenant_id)
    try:
        (config_dir / "acme" / "app.json").write_bytes(b'{"a": "new"}')
        files = Files(http_url, "acme", lambda: None, fetch_jitter=0)
        fetching = asyncio.ensure_future(files.get("app.json"))
        await wait_for(lambda: core.metrics.file_requests.get("503"), EXPECT)
    finally:
        monkey.manifest = original
    version = await fetching
    assert version.content == b'{"a": "new"}' and files.fetches >= 2


@pytest.mark.gen_test(timeout=60)
@pytest.mark.settings(serve_content=SERVED)
async def test_the_python_client_asks_again_when_a_node_answers_an_older_version(config_dir, core, http_url):
    """A node of a shared folder that has not read the new version yet answers the old one
    (304 to the client that holds it): the client, told of the new checksum, asks again."""
    import asyncio

    from tornado_cfgpush.client import ConfigChanged, Files

    files = Files(http_url, "acme", lambda: None, fetch_jitter=0)
    old = await files.get("app.json")
    source = fs_source(core)
    held = dict(source._by_tenant["acme"])
    monkey = type(source)
    original = monkey.manifest
    monkey.manifest = lambda self, tenant_id: dict(held) if tenant_id == "acme" else original(self, tenant_id)
    new = b'{"a": "newer"}'
    try:
        (config_dir / "acme" / "app.json").write_bytes(new)
        event = ConfigChanged("acme", "modified", "1-1", path="app.json", checksum=sha(new))
        changing = asyncio.ensure_future(files.changed(event))
        await wait_for(lambda: core.metrics.file_requests.get("304"), EXPECT)
    finally:
        monkey.manifest = original
    version = await changing
    assert old.content != new and version.content == new and version.checksum == sha(new)


# -- the document form (?form=document): a structured file's parsed document as canonical JSON ------

DOCUMENT_SERVED = (*SERVED, "*.yaml", "notes.txt")


@pytest.mark.gen_test(timeout=60)
@pytest.mark.settings(serve_content=DOCUMENT_SERVED, jwt_secret=SECRET, admin_token=ADMIN)
async def test_the_document_form_is_canonical_json_under_the_events_document_checksum(
    config_dir, connect, core, http_url
):
    from tornado_cfgpush.patching import canonical, document_checksum

    client = await subscribe(connect, "acme", token=token())
    target = config_dir / "acme" / "theme.yaml"
    target.write_text("color: blue\nsizes: [1, 2.5]\nlabel: " + "x" * 400 + "\n")
    await change(client)
    path = "/api/v1/tenants/acme/files/theme.yaml"
    raw = await get(http_url, path)
    doc = await get(http_url, f"{path}?form=document")
    expected = canonical({"color": "blue", "sizes": [1, 2.5], "label": "x" * 400})
    assert doc.code == 200 and doc.body == expected
    assert doc.headers["Content-Type"] == "application/json"
    assert doc.headers["ETag"] == f'"{sha(expected)}"' == f'"{document_checksum(json.loads(expected))}"'
    assert doc.headers["Cfgpush-Checksum"] == raw.headers["ETag"].strip('"')  # the raw version it is of
    assert doc.headers["Cache-Control"] == "no-cache"
    assert (await get(http_url, f"{path}?form=raw")).body == raw.body  # raw stays the default
    held = await get(http_url, f"{path}?form=document", **{"If-None-Match": doc.headers["ETag"]})
    assert held.code == 304 and held.body == b""
    assert (await get(http_url, f"{path}?form=document", **{"If-None-Match": raw.headers["ETag"]})).code == 200
    zipped = await get(http_url, f"{path}?form=document", **{"Accept-Encoding": "gzip"})
    assert zipped.headers["Content-Encoding"] == "gzip" and gzip.decompress(zipped.body) == expected
    toml = await get(http_url, "/api/v1/tenants/acme/files/limits.toml?form=document")
    assert (toml.code, toml.body) == (200, b'{"rate":5}')
    # A save: the event's patch names the new document's checksum, the document form's ETag.
    target.write_text("color: red\nsizes: [1, 2.5]\nlabel: " + "x" * 400 + "\n")
    event = await change(client)
    assert event["base_checksum"] == raw.headers["ETag"].strip('"') and event["patch"]
    new = await get(http_url, f"{path}?form=document", **{"If-None-Match": doc.headers["ETag"]})
    assert new.code == 200 and new.headers["ETag"] == f'"{event["document_checksum"]}"'
    assert json.loads(new.body)["color"] == "red"
    assert new.headers["Cfgpush-Checksum"] == event["checksum"]


@pytest.mark.gen_test(timeout=60)
@pytest.mark.settings(serve_content=DOCUMENT_SERVED, jwt_secret=SECRET, admin_token=ADMIN)
async def test_a_file_with_no_document_answers_422_and_a_bad_form_400(config_dir, core, http_url, monkeypatch):
    import asyncio

    from tornado_cfgpush import app

    parsed = []
    original = app.document_form

    def counted(path, raw):
        parsed.append(path)
        return original(path, raw)

    monkeypatch.setattr(app, "document_form", counted)
    acme = config_dir / "acme"
    (acme / "broken.yaml").write_text("a: [1, 2\n")
    (acme / "dates.toml").write_text("when = 1979-05-27\n")  # a TOML date: no JSON value
    (acme / "notes.txt").write_text("plain text\n")
    await wait_for(lambda: {"broken.yaml", "dates.toml", "notes.txt"} <= set(core.manifest("acme") or {}), EXPECT)
    answers = {}
    for name in ("broken.yaml", "dates.toml", "notes.txt"):
        r = await get(http_url, f"/api/v1/tenants/acme/files/{name}?form=document")
        assert r.code == 422 and r.headers["Content-Type"].startswith("application/json"), (name, r.code)
        answers[name] = json.loads(r.body)["reason"]
        assert (await get(http_url, f"/api/v1/tenants/acme/files/{name}")).code == 200  # raw still served
    assert answers == {"broken.yaml": "does_not_parse", "dates.toml": "not_json", "notes.txt": "not_structured"}
    # Once per version, failures too, however many ask at once.
    herd = [f"/api/v1/tenants/acme/files/{name}?form=document" for name in ("broken.yaml", "limits.toml")] * 10
    assert sorted({r.code for r in await asyncio.gather(*(get(http_url, p) for p in herd))}) == [200, 422]
    assert sorted(parsed) == ["broken.yaml", "dates.toml", "limits.toml", "notes.txt"]
    bad = await get(http_url, "/api/v1/tenants/acme/files/ui/theme.json?form=parsed")
    assert bad.code == 400 and json.loads(bad.body) == {"error": "form must be 'raw' or 'document'"}
    # Missing, not served and outside the tenant: the raw form's one 404.
    for name in ("nope.yaml", "secret.json", "ui/stolen.json"):
        r = await get(http_url, f"/api/v1/tenants/acme/files/{name}?form=document")
        assert (r.code, r.body) == (404, b'{"error": "no such served file"}'), name


@pytest.mark.gen_test(timeout=60)
async def test_the_document_form_is_authorized_as_the_raw_form(core, http_url):
    path = "/api/v1/tenants/acme/files/ui/theme.json?form=document"
    assert (await get(http_url, path, auth=None)).code == 401
    assert (await get(http_url, path, auth=token("globex"))).code == 403
    assert (await get(http_url, path, auth=ADMIN)).code == 200
    assert (await get(http_url, f"{path}&token={token()}", auth=None)).code == 200
    assert (await get(http_url, path, Origin="https://evil.example")).code == 403
    assert (await get(http_url, "/api/v1/tenants/acme/files/ui/theme.json?form=bad", auth=None)).code == 401

"""The dashboard's files and ``GET /api/v1/tenants``, over HTTP (the page itself: test_browser.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient

from tornado_cfgpush.handlers.dashboard import STATIC_DIR
from tornado_cfgpush.testing import SSEClient, wait_for

from .fshelpers import fs_source
from .statushelpers import quiet_status

ADMIN = "dashboard-admin-token"
ROOT = Path(__file__).resolve().parent.parent


async def get(url, **headers):
    return await AsyncHTTPClient().fetch(url, headers=headers, raise_error=False)


@pytest.mark.gen_test
async def test_dashboard_page_has_a_strict_policy(http_url):
    response = await get(http_url + "/")
    assert response.code == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    policy = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy and "unsafe" not in policy
    assert response.headers["X-Frame-Options"] == "DENY"
    body = response.body.decode()
    assert '<script type="module" src="dashboard.js">' in body
    # The token field has no name: even a form submitted without the script sends nothing.
    assert '<input id="token" type="password"' in body and "<input name=" not in body and ' name="token' not in body


@pytest.mark.parametrize(
    "path, content_type",
    [
        ("/cfgpush.js", "text/javascript; charset=utf-8"),
        ("/cfgpush.d.ts", "text/plain; charset=utf-8"),
        ("/dashboard.js", "text/javascript; charset=utf-8"),
        ("/dashboard.css", "text/css; charset=utf-8"),
        ("/example.html", "text/html; charset=utf-8"),
    ],
)
@pytest.mark.gen_test
async def test_static_files(http_url, path, content_type):
    response = await get(http_url + path)
    assert response.code == 200
    assert response.headers["Content-Type"] == content_type
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-cache" and response.headers["Etag"]
    assert response.body == (STATIC_DIR / path.lstrip("/")).read_bytes()
    if path.startswith("/cfgpush."):
        assert response.headers["Access-Control-Allow-Origin"] == "*"  # importable from any page


@pytest.mark.gen_test
async def test_client_module_is_plain_es_module():
    source = (STATIC_DIR / "cfgpush.js").read_text()
    assert "export class CfgPush" in source and "export default CfgPush" in source
    assert "import " not in source.split("export class")[0].replace("//   import", "")  # no dependency
    types = (STATIC_DIR / "cfgpush.d.ts").read_text()
    for name in ("tenantId", "token", "getToken", "onChange", "onResync", "onStatus"):
        assert f"  {name}" in types


@pytest.mark.gen_test
async def test_other_paths_stay_404(http_url):
    for path in ("/static/cfgpush.js", "/../setup.cfg", "/index.htm", "/cfgpush.js.map"):
        assert (await get(http_url + path)).code == 404


# -- GET /api/v1/tenants ------------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_tenant_list_is_off_without_admin_token(http_url):
    response = await get(http_url + "/api/v1/tenants", Authorization=f"Bearer {ADMIN}")
    assert response.code == 403
    assert "disabled" in json.loads(response.body)["error"]


@pytest.mark.settings(admin_token=ADMIN)
@pytest.mark.gen_test
async def test_tenant_list_needs_the_admin_token(http_url):
    assert (await get(http_url + "/api/v1/tenants")).code == 401
    assert (await get(http_url + "/api/v1/tenants", Authorization="Bearer wrong-token-x")).code == 401
    assert (await get(http_url + "/api/v1/tenants?token=" + ADMIN)).code == 401  # never from the URL


@pytest.mark.settings(admin_token=ADMIN)
@pytest.mark.gen_test(timeout=20)
async def test_tenant_list_counts_connections_and_convergence(http_url, core, connect):
    url = http_url + "/api/v1/tenants"
    body = json.loads((await get(url, Authorization=f"Bearer {ADMIN}")).body)
    # Configured tenants are listed before anyone connects.
    assert body == {
        "connections": 0,
        "total": 2,
        "next": None,
        "tenants": [quiet_status(t) for t in ("acme", "globex")],
    }
    app_a = await connect("acme")
    app_b = await connect("acme")
    other = await connect("tenant-without-files")
    for client in (app_a, app_b, other):
        await client.expect("Welcome")
    dashboard = await SSEClient.open(
        http_url, "acme", headers={"X-CfgPush-Observer": "dashboard", "Authorization": f"Bearer {ADMIN}"}
    )
    try:
        await dashboard.expect("Welcome")
        event_id = await core.publish({"tenant_id": "acme", "change_type": "modified", "path": "app.json"}, "t")
        await app_a.send({"Ack": {"event_id": event_id}})
        await wait_for(lambda: any(c.acked == event_id for c in core.hub.connections("acme")))
        body = json.loads((await get(url, Authorization=f"Bearer {ADMIN}")).body)
        tenants = {t["tenant_id"]: t for t in body["tenants"]}
        assert body["connections"] == 4
        assert tenants["acme"] == {
            "tenant_id": "acme",
            "connections": 3,
            "connections_by_transport": {"ws": 2, "sse": 1},
            "observers": 1,
            "clients": 2,
            "last_event_id": event_id,
            "converged": 1,
            "failed": 0,
            "failures": [],
            "invalid": [],
        }
        assert tenants["tenant-without-files"]["connections"] == 1  # connected, not configured
        assert tenants["globex"]["connections"] == 0  # configured, not connected
    finally:
        dashboard.close()


@pytest.mark.settings(admin_token=ADMIN)
@pytest.mark.gen_test(timeout=30)
async def test_tenant_list_is_paged_and_filtered(http_url, core, connect, config_dir):
    """issue #17.3: ``prefix``, ``with_clients``, ``limit`` and ``after`` (the previous page's
    ``next``); every tenant exactly once over the pages; bad parameters are 400 with a reason."""
    for n in range(25):
        (config_dir / f"t{n:03d}").mkdir()
        (config_dir / f"t{n:03d}" / "a.json").write_text("{}")
    await wait_for(lambda: len(fs_source(core).tenants()) >= 27, 10)
    auth = {"Authorization": f"Bearer {ADMIN}"}

    async def page(query):
        response = await get(f"{http_url}/api/v1/tenants?{query}", **auth)
        return response.code, json.loads(response.body)

    seen, after, pages = [], None, 0
    while True:
        code, body = await page("limit=10" + (f"&after={after}" if after else ""))
        assert code == 200 and body["total"] == 27 and len(body["tenants"]) <= 10
        seen += [t["tenant_id"] for t in body["tenants"]]
        pages += 1
        after = body["next"]
        if after is None:
            break
        assert after == seen[-1]
    assert pages == 3 and seen == sorted(seen) and len(set(seen)) == 27
    code, body = await page("prefix=t01&limit=5")
    assert [t["tenant_id"] for t in body["tenants"]] == [f"t01{n}" for n in range(5)]
    assert (body["total"], body["next"]) == (10, "t014")
    assert (await page("prefix=zzz"))[1] == {"tenants": [], "connections": 0, "total": 0, "next": None}
    client = await connect("t007")
    await client.expect("Welcome")
    watcher = await connect("t008", headers={"X-CfgPush-Observer": "dashboard", **auth})
    await watcher.expect("Welcome")
    code, body = await page("with_clients=1")
    assert [t["tenant_id"] for t in body["tenants"]] == ["t007"] and body["connections"] == 2
    for query, fragment in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("limit=5&limit=6", "once"),
        ("prefix=", "prefix"),
        ("prefix=a/b", "prefix"),
        ("with_clients=yes", "with_clients"),
        ("after=..", "after"),
        ("lmit=5", "unknown query parameter"),
    ]:
        code, body = await page(query)
        assert code == 400 and fragment in body["error"], (query, body)


# -- packaging --------------------------------------------------------------------------------------


def test_static_files_ship_in_the_package(tmp_path):
    """setup.cfg's package_data: building the package copies every static file into it."""
    done = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path / "lib")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    built = tmp_path / "lib" / "tornado_cfgpush" / "static"
    assert sorted(p.name for p in built.iterdir()) == sorted(p.name for p in STATIC_DIR.iterdir())
    scripts = {e.name: e.value for e in metadata.entry_points(group="console_scripts")}
    assert scripts["cfgpush-tail"] == "tornado_cfgpush.tail:main"

"""cfgpush-webhook through a real server: GitHub and GitLab push payloads over HTTP, events over
WebSocket. The plugin is loaded from its installed entry point, as a user's would be.

"Nothing was emitted" is proved by order, never by waiting: after a refused request, a valid
one is sent, and the next event the client gets must be the valid one's.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import uuid
from importlib import metadata

import cfgpush_webhook
import pytest
from cfgpush_webhook import ReplayGuard, net_changes

from tornado_cfgpush.plugins import get_plugin_manager, known_plugin_names
from tornado_cfgpush.settings import Settings
from tornado_cfgpush.testing import COMMAND, clean_env

SECRET = "s3cret-webhook-0123456789"


@pytest.fixture
def extra():
    return {"webhook_secret": SECRET, "webhook_root": "config", "webhook_replay_memory": 100}


# The running server is tornado_cfgpush.testing's (``core``, ``app``, ``connect``), made of these:


@pytest.fixture
def settings(extra, tmp_path):
    return Settings(config_dir=tmp_path, extra=extra)


@pytest.fixture
def plugin_manager(settings):
    """Only this distribution's plugin: the installed entry point, as a user gets it."""
    return get_plugin_manager(sorted(known_plugin_names() - {"webhook"}))


@pytest.fixture
def ws(connect):
    async def welcomed(tenant_id: str):
        client = await connect(tenant_id)
        await client.expect("Welcome", timeout=5)
        return client

    return welcomed


async def expect(client, timeout: float = 5.0) -> dict:
    return await client.expect("ConfigChanged", timeout)


def github_push(commits, ref="refs/heads/main", after=None):
    return {
        "ref": ref,
        "after": after or uuid.uuid4().hex + "00000000",
        "repository": {"full_name": "acme/config", "default_branch": "main"},
        "commits": commits,
    }


def gitlab_push(commits, ref="refs/heads/main", total=None):
    return {
        "object_kind": "push",
        "ref": ref,
        "checkout_sha": uuid.uuid4().hex,
        "project": {"path_with_namespace": "acme/config", "default_branch": "main"},
        "commits": commits,
        "total_commits_count": len(commits) if total is None else total,
    }


def commit(added=(), modified=(), removed=()):
    return {"id": uuid.uuid4().hex, "added": list(added), "modified": list(modified), "removed": list(removed)}


@pytest.fixture
def post(http_client, http_port):
    async def _post(payload, *, forge="github", secret=SECRET, delivery=None, event=None, signature=None, body=None):
        body = body if body is not None else json.dumps(payload).encode()
        delivery = delivery or str(uuid.uuid4())
        if forge == "github":
            headers = {"X-GitHub-Event": event or "push", "X-GitHub-Delivery": delivery}
            if secret is not None:
                digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
                headers["X-Hub-Signature-256"] = signature or f"sha256={digest}"
        else:
            headers = {"X-Gitlab-Event": event or "Push Hook", "X-Gitlab-Event-UUID": delivery}
            if secret is not None:
                headers["X-Gitlab-Token"] = secret
        headers["Content-Type"] = "application/json"
        response = await http_client.fetch(
            f"http://127.0.0.1:{http_port}/hooks/git", method="POST", body=body, headers=headers, raise_error=False
        )
        return response.code, json.loads(response.body)

    return _post


@pytest.mark.gen_test(timeout=30)
async def test_github_push_emits_one_event_per_changed_file(ws, post):
    acme = await ws("acme")
    globex = await ws("globex")
    payload = github_push(
        [
            commit(
                added=["config/acme/new.json", "README.md", "config/.github/x.yml"], modified=["config/acme/app.json"]
            ),
            commit(modified=["config/acme/new.json"], removed=["config/globex/old.json"]),
            commit(added=["config/acme/tmp.json"]),
            commit(removed=["config/acme/tmp.json"]),
        ],
        after="c0ffee" * 6 + "abcd",
    )
    code, body = await post(payload)
    assert code == 202, body
    assert sorted(body["skipped"]) == ["README.md", "config/.github/x.yml"]
    got = {}
    for _ in range(2):
        event = await expect(acme)
        got[event["path"]] = event
    assert {p: e["change_type"] for p, e in got.items()} == {"app.json": "modified", "new.json": "created"}
    assert all("checksum" not in e for e in got.values())  # unknown: a push carries no content
    assert got["app.json"]["source"] == "webhook"
    assert got["app.json"]["meta"] == {
        "forge": "github",
        "ref": "refs/heads/main",
        "commit": "c0ffee" * 6 + "abcd",
        "repository": "acme/config",
    }
    deleted = await expect(globex)
    assert (deleted["path"], deleted["change_type"], deleted["checksum"]) == ("old.json", "deleted", None)
    assert {e["event_id"] for e in body["events"]} == {e["event_id"] for e in got.values()} | {deleted["event_id"]}


@pytest.mark.gen_test(timeout=30)
async def test_bad_or_missing_signature_gets_401_and_emits_nothing(ws, post):
    acme = await ws("acme")
    refused = github_push([commit(modified=["config/acme/refused.json"])])
    assert (await post(refused, secret="the-wrong-secret-123"))[0] == 401
    assert (await post(refused, secret=None))[0] == 401
    assert (await post(refused, signature="sha256=" + "0" * 64))[0] == 401
    assert (await post(refused, forge="gitlab", secret="the-wrong-secret-123"))[0] == 401
    assert (await post(refused, forge="gitlab", secret=None))[0] == 401
    code, _ = await post(github_push([commit(modified=["config/acme/accepted.json"])]))
    assert code == 202
    assert (await expect(acme))["path"] == "accepted.json"


@pytest.mark.gen_test(timeout=30)
async def test_gitlab_push_with_token(ws, post):
    acme = await ws("acme")
    code, body = await post(gitlab_push([commit(added=["config/acme/gl.json"])]), forge="gitlab")
    assert code == 202, body
    event = await expect(acme)
    assert (event["path"], event["change_type"], event["meta"]["forge"]) == ("gl.json", "created", "gitlab")


@pytest.mark.gen_test(timeout=30)
async def test_replays_are_refused(ws, post):
    acme = await ws("acme")
    payload = github_push([commit(modified=["config/acme/once.json"])])
    delivery = str(uuid.uuid4())
    assert (await post(payload, delivery=delivery))[0] == 202
    assert (await expect(acme))["path"] == "once.json"
    assert (await post(payload, delivery=delivery))[0] == 409  # same delivery id
    assert (await post(payload))[0] == 409  # same signed body, new id
    other = github_push([commit(modified=["config/acme/x.json"])])
    assert (await post(other, delivery=delivery))[0] == 409  # same id, other body
    assert (await post(gitlab_push([commit(modified=["config/acme/y.json"])]), forge="gitlab", delivery=delivery))[
        0
    ] == 202  # ids are per forge
    assert (await expect(acme))["path"] == "y.json"


def test_replay_memory_is_bounded():
    guard = ReplayGuard(size=3)
    for n in range(10):
        guard.remember(f"id{n}")
    assert len(guard) == 3
    assert guard.seen("id9") and not guard.seen("id0")


@pytest.mark.gen_test(timeout=30)
async def test_other_branches_events_and_pings_emit_nothing(ws, post):
    acme = await ws("acme")
    code, body = await post(github_push([commit(modified=["config/acme/f.json"])], ref="refs/heads/feature"))
    assert (code, body["events"]) == (200, [])
    assert (await post({"zen": "hi"}, event="ping")) == (200, {"ok": "pong"})
    assert (await post({}, event="issues"))[0] == 202
    assert (await post(None, body=b"not json"))[0] == 400
    assert (await post(github_push([commit(modified=["config/acme/main.json"])])))[0] == 202
    assert (await expect(acme))["path"] == "main.json"


@pytest.mark.gen_test(timeout=30)
async def test_truncated_push_resyncs_every_client(ws, post):
    acme = await ws("acme")
    code, body = await post(gitlab_push([commit(modified=["config/acme/a.json"])], total=40), forge="gitlab")
    assert (code, body["resync"]) == (202, True)
    assert (await expect(acme))["path"] == "a.json"
    assert (await acme.expect("Resync", timeout=5))["reason"] == "source_gap"


def test_net_changes_across_commits():
    assert net_changes(
        [
            commit(added=["a"]),
            commit(modified=["a"]),
            commit(removed=["b"]),
            commit(added=["b"]),
            commit(added=["c"]),
            commit(removed=["c"]),
            commit(modified=["d"]),
        ]
    ) == {"a": "created", "b": "modified", "d": "modified"}


@pytest.mark.gen_test(timeout=30)
async def test_not_a_forge_request_is_refused(http_client, http_port, core):
    response = await http_client.fetch(
        f"http://127.0.0.1:{http_port}/hooks/git", method="POST", body=b"{}", raise_error=False
    )
    assert response.code == 400


def test_no_route_and_no_source_without_a_secret():
    assert cfgpush_webhook.cfgpush_register_routes(settings=Settings()) == []
    assert cfgpush_webhook.cfgpush_register_sources(settings=Settings()) == []
    with pytest.raises(ValueError, match="at least 16"):
        cfgpush_webhook.cfgpush_register_sources(settings=Settings(extra={"webhook_secret": "short"}))


def test_cfgpush_serve_lists_it_and_takes_its_options(tmp_path):
    listed = subprocess.run(
        [*COMMAND, "--plugins"], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=clean_env()
    )
    assert listed.returncode == 0, listed.stderr
    plugins = {entry["name"]: entry for entry in json.loads(listed.stdout)}
    assert plugins["webhook"] == {
        "name": "webhook",
        "distribution": "cfgpush-webhook",
        "version": metadata.version("cfgpush-webhook"),
        "hooks": ["cfgpush_add_options", "cfgpush_register_routes", "cfgpush_register_sources"],
    }
    config = tmp_path / "c.toml"
    config.write_text('webhook-root = "tenants"\nwebhook-replay-memory = 50\n')
    shown = subprocess.run(
        [*COMMAND, "--config", str(config), "--print-config"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=clean_env(CFGPUSH_WEBHOOK_SECRET=SECRET),
    )
    assert shown.returncode == 0, shown.stderr
    assert SECRET not in shown.stdout
    assert 'webhook-secret = "<redacted>"  # CFGPUSH_WEBHOOK_SECRET' in shown.stdout
    assert f'webhook-root = "tenants"  # {config}: webhook-root' in shown.stdout
    assert "webhook-replay-memory = 50" in shown.stdout

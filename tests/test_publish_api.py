"""``POST /api/v1/events`` (docs/protocol.md section 4): the same schema and path as every source."""

import json

import pytest
from tornado.httpclient import HTTPRequest

from tornado_cfgpush.app import CfgPush
from tornado_cfgpush.handlers.publish import PublishBudget
from tornado_cfgpush.plugins import get_plugin_manager

TOKEN = "publish-token-123"
CHECKSUM = "sha256:" + "b" * 64


async def post(http_client, http_url, body, token=TOKEN, content_type="application/json"):
    headers = {"Content-Type": content_type}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    response = await http_client.fetch(
        HTTPRequest(f"{http_url}/api/v1/events", method="POST", body=data, headers=headers), raise_error=False
    )
    return response.code, json.loads(response.body)


@pytest.mark.settings(publish_token=TOKEN)
@pytest.mark.gen_test
async def test_published_event_reaches_the_tenant_and_is_idempotent(http_client, http_url, connect):
    client = await connect("acme")
    other = await connect("globex")
    await client.expect("Welcome")
    await other.expect("Welcome")
    body = {"tenant_id": "acme", "change_type": "modified", "path": "billing/limits.json", "checksum": CHECKSUM}
    code, answer = await post(http_client, http_url, body)
    assert code == 202
    event = await client.expect("ConfigChanged")
    assert event["event_id"] == answer["event_id"]
    assert (event["path"], event["checksum"], event["source"]) == ("billing/limits.json", CHECKSUM, "api")
    # The same (tenant, path, checksum) again: a no-op answering the earlier id.
    assert await post(http_client, http_url, body) == (202, answer)
    await client.expect_nothing()
    await other.expect_nothing(0.05)


@pytest.mark.settings(publish_token=TOKEN)
@pytest.mark.parametrize(
    "body, fields",
    [
        ({"change_type": "modified"}, {"tenant_id": ["Missing data for required field."]}),
        (
            {"tenant_id": "../etc", "change_type": "modified"},
            {"tenant_id": ["tenant_id must start with a letter or digit."]},
        ),
        (
            {"tenant_id": "acme", "change_type": "exploded"},
            {"change_type": ["must be one of: created, modified, deleted, moved."]},
        ),
        ({"tenant_id": "acme", "change_type": "modified", "event_id": "1-1"}, {"event_id": ["Unknown field."]}),
        (
            {"tenant_id": "acme", "change_type": "modified", "checksum": "md5:x"},
            {"checksum": ["must be 'sha256:' and 64 lowercase hex digits."]},
        ),
        (
            {"tenant_id": "acme", "change_type": "modified", "path": "/etc/passwd"},
            {"path": ["path must be relative and '/'-separated."]},
        ),
        # Found by schemathesis: before year 1 in UTC, a 500 until the schema checked the range.
        (
            {"tenant_id": "acme", "change_type": "modified", "timestamp": "0001-01-01T00:42:01+02:00"},
            {"timestamp": ["timestamp is out of range."]},
        ),
    ],
)
@pytest.mark.gen_test
async def test_schema_errors_are_400_per_field_and_publish_nothing(http_client, http_url, connect, core, body, fields):
    client = await connect("acme")
    await client.expect("Welcome")
    code, answer = await post(http_client, http_url, body)
    assert code == 400
    assert answer["fields"] == fields
    await client.expect_nothing(0.1)
    assert (await core.broker.catch_up("acme", None)).last_event_id is None


@pytest.mark.settings(publish_token=TOKEN)
@pytest.mark.parametrize(
    "body, content_type, code, fragment",
    [
        (b"{not json", "application/json", 400, "the body is not JSON"),
        (b"[1, 2]", "application/json", 400, "must be a JSON object"),
        (b"tenant_id=acme", "application/x-www-form-urlencoded", 415, "must be JSON"),
        (b" " * (64 * 1024 + 1), "application/json", 413, "at most"),
    ],
)
@pytest.mark.gen_test
async def test_bad_bodies(http_client, http_url, core, body, content_type, code, fragment):
    got, answer = await post(http_client, http_url, body, content_type=content_type)
    assert got == code
    assert fragment in answer["error"]


@pytest.mark.settings(publish_token=TOKEN)
@pytest.mark.parametrize("token, code", [(None, 401), ("wrong-token-1", 403), (TOKEN + "x", 403)])
@pytest.mark.gen_test
async def test_tokens(http_client, http_url, core, token, code):
    got, answer = await post(http_client, http_url, {"tenant_id": "acme", "change_type": "modified"}, token=token)
    assert got == code
    assert TOKEN not in json.dumps(answer)


@pytest.mark.gen_test
async def test_without_a_publish_token_configured_the_api_is_off(http_client, http_url, core):
    got, answer = await post(http_client, http_url, {"tenant_id": "acme", "change_type": "modified"})
    assert got == 403
    assert "disabled" in answer["error"]


@pytest.fixture
def core(io_loop, settings, request):
    """With ``redis_server`` requested, the service publishes through that private Redis."""
    if "redis_server" in request.fixturenames:
        settings = settings.replace(broker=request.getfixturevalue("redis_server").url)
    service = CfgPush(settings, get_plugin_manager(load_entry_points=False))
    io_loop.run_sync(service.start)
    io_loop.run_sync(service.wait_started)
    yield service
    io_loop.run_sync(service.stop)


@pytest.mark.settings(publish_token=TOKEN)
@pytest.mark.gen_test(timeout=60)
async def test_broker_unreachable_is_503_and_nothing_half_published(redis_server, http_client, http_url, core):
    body = {"tenant_id": "acme", "change_type": "modified", "path": "a.json", "checksum": CHECKSUM}
    code, _ = await post(http_client, http_url, body)
    assert code == 202
    redis_server.kill()
    code, answer = await post(http_client, http_url, {**body, "checksum": "sha256:" + "c" * 64})
    assert code == 503
    assert "nothing was published" in answer["error"]


# -- the path rule: what Linux allows (issue 12 point 4) -------------------------------------------


def long_path(total_bytes: int, segment: str = "d" * 254) -> str:
    """A path of exactly ``total_bytes`` bytes of UTF-8 from ``segment``-sized folders."""
    parts, size = [], 0
    while size + len(segment.encode()) + 1 < total_bytes:
        parts.append(segment)
        size += len(segment.encode()) + 1
    parts.append("f" * (total_bytes - size))
    path = "/".join(parts)
    assert len(path.encode()) == total_bytes
    return path


@pytest.mark.settings(publish_token=TOKEN)
@pytest.mark.parametrize(
    "path, accepted",
    [
        (long_path(4095), True),
        (long_path(4096), False),
        ("a" * 1500 + "/b", False),  # one segment over 255 bytes
        ("/".join(["x" * 200] * 7), True),  # 1 406 characters: refused before (1 024 at most)
        ("é" * 127 + "a", True),  # 255 bytes in 128 characters
        ("é" * 128, False),  # 256 bytes in 128 characters
        ("dir/" + "\U0001f600" * 63 + "abc", True),  # 255 bytes
        ("dir/" + "\U0001f600" * 64, False),  # 256 bytes in 64 characters
        ("ü" * 2047 + "/x", False),  # 4 096 bytes in 2 049 characters (and a segment too long)
    ],
)
@pytest.mark.gen_test
async def test_paths_up_to_what_linux_allows_are_published(http_client, http_url, connect, path, accepted):
    client = await connect("acme")
    await client.expect("Welcome")
    code, answer = await post(http_client, http_url, {"tenant_id": "acme", "change_type": "modified", "path": path})
    if accepted:
        assert code == 202, answer
        assert (await client.expect("ConfigChanged"))["path"] == path
    else:
        assert code == 400
        (message,) = answer["fields"]["path"]
        assert "bytes in UTF-8" in message
        await client.expect_nothing(0.05)


# -- the budget per token (issue 18 deliverable 4) ----------------------------------------------------

OTHER = "second-publish-token"


@pytest.mark.settings(publish_token=(TOKEN, OTHER), publish_rate=2, publish_burst=3)
@pytest.mark.gen_test
async def test_past_its_budget_a_token_gets_429_with_retry_after_and_publishes_nothing(
    http_client, http_url, connect, core
):
    client = await connect("acme")
    await client.expect("Welcome")
    body = {"tenant_id": "acme", "change_type": "modified"}
    for n in range(3):  # the burst; a refused body spends the budget too
        code, _ = await post(http_client, http_url, {**body, "path": f"{n}.json"} if n != 1 else {"bad": 1})
        assert code == (400 if n == 1 else 202)
    # A wrong token is refused before it could spend anything.
    assert (await post(http_client, http_url, body, token="not-a-publish-token"))[0] == 403
    newest = (await core.broker.catch_up("acme", None)).last_event_id
    response = await http_client.fetch(
        HTTPRequest(
            f"{http_url}/api/v1/events",
            method="POST",
            body=json.dumps({**body, "path": "over.json"}),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        ),
        raise_error=False,
    )
    assert response.code == 429
    assert response.headers["Retry-After"] == "1"
    assert "budget of 2 events per second" in json.loads(response.body)["error"]
    assert (await core.broker.catch_up("acme", None)).last_event_id == newest
    # Another publisher has its own budget.
    code, _ = await post(http_client, http_url, {**body, "path": "other.json"}, token=OTHER)
    assert code == 202
    paths = [(await client.expect("ConfigChanged"))["path"] for _ in range(3)]
    assert paths == ["0.json", "2.json", "other.json"]
    assert core.metrics.rejected_events[("api", "rate_limited")] == 1


def test_the_budget_refills_at_its_rate_and_never_past_the_burst():
    now = [100.0]
    budget = PublishBudget(rate=10, burst=5, clock=lambda: now[0])
    assert [budget.spend("t") for _ in range(5)] == [0.0] * 5
    assert budget.spend("t") == pytest.approx(0.1)  # one event comes back in 0.1 s
    now[0] += 0.25
    assert [budget.spend("t") for _ in range(2)] == [0.0, 0.0]
    assert budget.spend("t") == pytest.approx(0.05)
    now[0] += 3600  # idle for an hour: a burst, not 36 000 events
    assert sum(1 for _ in range(10) if budget.spend("t") == 0.0) == 5
    assert PublishBudget(rate=0, burst=0).spend("t") == 0.0  # 0: no limit

"""``/events`` (Server-Sent Events) over a real HTTP connection, parsed as the spec says."""

import pytest

from tornado_cfgpush.testing import publish, wait_for


@pytest.mark.gen_test
async def test_stream_headers_welcome_and_events(connect_sse, core):
    client = await connect_sse("acme")
    welcome = await client.expect("Welcome")
    assert welcome == {"tenant_id": "acme", "last_event_id": None, "heartbeat_interval": 5, "protocol": 1}
    assert client.code == 200
    assert client.headers["content-type"].startswith("text/event-stream")
    assert client.headers["cache-control"] == "no-cache"
    assert client.headers["x-accel-buffering"] == "no"
    event_id = await publish(core)
    event = await client.next()
    assert (event.type, event.id) == ("ConfigChanged", event_id)
    body = event.json()
    assert body["event_id"] == event_id and body["tenant_id"] == "acme" and body["path"] == "app.json"
    assert core.hub.connection_count("acme") == 1


@pytest.mark.gen_test
async def test_sse_and_ws_share_one_delivery(connect_sse, connect, core):
    stream = await connect_sse("acme")
    ws = await connect("acme")
    await stream.expect("Welcome")
    await ws.expect("Welcome")
    event_id = await publish(core, meta={"note": "line one\nline two"})
    assert (await ws.expect("ConfigChanged"))["event_id"] == event_id
    body = await stream.expect("ConfigChanged")
    assert body["meta"]["note"] == "line one\nline two"  # a newline in a value stays one data line


@pytest.mark.gen_test
async def test_last_event_id_header_resumes(connect_sse, core):
    ids = [await publish(core, path=f"f{i}.json") for i in range(5)]
    client = await connect_sse("acme", headers={"Last-Event-ID": ids[1]})
    welcome_event = await client.next()
    assert welcome_event.type == "Welcome"
    assert welcome_event.json()["last_event_id"] == ids[-1]
    # While the replay follows, the stream's id stays the client's own: a reconnect now loses nothing.
    assert welcome_event.id == ids[1]
    replayed = [(await client.next()).id for _ in range(3)]
    assert replayed == ids[2:]
    live = await publish(core, path="live.json")
    assert (await client.next()).id == live
    assert client.last_event_id == live


@pytest.mark.gen_test
async def test_last_event_id_query_resumes_and_unknown_ids_resync(connect_sse, core):
    ids = [await publish(core, path=f"f{i}.json") for i in range(3)]
    client = await connect_sse("acme", last_event_id=ids[0])
    await client.expect("Welcome")
    assert [(await client.next()).id for _ in range(2)] == ids[1:]
    stale = await connect_sse("acme", last_event_id="1-1")
    await stale.expect("Welcome")
    resync = await stale.next()
    assert resync.type == "Resync"
    assert resync.json()["reason"] == "unknown_epoch"
    assert resync.json()["last_event_id"] == ids[-1]
    assert resync.id == ids[-1]
    assert resync.json()["manifest"] == {"app.json": resync.json()["manifest"]["app.json"]}


@pytest.mark.settings(heartbeat_interval=0.2, heartbeat_timeout=0.4)
@pytest.mark.gen_test
async def test_ping_comments_every_interval(connect_sse, core):
    client = await connect_sse("acme")
    await client.expect("Welcome")
    await wait_for(lambda: client.comments.count("ping") >= 2, timeout=5)
    # An SSE client cannot answer; silence is not a reason to drop it.
    assert core.hub.connection_count("acme") == 1
    assert core.hub.heartbeat_closes == 0


@pytest.mark.parametrize(
    "query, reason",
    [
        ({"tenant_id": ""}, "tenant_id must not be empty"),
        ({"tenant_id": "a/b"}, "tenant_id may contain only"),
        ({"tenant_id": "acme", "last_event_id": "x"}, "last_event_id must look like"),
    ],
)
@pytest.mark.gen_test
async def test_same_refusals_as_ws(http_client, http_url, query, reason):
    from urllib.parse import urlencode

    response = await http_client.fetch(f"{http_url}/events?{urlencode(query)}", raise_error=False)
    assert response.code == 400
    import json

    assert json.loads(response.body)["error"].startswith(reason)


@pytest.mark.gen_test
async def test_missing_tenant_is_400(http_client, http_url):
    response = await http_client.fetch(f"{http_url}/events", raise_error=False)
    assert response.code == 400


@pytest.mark.gen_test
async def test_shutdown_ends_the_stream(connect_sse, core):
    client = await connect_sse("acme")
    await client.expect("Welcome")
    core.hub.close_all()
    response = await client.ended()
    assert response.code == 200
    assert core.hub.connection_count() == 0


@pytest.mark.gen_test
async def test_tenants_never_cross_on_sse(connect_sse, core):
    acme = await connect_sse("acme")
    globex = await connect_sse("globex")
    await acme.expect("Welcome")
    await globex.expect("Welcome")
    await publish(core, tenant_id="globex")
    assert (await globex.expect("ConfigChanged"))["tenant_id"] == "globex"
    await publish(core, tenant_id="acme")
    assert (await acme.expect("ConfigChanged"))["tenant_id"] == "acme"
    assert acme.events.empty() and globex.events.empty()

"""``/ws`` over real sockets: refusals, Welcome, client messages, limits, heartbeat, fan-out."""

import asyncio
import json

import pytest

from tornado_cfgpush import hookimpl
from tornado_cfgpush.events import Event
from tornado_cfgpush.testing import publish, wait_for

from .rawws import RawWebSocket

# -- refused before the upgrade -------------------------------------------------------------------


@pytest.mark.parametrize(
    "query, reason",
    [
        ("", "tenant_id is required"),
        ("tenant_id=", "tenant_id must not be empty"),
        ("tenant_id=" + "a" * 65, "tenant_id must be at most 64 characters"),
        ("tenant_id=..", "tenant_id must start with a letter or digit"),
        ("tenant_id=.hidden", "tenant_id must start with a letter or digit"),
        ("tenant_id=a/b", "tenant_id may contain only"),
        ("tenant_id=a%2Fb", "tenant_id may contain only"),
        ("tenant_id=a%20b", "tenant_id may contain only"),
        ("tenant_id=a+b", "tenant_id may contain only"),
        ("tenant_id=a%00b", "tenant_id may contain only"),
        ("tenant_id=a%0A", "tenant_id may contain only"),
        ("tenant_id=caf%C3%A9", "tenant_id may contain only"),
        ("tenant_id=%ff", "tenant_id is not valid UTF-8"),
        ("tenant_id=acme&tenant_id=globex", "tenant_id must be given once"),
        ("tenant_id=acme&last_event_id=abc", "last_event_id must look like"),
    ],
)
@pytest.mark.gen_test
async def test_invalid_requests_get_400_with_a_json_reason(server_port, query, reason, core):
    ws = await RawWebSocket.connect(server_port, query)
    try:
        assert ws.status == 400
        assert b"application/json" in ws.headers
        assert json.loads(ws.body)["error"].startswith(reason)
        assert core.hub.connection_count() == 0
    finally:
        ws.close()


@pytest.mark.gen_test
async def test_plain_http_without_upgrade_gets_400(http_client, http_url):
    response = await http_client.fetch(f"{http_url}/ws?tenant_id=acme", raise_error=False)
    assert response.code == 400
    assert "WebSocket upgrade" in json.loads(response.body)["error"]


@pytest.mark.gen_test
async def test_cross_origin_upgrade_gets_403(server_port):
    ws = await RawWebSocket.connect(server_port, "tenant_id=acme", extra_headers="Origin: https://evil.example\r\n")
    try:
        assert ws.status == 403
        assert json.loads(ws.body) == {"error": "Origin not allowed"}
    finally:
        ws.close()


@pytest.mark.gen_test
async def test_same_origin_upgrade_is_accepted(server_port):
    ws = await RawWebSocket.connect(
        server_port, "tenant_id=acme", extra_headers=f"Origin: http://127.0.0.1:{server_port}\r\n"
    )
    try:
        assert ws.status == 101
        assert "Welcome" in await ws.read_json()
    finally:
        ws.close()


@pytest.mark.gen_test
async def test_unknown_path_is_a_json_404(http_client, http_url):
    response = await http_client.fetch(f"{http_url}/nope", raise_error=False)
    assert response.code == 404
    assert json.loads(response.body) == {"error": "no such endpoint"}


@pytest.mark.gen_test
async def test_healthz(http_client, http_url):
    response = await http_client.fetch(f"{http_url}/healthz")
    assert json.loads(response.body) == {"status": "ok"}


# -- after the upgrade ----------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_welcome_names_the_newest_event(connect, core):
    first = await publish(core, checksum="sha256:" + "1" * 64)
    second = await publish(core, checksum="sha256:" + "2" * 64)
    assert first != second
    client = await connect("acme")
    welcome = await client.expect("Welcome")
    assert welcome["last_event_id"] == second
    # Events after Welcome reach the client; the earlier ones are not replayed.
    third = await publish(core, checksum="sha256:" + "3" * 64)
    assert (await client.expect("ConfigChanged"))["event_id"] == third


@pytest.mark.gen_test
async def test_event_ids_are_ordered_per_tenant_and_share_an_epoch(core):
    ids = [await publish(core, path=f"f{i}.json") for i in range(3)]
    other = await publish(core, tenant_id="globex")
    epochs = {i.split("-")[0] for i in ids + [other]}
    assert len(epochs) == 1
    assert [int(i.split("-")[1]) for i in ids] == [1, 2, 3]
    assert other.endswith("-1")


@pytest.mark.gen_test
async def test_same_checksum_for_a_path_is_published_once(core, connect):
    client = await connect("acme")
    await client.expect("Welcome")
    checksum = "sha256:" + "a" * 64
    first = await publish(core, checksum=checksum)
    again = await publish(core, checksum=checksum)
    assert again == first
    await client.expect("ConfigChanged")
    await client.expect_nothing()


@pytest.mark.parametrize(
    "sent, expected",
    [
        ('"Ping"', "Pong"),
        ("Ping", "Pong"),
        ('{"Ping": {}}', "Pong"),
        ('{"Ping": null}', "Pong"),
        ('{"Ping": {"id": 42}}', {"Pong": {"id": 42}}),
        ('{"Ping": {"id": "abc"}}', {"Pong": {"id": "abc"}}),
        ('{"Ping": {"id": null}}', {"Pong": {"id": None}}),
    ],
)
@pytest.mark.gen_test
async def test_ping_gets_pong(connect, sent, expected):
    client = await connect("acme")
    await client.expect("Welcome")
    await client.send(sent)
    assert await client.next() == expected


@pytest.mark.parametrize(
    "sent, fragment",
    [
        ("hello", "not JSON"),
        ("[1, 2]", "expected"),
        ("42", "expected"),
        ('"Pong"', "expected"),
        ("{}", "exactly one message type"),
        ('{"Nope": {}}', "Nope: Unknown field"),
        ('{"Ping": {}, "Ack": {"event_id": "1-1"}}', ""),
        ('{"Ping": {"id": [1]}}', "must be a JSON scalar"),
        ('{"Ping": {"id": 1, "x": 2}}', "x: Unknown field"),
        ('{"Ack": {}}', "event_id: Missing data"),
        ('{"Ack": {"event_id": "../x"}}', "event_id must look like"),
        (b"\x00\x01binary", "binary frames are not accepted"),
    ],
)
@pytest.mark.gen_test
async def test_bad_client_messages_get_an_error_and_the_connection_stays(connect, sent, fragment):
    client = await connect("acme")
    await client.expect("Welcome")
    await client.send(sent)
    error = await client.expect("Error")
    assert error["code"] == "bad_message"
    assert fragment in error["message"]
    await client.send("Ping")
    assert await client.next() == "Pong"


@pytest.mark.gen_test
async def test_ack_is_recorded(connect, core):
    client = await connect("acme")
    await client.expect("Welcome")
    event_id = await publish(core)
    await client.expect("ConfigChanged")
    await client.send({"Ack": {"event_id": event_id}})
    await client.send("Ping")
    assert await client.next() == "Pong"
    [conn] = core.hub.connections("acme")
    assert conn.acked == event_id


@pytest.mark.gen_test
async def test_message_over_the_size_limit_closes_with_1009(connect, core):
    client = await connect("acme")
    await client.expect("Welcome")
    await client.send('{"Ping": {"id": "' + "x" * 5000 + '"}}')
    closed = await client.closed()
    assert closed.code == 1009
    await wait_for(lambda: core.hub.connection_count() == 0)


@pytest.mark.settings(max_client_rate=5)
@pytest.mark.gen_test
async def test_message_flood_closes_with_1008(connect, core):
    client = await connect("acme")
    await client.expect("Welcome")
    for _ in range(10):
        await client.send("Ping")
    closed = await client.closed()
    assert closed.code == 1008
    assert core.hub.connection_count() == 0


@pytest.mark.gen_test
async def test_invalid_utf8_and_bad_frames_drop_only_that_client(server_port, connect, core):
    honest = await connect("acme")
    await honest.expect("Welcome")
    for frame in [(0x1, b"\xff\xfe"), (0x3, b"reserved opcode")]:
        bad = await RawWebSocket.connect(server_port, "tenant_id=acme")
        await bad.read_json()
        bad.send_frame(*frame)
        await wait_for(lambda: core.hub.connection_count() == 1)
        bad.close()
    await publish(core)
    assert (await honest.expect("ConfigChanged"))["tenant_id"] == "acme"


# -- tenants never cross --------------------------------------------------------------------------


@pytest.mark.gen_test
async def test_tenants_never_cross(connect, core):
    acme = await connect("acme")
    globex = await connect("globex")
    acme2 = await connect("acme")
    for client in (acme, globex, acme2):
        await client.expect("Welcome")
    await publish(core, tenant_id="globex", path="g.json")
    await publish(core, tenant_id="acme", path="a.json")
    assert (await globex.expect("ConfigChanged"))["path"] == "g.json"
    for client in (acme, acme2):
        event = await client.expect("ConfigChanged")
        assert (event["tenant_id"], event["path"]) == ("acme", "a.json")
    for client in (acme, globex, acme2):
        await client.expect_nothing()


@pytest.mark.gen_test
async def test_similar_tenant_names_do_not_match(connect, core):
    clients = {t: await connect(t) for t in ("acme", "acme2", "Acme", "acme.prod")}
    for client in clients.values():
        await client.expect("Welcome")
    await publish(core, tenant_id="acme")
    assert (await clients["acme"].expect("ConfigChanged"))["tenant_id"] == "acme"
    for name in ("acme2", "Acme", "acme.prod"):
        await clients[name].expect_nothing(0.2)


# -- heartbeat ------------------------------------------------------------------------------------


@pytest.mark.settings(heartbeat_interval=0.2, heartbeat_timeout=0.6)
@pytest.mark.gen_test(timeout=15)
async def test_silent_client_is_dropped_and_a_live_one_stays(server_port, connect, core):
    live = await connect("acme")  # Tornado's client answers every ping with a pong
    await live.expect("Welcome")
    silent = await RawWebSocket.connect(server_port, "tenant_id=acme")
    await silent.read_json()
    await wait_for(lambda: core.hub.heartbeat_closes == 1, timeout=5)
    assert core.hub.connection_count("acme") == 1
    # The dropped peer's socket is closed, not left waiting 5 s for a close frame.
    with pytest.raises((ConnectionAbortedError, asyncio.IncompleteReadError, ConnectionResetError)):
        while True:
            await silent.read_json(timeout=3)
    silent.close()
    await publish(core)
    assert (await live.expect("ConfigChanged"))["tenant_id"] == "acme"
    assert core.hub.heartbeat_closes == 1


@pytest.mark.settings(heartbeat_interval=0.2, heartbeat_timeout=0.6)
@pytest.mark.gen_test(timeout=15)
async def test_protocol_pings_are_sent_every_interval(server_port, core):
    raw = await RawWebSocket.connect(server_port, "tenant_id=acme")
    try:
        opcode, _ = await raw.read_frame()
        assert opcode == 0x1  # Welcome
        opcode, payload = await raw.read_frame(timeout=2)
        assert (opcode, payload) == (0x9, b"")
        raw.send_frame(0xA, b"")  # pong: a sign of life
    finally:
        raw.close()


# -- delivery -------------------------------------------------------------------------------------


async def _open_many(port: int, count: int, tenant: str = "acme") -> list[RawWebSocket]:
    opened: list[RawWebSocket] = []
    for start in range(0, count, 100):
        batch = await asyncio.gather(
            *(RawWebSocket.connect(port, f"tenant_id={tenant}") for _ in range(min(100, count - start)))
        )
        opened.extend(batch)
    for ws in opened:
        assert "Welcome" in await ws.read_json()
    return opened


@pytest.mark.gen_test(timeout=60)
async def test_thousands_of_dropped_connections_leave_the_registry_empty(server_port, core):
    clients = await _open_many(server_port, 2000)
    assert core.hub.connection_count() == 2000
    tasks_before = len(asyncio.all_tasks())
    await publish(core)
    # Fan-out creates no Task per recipient.
    assert len(asyncio.all_tasks()) <= tasks_before
    for ws in clients:
        assert "ConfigChanged" in await ws.read_json()
    assert core.hub.deliveries == 2000
    for ws in clients:
        ws.reset()
    await wait_for(lambda: core.hub.connection_count() == 0, timeout=20)
    assert dict(core.hub._by_tenant) == {}


@pytest.mark.gen_test(timeout=20)
async def test_a_failed_send_touches_no_one_else(server_port, connect, core):
    others = [await connect("acme") for _ in range(3)]
    for client in others:
        await client.expect("Welcome")
    broken = await RawWebSocket.connect(server_port, "tenant_id=acme")
    await broken.read_json()
    broken.reset()
    for i in range(5):  # the first sends may still be accepted by the kernel
        await publish(core, path=f"f{i}.json")
    for client in others:
        assert [(await client.expect("ConfigChanged"))["path"] for _ in range(5)] == [f"f{i}.json" for i in range(5)]
    await wait_for(lambda: core.hub.connection_count() == 3)


@pytest.mark.settings(max_backlog_bytes=64 * 1024)
@pytest.mark.gen_test(timeout=30)
async def test_a_client_that_stops_reading_is_closed_with_1013(server_port, connect, core):
    fast = await connect("acme")
    await fast.expect("Welcome")
    slow = await RawWebSocket.connect(server_port, "tenant_id=acme", rcvbuf=4096)
    await slow.read_json()
    meta = {"blob": "x" * 3000}
    count = 0
    # The kernel's socket buffers take the first megabytes; publish until the server's own
    # backlog for the stuck reader passes the bound (bounded: 20 000 events, about 60 MB).
    while core.hub.slow_closes == 0 and count < 20_000:
        await publish(core, path=f"f{count}.json", meta=meta)
        count += 1
        await asyncio.sleep(0)  # wait-ok: let the loop run the fast client's reads
    assert core.hub.slow_closes == 1
    assert core.hub.connection_count() == 1
    received = [(await fast.expect("ConfigChanged"))["path"] for _ in range(count)]
    assert received == [f"f{i}.json" for i in range(count)]
    # The slow reader, once it reads again, finds what was queued and then the 1013 close.
    with pytest.raises(ConnectionAbortedError) as closed:
        while True:
            await slow.read_json(timeout=5)
    assert closed.value.args[0] == 1013
    slow.close()


def test_an_event_is_encoded_once():
    event = Event("1-1", {"tenant_id": "acme", "change_type": "modified", "path": "a.json"})
    assert event.ws_frame is event.ws_frame
    assert (
        event.text == '{"ConfigChanged":{"tenant_id":"acme","change_type":"modified","event_id":"1-1","path":"a.json"}}'
    )
    assert event.ws_frame == b"\x81" + bytes([len(event.text)]) + event.text.encode()


@pytest.mark.gen_test
async def test_readyz_when_sources_have_started(http_client, http_url):
    response = await http_client.fetch(f"{http_url}/readyz")
    assert json.loads(response.body) == {"status": "ready"}


class _Stuck:
    """A source that never gets to report changes."""

    name = "stuck"

    def __init__(self):
        self.started = asyncio.Event()

    async def run(self, emit):
        await asyncio.Event().wait()


@pytest.mark.gen_test
async def test_readyz_is_503_with_the_reason_while_a_source_starts(http_client, http_url, core):
    # Added after start-up (the core fixture waits for every source to start).
    core.runner.sources.append(_Stuck())
    core.runner.running.add("stuck")
    response = await http_client.fetch(f"{http_url}/readyz", raise_error=False)
    assert response.code == 503
    assert json.loads(response.body) == {"status": "not ready", "reasons": ["source stuck is starting"]}


# -- what the cfgpush_authorize hook sees on a Refresh ------------------------------------------------


class RequestRecorder:
    """A ``cfgpush_authorize`` that records what it is shown and leaves the decision to others."""

    def __init__(self):
        self.seen: list[dict] = []

    @hookimpl
    def cfgpush_authorize(self, settings, request, tenant_id, token):
        headers = request.headers
        self.seen.append(
            {
                "remote_ip": request.remote_ip,
                "host": request.host,
                "app": headers.get("X-App"),
                "cookie": headers.get("cookie"),
                "has_key": "Sec-WebSocket-Key" in headers,
                "names": set(headers),
                "token": token,
            }
        )
        return None


@pytest.fixture
def extra_plugins():
    return [("recorder", RequestRecorder())]


@pytest.mark.gen_test
async def test_the_hook_sees_the_upgrade_requests_headers_again_on_a_refresh(server_port, core):
    """After the upgrade a WebSocket keeps only what the hook reads (headers, remote_ip, ...):
    on a Refresh it sees the same headers and address as at the handshake, less the
    handshake's own headers and the query string."""
    ws = await RawWebSocket.connect(
        server_port, "tenant_id=acme", extra_headers="X-App: reporting\r\nCookie: a=1\r\nCookie: b=2\r\n"
    )
    assert "Welcome" in await ws.read_json()
    ws.send_frame(0x1, json.dumps({"Refresh": {"token": "newer"}}).encode())
    assert await ws.read_json() == {"Refreshed": {"expires_at": None}}  # no JWT key: allowed
    recorder = core.pm.get_plugin("recorder")
    at_upgrade, on_refresh = recorder.seen
    assert on_refresh["token"] == "newer" and at_upgrade["token"] is None
    for seen in (at_upgrade, on_refresh):
        assert seen["remote_ip"] == "127.0.0.1" and seen["host"] == f"127.0.0.1:{server_port}"
        assert (seen["app"], seen["cookie"]) == ("reporting", "a=1,b=2")
    assert at_upgrade["has_key"] and not on_refresh["has_key"]
    assert on_refresh["names"] == {"Host", "X-App", "Cookie"}
    ws.close()


def test_head_lines_read_like_http_headers():
    from tornado.httputil import HTTPHeaders

    from tornado_cfgpush.handlers.ws import HeadLines

    parsed = HTTPHeaders.parse(
        "Host: h:1\r\nX-Forwarded-For: 10.0.0.1\r\nX-Forwarded-For: 10.0.0.2\r\n"
        "Sec-WebSocket-Key: k\r\nAuthorization: Bearer t:1\r\n"
    )
    lines = HeadLines.of(parsed, frozenset({"sec-websocket-key"}))
    assert lines.get("x-forwarded-for") == parsed.get("X-Forwarded-For") == "10.0.0.1,10.0.0.2"
    assert lines.get_list("X-FORWARDED-FOR") == ["10.0.0.1", "10.0.0.2"]
    assert lines["authorization"] == "Bearer t:1" and "Authorization" in lines
    assert lines.get("Sec-WebSocket-Key") is None and "Sec-WebSocket-Key" not in lines
    assert lines.get("X-Forwarded", "none") == "none"  # a prefix of a name is not the name
    with pytest.raises(KeyError):
        lines["Nope"]
    assert list(lines) == ["Host", "X-Forwarded-For", "Authorization"] and len(lines) == 3
    assert list(lines.get_all()) == [(n, v) for n, v in parsed.get_all() if n != "Sec-Websocket-Key"]


def test_the_hub_and_events_need_no_marshmallow():
    """The hub and the events sit below the schemas: importing them loads no marshmallow
    (rules.py has the event-id rule they use)."""
    import subprocess
    import sys

    code = (
        "import sys, tornado_cfgpush.hub, tornado_cfgpush.events, tornado_cfgpush.closing, "
        "tornado_cfgpush.ws.protocol; print(sorted(m for m in sys.modules if m.startswith('marshmallow')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"

"""Hostile input (issue 5, item 6; issue 18): hypothesis over tenant ids, query strings, headers,
client frames, publish bodies and plugin payloads, odd Unicode (lone surrogates first) in every
publish field and client message field, and Host / Origin tricks (DNS rebinding, schemes, look-alike
names), against a real server with authentication on, while honest clients (a WebSocket of acme,
an SSE stream of globex) keep receiving their events.

Every test checks: no 5xx and no 1011 (no crash), a subscription only ever for the tenant its
token names, no event to the wrong tenant, and the honest clients served during the storm.
The number of inputs tried is printed at the end of the run.
"""

from __future__ import annotations

import asyncio
import json
import os
import string
import time
from collections import Counter
from urllib.parse import parse_qs, quote

import jwt
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from marshmallow import ValidationError
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from tornado_cfgpush.rules import parse_event_id
from tornado_cfgpush.schemas import is_valid_tenant_id
from tornado_cfgpush.testing import WebSocketClient, wait_for

from .rawsse import RawSSE
from .rawws import RawWebSocket

SECRET = "hostile-test-secret-of-32-bytes-at-least"
PUBLISH = "hostile-publish-token"
EXAMPLES = int(os.environ.get("CFGPUSH_FUZZ_EXAMPLES", "300"))
TRIED: Counter = Counter()

pytestmark = pytest.mark.settings(jwt_secret=SECRET, publish_token=PUBLISH, max_client_rate=50)

FUZZ = hsettings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)


def token(tenant: str = "acme", exp_in: float = 300) -> str:
    return jwt.encode({"tenant_id": tenant, "exp": int(time.time() + exp_in)}, SECRET, algorithm="HS256")


@pytest.fixture(scope="module", autouse=True)
def report_count(request):
    yield
    total = sum(TRIED.values())
    line = f"hostile inputs tried: {total} (" + ", ".join(f"{k} {v}" for k, v in sorted(TRIED.items())) + ")"
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # past pytest's output capture
            reporter.write_line("")
            reporter.write_line(line)
    else:
        print(line)


# -- honest clients -------------------------------------------------------------------------------


class Honest:
    """acme over WebSocket, globex over SSE; each records what it got and checks the tenant."""

    def __init__(self, io_loop, port: int, core):
        self.io_loop, self.port, self.core = io_loop, port, core
        self.ws_events: list[dict] = []
        self.sse_ids: list[str] = []
        self.wrong: list = []
        self.rounds = 0

        async def open_all():
            self.ws = await WebSocketClient.open(f"ws://127.0.0.1:{port}/ws", "acme", token=token(exp_in=3600))
            assert (await self.ws.expect("Welcome"))["tenant_id"] == "acme"
            self.sse = await RawSSE.connect(port, f"tenant_id=globex&token={token('globex', 3600)}")
            assert self.sse.status == 200
            await self.sse.read_until(b"event: Welcome")
            self.tasks = [asyncio.ensure_future(self._read_ws()), asyncio.ensure_future(self._read_sse())]

        io_loop.run_sync(open_all, timeout=10)

    async def _read_ws(self):
        while True:
            message = json.loads(await self.ws.raw(timeout=3600))
            body = message.get("ConfigChanged")
            if body is not None:
                if body["tenant_id"] != "acme":
                    self.wrong.append(("ws", body))
                self.ws_events.append(body)

    async def _read_sse(self):
        while True:
            chunk = await self.sse.reader.read(65536)
            if not chunk:
                return
            self.sse.buffer += chunk
            text = self.sse.buffer.decode("utf-8", "replace")
            for line in text.splitlines():
                if line.startswith("data: {") and '"tenant_id"' in line:
                    data = json.loads(line[6:])
                    if data.get("tenant_id") != "globex":
                        self.wrong.append(("sse", data))
                if line.startswith("id: "):
                    self.sse_ids.append(line[4:])
            self.sse.buffer = b"" if text.endswith("\n") else self.sse.buffer

    async def check_served(self, timeout: float = 5.0) -> None:
        """One event to each honest tenant reaches its client, in time."""
        self.rounds += 1
        path = f"honest/{self.rounds}.json"
        acme_id = await self.core.publish({"tenant_id": "acme", "change_type": "modified", "path": path}, "honest")
        globex_id = await self.core.publish({"tenant_id": "globex", "change_type": "modified", "path": path}, "honest")
        await wait_for(
            lambda: any(e["event_id"] == acme_id for e in self.ws_events) and globex_id in self.sse_ids, timeout=timeout
        )
        assert not self.wrong, self.wrong

    def close(self):
        for task in self.tasks:
            task.cancel()
        self.ws.close()
        self.sse.close()


@pytest.fixture
def honest(io_loop, server_port, core):
    clients = Honest(io_loop, server_port, core)
    yield clients
    io_loop.run_sync(clients.check_served, timeout=10)
    clients.close()
    assert not clients.wrong


def run(io_loop, coro_fn, timeout=20):
    return io_loop.run_sync(coro_fn, timeout=timeout)


# -- strategies -----------------------------------------------------------------------------------

tenant_like = st.one_of(
    st.sampled_from(
        [
            "acme",
            "globex",
            "acme2",
            "Acme",
            "a",
            "a" * 64,
            "a" * 65,
            "..",
            ".hidden",
            "a/b",
            "a\\b",
            "acme\n",
            "acme ",
            " acme",
            "acme\x00",
            "café",
            "%2F",
            "a..b",
            "-x",
            "_x",
            "x-",
            "x.",
        ]
    ),
    st.text(alphabet=string.ascii_letters + string.digits + "._-", min_size=0, max_size=70),
    st.text(max_size=40),
)
query_value = st.one_of(tenant_like, st.text(max_size=200), st.binary(max_size=100).map(lambda b: b.decode("latin-1")))
query_name = st.one_of(
    st.sampled_from(["tenant_id", "token", "last_event_id", "manifest", "access_token", ""]), st.text(max_size=12)
)
# Bytes allowed in a request line's query part (no space, CR, LF; the rest raw or escaped).
raw_query_bytes = st.binary(max_size=300).map(lambda b: bytes(c for c in b if c not in b" \r\n\x00#"))


def encode_pairs(pairs, raw_mode: int) -> str:
    parts = []
    for name, value in pairs:
        if raw_mode == 1:  # partly unescaped: let through what a request line can hold
            value = "".join(c if 0x21 <= ord(c) < 0x7F and c not in "#&" else quote(c) for c in value)
        else:
            value = quote(value, safe="")
        parts.append(f"{quote(name, safe='')}={value}")
    return "&".join(parts)


async def ws_status(port: int, query: str, headers: str = "") -> tuple[int, bytes, RawWebSocket | None]:
    try:
        ws = await RawWebSocket.connect(port, query, extra_headers=headers)
    except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError):
        return 0, b"", None  # Tornado dropped a request it could not parse: acceptable
    return ws.status, ws.body, ws


def assert_refusal_is_clean(status: int, body: bytes) -> None:
    assert status < 500 or (status == 503 and b"connection limit" in body), (status, body)
    if status in (400, 401, 403, 414, 429) and body:
        assert "error" in json.loads(body)


# -- tenant ids and query strings ------------------------------------------------------------------


def test_hostile_tenant_ids_and_tokens(io_loop, server_port, core, honest):
    @FUZZ
    @given(
        tenant=tenant_like,
        with_token=st.sampled_from(["own", "other", "none", "garbage"]),
        transport=st.sampled_from(["ws", "sse"]),
    )
    def one(tenant, with_token, transport):
        TRIED["tenant ids"] += 1
        valid = is_valid_tenant_id(tenant)
        tok = {
            "own": token(tenant) if valid else token(),
            "other": token("globex" if tenant != "globex" else "acme"),
            "none": None,
            "garbage": "x.y.z",
        }[with_token]
        query = f"tenant_id={quote(tenant, safe='')}" + (f"&token={tok}" if tok else "")

        async def go():
            if transport == "ws":
                status, body, ws = await ws_status(server_port, query)
                try:
                    if status == 101:
                        welcome = await ws.read_json()
                        assert welcome["Welcome"]["tenant_id"] == tenant
                finally:
                    if ws is not None:
                        ws.close()
                ok = 101
            else:
                stream = await RawSSE.connect(server_port, query)
                try:
                    status = stream.status
                    body = b""
                    if status == 200:
                        await stream.read_until(b"event: Welcome")
                        await stream.read_until(b"data: ")
                        await stream.read_until(b"\n")
                finally:
                    stream.close()
                ok = 200
            if not valid:
                assert status in (400, 0), (tenant, status, body)
            elif with_token == "own":
                assert status == ok, (tenant, status, body)
            elif with_token == "other":
                assert status == 403, (tenant, status, body)
            else:
                assert status == 401, (tenant, status, body)
            assert_refusal_is_clean(status, body)

        run(io_loop, go)

    one()
    run(io_loop, honest.check_served)
    run(io_loop, lambda: wait_for(lambda: core.limits.total == 2, timeout=10))


def test_hostile_query_strings(io_loop, server_port, core, honest):
    @FUZZ
    @given(
        pairs=st.lists(st.tuples(query_name, query_value), max_size=6),
        raw_mode=st.integers(0, 2),
        raw=raw_query_bytes,
        add_token=st.booleans(),
    )
    def one(pairs, raw_mode, raw, add_token):
        TRIED["query strings"] += 1
        if raw_mode == 2:
            query = raw.decode("latin-1")
        else:
            query = encode_pairs(pairs, raw_mode)
        if add_token:
            query += f"&tenant_id=acme&token={token()}"

        async def go():
            status, body, ws = await ws_status(server_port, query)
            try:
                assert_refusal_is_clean(status, body)
                if status == 101:
                    tenant = parse_qs(query, keep_blank_values=True)["tenant_id"][0]
                    assert (await ws.read_json())["Welcome"]["tenant_id"] == tenant == "acme"
            finally:
                if ws is not None:
                    ws.close()

        run(io_loop, go)

    one()
    run(io_loop, honest.check_served)


header_name = st.one_of(
    st.sampled_from(
        [
            "Origin",
            "Sec-Fetch-Site",
            "Authorization",
            "Host",
            "Connection",
            "Upgrade",
            "Last-Event-ID",
            "Sec-WebSocket-Version",
            "Sec-WebSocket-Key",
            "Sec-WebSocket-Extensions",
            "X-Forwarded-For",
            "Content-Length",
            "Transfer-Encoding",
            "Cookie",
            "Accept",
        ]
    ),
    st.text(alphabet=string.ascii_letters + string.digits + "-_!#$%&'*+.^`|~", min_size=1, max_size=30),
)
header_value = st.one_of(
    st.sampled_from(
        [
            "",
            "null",
            "https://evil.example",
            "cross-site",
            "same-origin",
            "Bearer ",
            "Bearer x.y.z",
            f"Bearer {PUBLISH}",
            "websocket",
            "Upgrade",
            "13",
            "99",
            "chunked",
            "-1",
            "1-1",
            "0" * 50,
            "permessage-deflate; client_max_window_bits=1",
        ]
    ),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=300),
)


UPGRADE = (
    "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n"
)


def test_hostile_headers(io_loop, server_port, core, honest):
    @FUZZ
    @given(headers=st.lists(st.tuples(header_name, header_value), max_size=8), transport=st.sampled_from(["ws", "sse"]))
    def one(headers, transport):
        TRIED["headers"] += 1
        extra = "".join(f"{name}: {value.strip()}\r\n" for name, value in headers)
        declares_body = any(name.lower() in ("content-length", "transfer-encoding") for name, _ in headers)
        query = f"tenant_id=acme&token={token()}"

        async def go():
            try:
                conn = await RawSSE.connect(
                    server_port,
                    query,
                    path="/ws" if transport == "ws" else "/events",
                    headers=(UPGRADE if transport == "ws" else "") + extra,
                    timeout=3,
                )
            except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError):
                return  # Tornado dropped a request it could not parse
            except TimeoutError:
                # Only a request that declares a body may be kept waiting (for that body).
                assert declares_body, headers
                return
            try:
                assert conn.status < 500, conn.head
                if conn.status in (101, 200):
                    await conn.read_until(b"Welcome")
                    if transport == "ws":
                        await conn.read_until(b'"tenant_id":"acme"')
            finally:
                conn.close()

        run(io_loop, go)

    one()
    run(io_loop, honest.check_served)


# -- client frames ----------------------------------------------------------------------------------

json_scalar = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=200))
json_value = st.recursive(
    json_scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)),
    max_leaves=12,
)
message_like = st.one_of(
    st.sampled_from(['"Ping"', "Ping", "Pong", "{}", "[]", "null", '{"Ping": {}}', '{"Ack": {"event_id": "1-1"}}']),
    st.builds(
        lambda k, v: json.dumps({k: v}), st.sampled_from(["Ping", "Ack", "Refresh", "Welcome", "Nope"]), json_value
    ),
    st.builds(
        lambda v: json.dumps({"Refresh": {"token": v}}),
        st.one_of(st.text(max_size=300), st.just(token("globex")), st.just(token(exp_in=-5)), st.just(token())),
    ),
    json_value.map(json.dumps),
    st.text(max_size=300),
)
frame = st.one_of(
    st.tuples(st.just(0x1), message_like.map(lambda s: s.encode("utf-8", "surrogatepass")), st.just(True)),
    st.tuples(st.just(0x1), st.binary(max_size=64), st.just(True)),  # often invalid UTF-8
    st.tuples(st.just(0x2), st.binary(max_size=200), st.just(True)),  # binary
    st.tuples(st.sampled_from([0x0, 0x1, 0x2]), st.binary(max_size=50), st.booleans()),  # fragments
    st.tuples(st.sampled_from([0x3, 0x4, 0x7, 0xB, 0xF]), st.binary(max_size=20), st.just(True)),  # reserved
    st.tuples(st.sampled_from([0x8, 0x9, 0xA]), st.binary(max_size=130), st.booleans()),  # control, some too long
    st.tuples(st.just(0x1), st.integers(4000, 70000).map(lambda n: b'"' + b"x" * n + b'"'), st.just(True)),  # huge
)
CLIENT_TYPES = {"Welcome", "Pong", "Error", "Refreshed", "ConfigChanged", "Resync"}


def test_hostile_client_frames(io_loop, server_port, core, honest):
    @FUZZ
    @given(frames=st.lists(frame, min_size=1, max_size=12), repeat=st.sampled_from([1, 1, 1, 30]))
    def one(frames, repeat):
        TRIED["client frames"] += 1

        async def go():
            ws = await RawWebSocket.connect(server_port, f"tenant_id=acme&token={token()}")
            assert ws.status == 101
            try:
                assert "Welcome" in await ws.read_json()
                for _ in range(repeat):
                    for opcode, payload, fin in frames:
                        ws.send_frame(opcode, payload, fin=fin)
                ws.send_frame(0x1, b'{"Ping": {"id": "end"}}')
                try:
                    await ws.writer.drain()
                except (ConnectionError, OSError):
                    return
                # Read until our Pong or the server's close: never 1011, only known messages.
                while True:
                    try:
                        opcode, payload = await ws.read_frame(timeout=5)
                    except (asyncio.IncompleteReadError, ConnectionError):
                        return
                    if opcode == 0x8:
                        code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else None
                        if any(op == 0x8 for op, _, _ in frames):  # Tornado echoes the client's own code
                            assert code != 1011, code
                        else:
                            assert code in (None, 1000, 1002, 1003, 1007, 1008, 1009), code
                        return
                    if opcode == 0x1:
                        message = json.loads(payload)
                        kind = message if isinstance(message, str) else next(iter(message))
                        assert kind in CLIENT_TYPES, message
                        if kind == "ConfigChanged":
                            assert message[kind]["tenant_id"] == "acme"
                        if message == {"Pong": {"id": "end"}}:
                            return
            finally:
                ws.close()

        run(io_loop, go, timeout=30)

    one()
    run(io_loop, honest.check_served)
    run(io_loop, lambda: wait_for(lambda: core.limits.total == 2, timeout=15))


# -- publish bodies and plugin payloads ---------------------------------------------------------------

field_value = st.one_of(
    json_value,
    st.sampled_from(
        [
            "acme",
            "globex",
            "modified",
            "deleted",
            "moved",
            "created",
            "a.json",
            "../x",
            "/etc/passwd",
            "sha256:" + "a" * 64,
            "2026-11-27T08:00:00Z",
            "not a date",
        ]
    ),
)
payload_like = st.one_of(
    st.fixed_dictionaries(
        {"tenant_id": tenant_like, "change_type": st.sampled_from(["created", "modified", "deleted", "moved", "x"])},
        optional={
            "path": field_value,
            "checksum": field_value,
            "timestamp": field_value,
            "source": field_value,
            "meta": json_value,
            "diff": json_value,
            "event_id": field_value,
            "extra": field_value,
        },
    ),
    st.dictionaries(st.text(max_size=12), field_value, max_size=6),
    json_value,
)


def test_hostile_publish_bodies(io_loop, http_port, server_port, core, honest):
    client = AsyncHTTPClient(force_instance=True)
    url = f"http://127.0.0.1:{http_port}/api/v1/events"

    @FUZZ
    @given(
        body=st.one_of(payload_like.map(lambda v: json.dumps(v).encode()), st.binary(max_size=300)),
        content_type=st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain", ""]),
    )
    def one(body, content_type):
        TRIED["publish bodies"] += 1

        async def go():
            headers = {"Authorization": f"Bearer {PUBLISH}"}
            if content_type:
                headers["Content-Type"] = content_type
            response = await client.fetch(
                HTTPRequest(url, method="POST", body=body, headers=headers), raise_error=False
            )
            assert response.code in (202, 400, 413, 415), (response.code, response.body)
            answer = json.loads(response.body)
            if response.code == 202:
                sent = json.loads(body)
                assert is_valid_tenant_id(sent["tenant_id"])
                # The id is one of that tenant's (a repeated change answers the earlier id).
                newest = (await core.broker.catch_up(sent["tenant_id"], None)).last_event_id
                assert newest is not None and parse_event_id(answer["event_id"]) <= parse_event_id(newest)
            else:
                assert "error" in answer

        run(io_loop, go)

    try:
        one()
    finally:
        client.close()
    run(io_loop, honest.check_served)


def test_hostile_plugin_payloads(io_loop, core, honest):
    """What a plugin's ``emit`` gets goes through ``core.publish``: an event id or a
    ValidationError, never another exception; an accepted event goes to its own tenant only."""
    weird = st.one_of(
        field_value,
        st.binary(max_size=10),
        st.floats(),
        st.sets(st.integers(), max_size=3),
        st.datetimes(),
        st.builds(object),
        st.text(min_size=5000, max_size=6000),
    )

    @FUZZ
    @given(
        payload=st.one_of(
            payload_like,
            st.fixed_dictionaries(
                {"tenant_id": tenant_like, "change_type": st.just("modified")},
                optional={
                    "path": weird,
                    "meta": st.dictionaries(st.text(max_size=5), weird, max_size=3),
                    "checksum": weird,
                    "timestamp": weird,
                    "diff": weird,
                },
            ),
        )
    )
    def one(payload):
        TRIED["plugin payloads"] += 1

        async def go():
            try:
                event_id = await core.publish(payload, "fuzz")
            except ValidationError:
                return
            assert isinstance(event_id, str)
            assert is_valid_tenant_id(payload["tenant_id"])

        run(io_loop, go)

    one()
    run(io_loop, honest.check_served)


# -- floods -----------------------------------------------------------------------------------------


@pytest.mark.settings(jwt_secret=SECRET, publish_token=PUBLISH, max_client_rate=20)
def test_frame_and_connection_floods_cost_the_honest_clients_nothing(io_loop, server_port, core, honest):
    async def flooder(i: int):
        ws = await RawWebSocket.connect(server_port, f"tenant_id=acme&token={token()}")
        try:
            await ws.read_json()
            for n in range(500):
                kind = (i + n) % 4
                if kind == 0:
                    ws.send_frame(0x1, b"garbage " * 10)
                elif kind == 1:
                    ws.send_frame(0x1, b"\xff\xfe\xfd")
                elif kind == 2:
                    ws.send_frame(0x2, os.urandom(64))
                else:
                    ws.send_frame(0x1, b'"' + b"x" * 5000 + b'"')
            await ws.writer.drain()
            while True:  # until the server closes it (1007, 1008 or 1009)
                await ws.read_frame(timeout=10)
        except (asyncio.IncompleteReadError, ConnectionError, ConnectionAbortedError):
            pass
        finally:
            ws.close()

    async def churner(i: int):
        for _ in range(10):
            ws = await RawWebSocket.connect(server_port, f"tenant_id=acme&token={token() if i % 2 else 'bad'}")
            ws.reset() if i % 3 else ws.close()

    async def storm():
        started = time.monotonic()
        tasks = [asyncio.ensure_future(flooder(i)) for i in range(40)] + [
            asyncio.ensure_future(churner(i)) for i in range(30)
        ]
        rounds = 0
        while not all(t.done() for t in tasks) or rounds < 3:
            await honest.check_served(timeout=5)
            rounds += 1
        await asyncio.gather(*tasks)
        TRIED["flood frames"] += 40 * 500
        TRIED["flood connections"] += 30 * 10
        return time.monotonic() - started, rounds

    _, rounds = run(io_loop, storm, timeout=60)
    assert rounds >= 3
    run(io_loop, lambda: wait_for(lambda: core.limits.total == 2 and core.hub.connection_count() == 2, timeout=15))


# -- odd Unicode in every field that reaches the wire (issue 18 item 5) ------------------------------


def _has_lone_surrogate(value) -> bool:
    if isinstance(value, str):
        return any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_has_lone_surrogate(v) for v in value)
    return False


# Lone surrogates (high, low, reversed pair), noncharacters, BOMs, separators, bidi overrides,
# combining marks, astral characters, control characters, NUL, DEL and C1.
odd_char = st.one_of(
    st.sampled_from(
        [
            "\ud800",
            "\udbff",
            "\udc00",
            "\udfff",
            "\udc00\ud800",
            "\ufffe",
            "\uffff",
            "\ufeff",
            "\u2028",
            "\u2029",
            "\u202e",
            "\u0301",
            "\U0001f600",
            "\U0010ffff",
            "\x00",
            "\x01",
            "\x1f",
            "\x7f",
            "\x85",
            "\u200b",
            "~",
            "/",
            "\\",
            "\n",
            "\r",
        ]
    ),
    st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),  # every lone surrogate
    st.characters(codec="utf-8"),
)
odd_text = st.lists(
    st.one_of(odd_char, st.text(alphabet=string.ascii_letters, max_size=4)), min_size=1, max_size=8
).map("".join)
odd_json = st.recursive(
    st.one_of(st.none(), st.integers(), odd_text),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(odd_text, inner, max_size=3)),
    max_leaves=8,
)
odd_fields = st.fixed_dictionaries(
    {},
    optional={
        "path": st.one_of(odd_text, odd_text.map(lambda t: f"dir/{t}.json")),
        "source": odd_text,
        "meta": st.dictionaries(odd_text, odd_json, max_size=3),
        "diff": st.fixed_dictionaries(
            {},
            optional={
                k: st.lists(odd_text.map(lambda t: "/" + t), max_size=3) for k in ("added", "removed", "changed")
            },
        ),
    },
)


def test_hostile_unicode_in_publish_fields(io_loop, http_port, server_port, core, honest):
    """Every publish field with odd strings: a lone surrogate anywhere is 400 naming its field
    and nothing is stored; anything else accepted reaches the honest acme client exactly as
    sent; and a client resuming from before the storm is served its replay (no poison)."""
    client = AsyncHTTPClient(force_instance=True)
    url = f"http://127.0.0.1:{http_port}/api/v1/events"
    before = run(
        io_loop, lambda: core.publish({"tenant_id": "acme", "change_type": "modified", "path": "before.json"}, "honest")
    )
    accepted: list[str] = []
    poisons = Counter()

    @FUZZ
    @given(fields=odd_fields, ascii_body=st.booleans())
    def one(fields, ascii_body):
        TRIED["odd unicode publish"] += 1
        # What the server parses: two escapes of a high and a low surrogate in a row are one
        # character, "\\ud800\\udc00" is U+10000; the others stay lone.
        fields = json.loads(json.dumps(fields))
        payload = {"tenant_id": "acme", "change_type": "modified", "path": "p.json", **fields}
        poisoned = _has_lone_surrogate(fields)
        # A lone surrogate travels as a JSON escape; other text is sent as raw UTF-8 half the time.
        body = json.dumps(payload, ensure_ascii=ascii_body or poisoned).encode("utf-8")

        async def go():
            response = await client.fetch(
                HTTPRequest(
                    url,
                    method="POST",
                    body=body,
                    headers={"Authorization": f"Bearer {PUBLISH}", "Content-Type": "application/json"},
                ),
                raise_error=False,
            )
            answer = json.loads(response.body)
            assert response.code in (202, 400, 429), (response.code, answer)
            if poisoned:
                poisons["refused"] += 1
                assert response.code == 400, (fields, answer)
                bad = [name for name, value in fields.items() if _has_lone_surrogate(value)]
                assert set(bad) <= set(answer["fields"]), (bad, answer)
                json.dumps(answer, ensure_ascii=False).encode("utf-8")  # the answer itself is valid Unicode
            if response.code == 202:
                event_id = answer["event_id"]
                accepted.append(event_id)
                await wait_for(
                    lambda: any(e["event_id"] == event_id for e in honest.ws_events) or event_id in accepted[:-1],
                    timeout=5,
                )  # a repeat answers the earlier id
                delivered = next((e for e in honest.ws_events if e["event_id"] == event_id), None)
                if delivered is not None and event_id not in accepted[:-1]:
                    for name in fields:
                        expected = fields[name]
                        if name == "diff":
                            expected = {k: fields["diff"].get(k, []) for k in ("added", "removed", "changed")}
                        assert delivered[name] == expected, (name, delivered[name], expected)

        run(io_loop, go)

    try:
        one()
    finally:
        client.close()
    assert accepted and poisons["refused"], (len(accepted), poisons)

    async def resume():  # from before the storm: every accepted event, then live; never 1011
        ws = await RawWebSocket.connect(server_port, f"tenant_id=acme&last_event_id={before}&token={token()}")
        try:
            assert ws.status == 101
            assert "Welcome" in await ws.read_json()
            replayed = set()
            while not set(accepted) <= replayed:
                message = await ws.read_json(timeout=5)
                replayed.add(message["ConfigChanged"]["event_id"])
        finally:
            ws.close()
        stream = await RawSSE.connect(server_port, f"tenant_id=acme&last_event_id={before}&token={token()}")
        try:
            assert stream.status == 200
            await stream.read_until(f"id: {accepted[-1]}".encode())
        finally:
            stream.close()

    run(io_loop, resume, timeout=30)
    run(io_loop, honest.check_served)


odd_scalar = st.one_of(odd_text, st.integers(), st.none(), st.booleans())
odd_message = st.one_of(
    st.builds(lambda v: {"Ping": {"id": v}}, odd_scalar),
    st.builds(lambda v: {"Ack": {"event_id": v}}, odd_text),
    st.builds(lambda v: {"Refresh": {"token": v}}, odd_text),
    st.builds(lambda k, v: {"Ping": {k: v}}, odd_text, odd_json),
    st.builds(lambda k, v: {k: v}, odd_text, odd_json),
    odd_json,
)


def test_hostile_unicode_in_client_messages(io_loop, server_port, core, honest):
    """Odd strings in every client message field: each message gets a Pong (the id echoed as
    sent), an Error or a Refreshed answer, valid Unicode itself, and the connection stays open."""

    @FUZZ
    @given(messages=st.lists(odd_message, min_size=1, max_size=6))
    def one(messages):
        TRIED["odd unicode client messages"] += 1

        async def go():
            ws = await RawWebSocket.connect(server_port, f"tenant_id=acme&token={token()}")
            assert ws.status == 101
            try:
                assert "Welcome" in await ws.read_json()
                for message in messages:
                    ws.send_frame(0x1, json.dumps(message).encode("ascii"))  # lone surrogates as escapes
                    message = json.loads(json.dumps(message))  # as the server parses it (pairs joined)
                    opcode, payload = await ws.read_frame(timeout=5)
                    assert opcode == 0x1, (opcode, payload, message)
                    answer = json.loads(payload.decode("utf-8"))  # strict: valid UTF-8
                    kind = answer if isinstance(answer, str) else next(iter(answer))
                    assert kind in ("Pong", "Error", "Refreshed"), answer
                    if kind == "Error":
                        assert answer["Error"]["code"] in ("bad_message", "refresh_refused")
                        assert not _has_lone_surrogate(answer)
                    ping = message.get("Ping") if isinstance(message, dict) and len(message) == 1 else None
                    if kind == "Pong" and isinstance(ping, dict) and "id" in ping:
                        assert answer == {"Pong": {"id": ping["id"]}}
                    if _has_lone_surrogate(message):
                        assert kind == "Error", (message, answer)
                ws.send_frame(0x1, b'{"Ping": {"id": "end"}}')
                assert await ws.read_json() == {"Pong": {"id": "end"}}
            finally:
                ws.close()

        run(io_loop, go)

    one()
    run(io_loop, honest.check_served)
    run(io_loop, lambda: wait_for(lambda: core.limits.total == 2, timeout=15))


# -- Host and Origin tricks (issue 18 items 9 and 11) ------------------------------------------------

ALLOWED_HOSTS = ("cfgpush.example.com", "127.0.0.1")
ALLOWED_ORIGINS = ("https://app.example.com", "*.trusted.example")


def host_is_served(name: str) -> bool:
    """The oracle, written apart from auth.host_allowed: case-insensitive, one root dot."""
    name = name.strip(" \t").lower()  # HTTP strips the whitespace around a header value
    return (name[:-1] if name.endswith(".") else name) in ALLOWED_HOSTS


def origin_is_admitted(scheme: str, name: str, port: str) -> bool:
    """The oracle for a cross-site page: https, and app.example.com or a subdomain of
    trusted.example, on the default port."""
    scheme, name = scheme.lower(), name.lower()
    if scheme != "https" or port not in ("", ":443"):
        return False
    return name == "app.example.com" or (
        name.endswith(".trusted.example") and len(name) > len(".trusted.example") and "@" not in name
    )


host_name = st.one_of(
    st.sampled_from(
        [
            "cfgpush.example.com",
            "CFGPUSH.Example.Com",
            "cfgpush.example.com.",
            "cfgpush.example.com..",
            "127.0.0.1",
            "127.0.0.1.",
            "evil.example",
            "cfgpush.example.com.evil.example",
            "xcfgpush.example.com",
            "example.com",
            "localhost",
            "[::1]",
            "0.0.0.0",
            "127.1",
            "2130706433",
            "a@cfgpush.example.com",
            "cfgpush.example.com@evil.example",
            "cfgpush%2eexample.com",
            "xn--cfgpush-9za.example.com",
            "cfgpüsh.example.com",
            "",
            " cfgpush.example.com",
        ]
    ),
    st.text(alphabet=string.ascii_lowercase + string.digits + ".-_[]:@%", max_size=30),
)
host_port = st.sampled_from(["", ":{port}", ":443", ":80", ":0", ":99999", ":", ":x"])
origin_scheme = st.sampled_from(["https", "http", "HTTPS", "ws", "wss", "javascript", ""])
origin_name = st.sampled_from(
    [
        "app.example.com",
        "x.trusted.example",
        "a.b.trusted.example",
        "trusted.example",
        "eviltrusted.example",
        "x.trusted.example.evil.net",
        "x.trusted.example.",
        "X.TRUSTED.EXAMPLE",
        "app.example.com.evil.net",
        "user@x.trusted.example",
        "evil.example",
        "cfgpush.example.com",
    ]
)
origin_port = st.sampled_from(["", ":443", ":8443", ":80"])


@pytest.mark.settings(
    jwt_secret=SECRET,
    publish_token=PUBLISH,
    max_client_rate=50,
    allowed_hosts=ALLOWED_HOSTS,
    allowed_origins=ALLOWED_ORIGINS,
)
def test_hostile_hosts_and_origins(io_loop, server_port, core, honest):
    """Host tricks (DNS rebinding: Origin equal to Host), Origin tricks (schemes, ports,
    look-alikes), on /ws and /events: served only for an allowed Host and, cross-site, an
    allowed https origin; never a 5xx; the honest clients keep being served."""

    @FUZZ
    @given(
        name=host_name,
        port=host_port,
        origin=st.one_of(st.just("rebinding"), st.just(None), st.tuples(origin_scheme, origin_name, origin_port)),
        transport=st.sampled_from(["ws", "sse"]),
        twice=st.sampled_from([False, False, False, True]),
    )
    def one(name, port, origin, transport, twice):
        TRIED["hosts and origins"] += 1
        host = name + port.format(port=server_port)
        headers = f"Host: {host}\r\n" * (2 if twice else 1)
        if origin == "rebinding":
            headers += f"Origin: http://{host}\r\n"  # the rebinding page: same-origin to itself
        elif origin is not None:
            scheme, o_name, o_port = origin
            headers += f"Origin: {scheme}://{o_name}{o_port}\r\nSec-Fetch-Site: cross-site\r\n"
        request_line = f"GET /{'ws' if transport == 'ws' else 'events'}?tenant_id=acme&token={token()} HTTP/1.1\r\n"
        host_ok = host_is_served(name) and port in ("", ":{port}", ":443", ":80") and not twice

        async def go():
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", server_port), 5)
            try:
                writer.write((request_line + headers + (UPGRADE if transport == "ws" else "") + "\r\n").encode("utf-8"))
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                except (asyncio.IncompleteReadError, ConnectionResetError):
                    return  # Tornado dropped a request it could not parse
                status = int(head.split(b" ", 2)[1])
            finally:
                writer.transport.abort()
            ok = 101 if transport == "ws" else 200
            assert status < 500, (host, origin, status)
            if not host_ok:
                assert status in (400, 421), (host, origin, status)  # 400: Tornado's own refusal
            elif isinstance(origin, tuple) and not origin_is_admitted(*origin):
                assert status == 403, (host, origin, status)
            elif origin == "rebinding" and name != name.strip():  # Origin kept the space Host lost
                assert status == 403, (host, origin, status)
            else:  # an allowed Host, and same-origin, not a browser or an allowed page
                assert status == ok, (host, origin, status)

        run(io_loop, go)

    one()
    run(io_loop, honest.check_served)
    run(io_loop, lambda: wait_for(lambda: core.limits.total == 2, timeout=15))

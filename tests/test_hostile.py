"""Hostile input (issue 5, item 6): hypothesis over tenant ids, query strings, headers, client
frames, publish bodies and plugin payloads, against a real server with authentication on, while
honest clients (a WebSocket of acme, an SSE stream of globex) keep receiving their events.

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
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from marshmallow import ValidationError
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from tornado_cfgpush.rules import parse_event_id
from tornado_cfgpush.schemas import is_valid_tenant_id

from .conftest import wait_for
from .rawws import RawWebSocket
from .test_limits import RawSSE
from .wsclient import Client

SECRET = "hostile-test-secret-of-32-bytes-at-least"
PUBLISH = "hostile-publish-token"
EXAMPLES = int(os.environ.get("CFGPUSH_FUZZ_EXAMPLES", "300"))
TRIED: Counter = Counter()

pytestmark = pytest.mark.settings(jwt_secret=SECRET, publish_token=PUBLISH, max_client_rate=50)

FUZZ = hsettings(max_examples=EXAMPLES, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                        HealthCheck.data_too_large])


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
            self.ws = await Client.open(f"ws://127.0.0.1:{port}/ws", "acme", token=token(exp_in=3600))
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
        await wait_for(lambda: any(e["event_id"] == acme_id for e in self.ws_events)
                       and globex_id in self.sse_ids, timeout=timeout)
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
    st.sampled_from(["acme", "globex", "acme2", "Acme", "a", "a" * 64, "a" * 65, "..", ".hidden", "a/b", "a\\b",
                     "acme\n", "acme ", " acme", "acme\x00", "café", "%2F", "a..b", "-x", "_x", "x-", "x."]),
    st.text(alphabet=string.ascii_letters + string.digits + "._-", min_size=0, max_size=70),
    st.text(max_size=40),
)
query_value = st.one_of(tenant_like, st.text(max_size=200), st.binary(max_size=100).map(lambda b: b.decode("latin-1")))
query_name = st.one_of(st.sampled_from(["tenant_id", "token", "last_event_id", "manifest", "access_token", ""]),
                       st.text(max_size=12))
# Bytes allowed in a request line's query part (no space, CR, LF; the rest raw or escaped).
raw_query_bytes = st.binary(max_size=300).map(lambda b: bytes(c for c in b if c not in b" \r\n\x00#"))


def encode_pairs(pairs, raw_mode: int) -> str:
    parts = []
    for name, value in pairs:
        if raw_mode == 1:  # partly unescaped: let through what a request line can hold
            value = "".join(c if 0x21 <= ord(c) < 0x7f and c not in "#&" else quote(c) for c in value)
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
    assert status < 500 or status == 503 and b"connection limit" in body, (status, body)
    if status in (400, 401, 403, 414, 429) and body:
        assert "error" in json.loads(body)


# -- tenant ids and query strings ------------------------------------------------------------------

def test_hostile_tenant_ids_and_tokens(io_loop, server_port, core, honest):
    @FUZZ
    @given(tenant=tenant_like, with_token=st.sampled_from(["own", "other", "none", "garbage"]),
           transport=st.sampled_from(["ws", "sse"]))
    def one(tenant, with_token, transport):
        TRIED["tenant ids"] += 1
        valid = is_valid_tenant_id(tenant)
        tok = {"own": token(tenant) if valid else token(), "other": token("globex" if tenant != "globex" else "acme"),
               "none": None, "garbage": "x.y.z"}[with_token]
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
    @given(pairs=st.lists(st.tuples(query_name, query_value), max_size=6), raw_mode=st.integers(0, 2),
           raw=raw_query_bytes, add_token=st.booleans())
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
    st.sampled_from(["Origin", "Sec-Fetch-Site", "Authorization", "Host", "Connection", "Upgrade", "Last-Event-ID",
                     "Sec-WebSocket-Version", "Sec-WebSocket-Key", "Sec-WebSocket-Extensions", "X-Forwarded-For",
                     "Content-Length", "Transfer-Encoding", "Cookie", "Accept"]),
    st.text(alphabet=string.ascii_letters + string.digits + "-_!#$%&'*+.^`|~", min_size=1, max_size=30),
)
header_value = st.one_of(
    st.sampled_from(["", "null", "https://evil.example", "cross-site", "same-origin", "Bearer ", "Bearer x.y.z",
                     f"Bearer {PUBLISH}", "websocket", "Upgrade", "13", "99", "chunked", "-1", "1-1", "0" * 50,
                     "permessage-deflate; client_max_window_bits=1"]),
    st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xff, exclude_characters="\x7f"), max_size=300),
)


UPGRADE = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" \
          "Sec-WebSocket-Version: 13\r\n"


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
                conn = await RawSSE.connect(server_port, query, path="/ws" if transport == "ws" else "/events",
                                            headers=(UPGRADE if transport == "ws" else "") + extra, timeout=3)
            except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError):
                return  # Tornado dropped a request it could not parse
            except asyncio.TimeoutError:
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
json_value = st.recursive(json_scalar, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                                st.dictionaries(st.text(max_size=10), inner, max_size=4)),
                          max_leaves=12)
message_like = st.one_of(
    st.sampled_from(['"Ping"', "Ping", "Pong", "{}", "[]", "null", '{"Ping": {}}', '{"Ack": {"event_id": "1-1"}}']),
    st.builds(lambda k, v: json.dumps({k: v}), st.sampled_from(["Ping", "Ack", "Refresh", "Welcome", "Nope"]), json_value),
    st.builds(lambda v: json.dumps({"Refresh": {"token": v}}),
              st.one_of(st.text(max_size=300), st.just(token("globex")), st.just(token(exp_in=-5)), st.just(token()))),
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

field_value = st.one_of(json_value, st.sampled_from(["acme", "globex", "modified", "deleted", "moved", "created",
                                                      "a.json", "../x", "/etc/passwd", "sha256:" + "a" * 64,
                                                      "2026-11-27T08:00:00Z", "not a date"]))
payload_like = st.one_of(
    st.fixed_dictionaries(
        {"tenant_id": tenant_like, "change_type": st.sampled_from(["created", "modified", "deleted", "moved", "x"])},
        optional={"path": field_value, "checksum": field_value, "timestamp": field_value, "source": field_value,
                  "meta": json_value, "diff": json_value, "event_id": field_value, "extra": field_value}),
    st.dictionaries(st.text(max_size=12), field_value, max_size=6),
    json_value,
)


def test_hostile_publish_bodies(io_loop, http_port, server_port, core, honest):
    client = AsyncHTTPClient(force_instance=True)
    url = f"http://127.0.0.1:{http_port}/api/v1/events"

    @FUZZ
    @given(body=st.one_of(payload_like.map(lambda v: json.dumps(v).encode()), st.binary(max_size=300)),
           content_type=st.sampled_from(["application/json", "application/json; charset=utf-8", "text/plain", ""]))
    def one(body, content_type):
        TRIED["publish bodies"] += 1

        async def go():
            headers = {"Authorization": f"Bearer {PUBLISH}"}
            if content_type:
                headers["Content-Type"] = content_type
            response = await client.fetch(HTTPRequest(url, method="POST", body=body, headers=headers),
                                          raise_error=False)
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
    weird = st.one_of(field_value, st.binary(max_size=10), st.floats(), st.sets(st.integers(), max_size=3),
                      st.datetimes(), st.builds(object), st.text(min_size=5000, max_size=6000))

    @FUZZ
    @given(payload=st.one_of(payload_like,
                             st.fixed_dictionaries({"tenant_id": tenant_like, "change_type": st.just("modified")},
                                                   optional={"path": weird, "meta": st.dictionaries(st.text(max_size=5), weird,
                                                                                                     max_size=3),
                                                             "checksum": weird, "timestamp": weird, "diff": weird})))
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
        tasks = [asyncio.ensure_future(flooder(i)) for i in range(40)] + \
                [asyncio.ensure_future(churner(i)) for i in range(30)]
        rounds = 0
        while not all(t.done() for t in tasks) or rounds < 3:
            await honest.check_served(timeout=5)
            rounds += 1
        await asyncio.gather(*tasks)
        TRIED["flood frames"] += 40 * 500
        TRIED["flood connections"] += 30 * 10
        return time.monotonic() - started, rounds

    elapsed, rounds = run(io_loop, storm, timeout=60)
    assert rounds >= 3
    run(io_loop, lambda: wait_for(lambda: core.limits.total == 2 and core.hub.connection_count() == 2, timeout=15))

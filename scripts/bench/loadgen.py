"""The load generator: raw asyncio WebSocket clients, cheap enough not to be the bottleneck.

Each connection is one ``asyncio.Protocol`` with its own frame parser; after the handshake
nothing is created per connection or per message (no Task, no Future, no coroutine): a frame
is parsed in ``data_received`` and handed to the scenario's *sink* with the receipt time
(``time.perf_counter()``, the same clock the scenario triggered the publish with). Server pings
are answered with masked pongs, as a browser does, and a server close frame is answered.

Connections are opened by a fixed pool of worker Tasks (``Connector``): at most
``concurrency`` handshakes in flight, optionally at most ``rate`` new connections per second,
so the server sees a bounded stream of handshakes and the generator never has 10 000
coroutines alive. The storm scenario's reconnects go through the same pool.

``Publisher`` is the trigger: a keep-alive HTTP/1.1 client on its own ``asyncio.Protocol``
(``POST /api/v1/events``, pipelined), so that the publish time and the receipt times are
read in this one process, with no thread hop in between.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import resource
import struct
import time
import zlib
from collections import deque
from collections.abc import Callable
from typing import Any

perf_counter = time.perf_counter

DEFLATE_OFFER = "permessage-deflate; client_no_context_takeover; server_no_context_takeover"


def raise_nofile() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (10 000 clients); returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard or hard == resource.RLIM_INFINITY:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def handshake_request(host: str, port: int, target: str, deflate: bool) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    ext = f"Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n" if deflate else ""
    return (
        f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n"
    ).encode()


def masked(opcode: int, payload: bytes) -> bytes:
    """A client frame (masked, as RFC 6455 requires of clients); control frames only here."""
    mask = os.urandom(4)
    n = len(payload)
    if n:
        key = int.from_bytes((mask * (n // 4 + 1))[:n], "big")
        payload = (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big")
    return struct.pack("!BB", 0x80 | opcode, 0x80 | n) + mask + payload


class HandshakeError(Exception):
    pass


class Sink:
    """What a scenario does with the messages; every method is called from ``data_received``."""

    def welcome(self, client: Client, payload: bytes, now: float) -> None:
        pass

    def change(self, client: Client, payload: bytes, now: float) -> None:
        pass

    def other(self, client: Client, payload: bytes, now: float) -> None:
        pass

    def lost(self, client: Client) -> None:
        pass


class Stats:
    """The generator's own counters, shared by all clients of one ``LoadGen``."""

    def __init__(self) -> None:
        self.pings = 0
        self.server_closes = 0
        self.lost = 0
        self.protocol_errors = 0


class Client(asyncio.Protocol):
    """One WebSocket client connection. ``vc`` is the virtual client it belongs to (the
    storm's reconnecting clients outlive their connections)."""

    __slots__ = ("gen", "transport", "buf", "opened", "open", "deflate", "next", "count", "vc", "closing", "close_code")

    def __init__(self, gen: LoadGen, request: bytes, vc: Any = None):
        self.gen = gen
        self.transport = None
        self.buf = request  # the handshake to send, then the unparsed input
        self.opened: asyncio.Future | None = gen.loop.create_future()
        self.open = False
        self.deflate = False
        self.next = None  # the sequence number expected next (SeqSink)
        self.count = 0  # ConfigChanged received
        self.vc = vc
        self.closing = False
        self.close_code: int | None = None  # of the server's close frame, if it sent one

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        request, self.buf = self.buf, b""
        transport.write(request)

    def connection_lost(self, exc) -> None:
        opened = self.opened
        if opened is not None and not opened.done():
            opened.set_exception(HandshakeError(f"connection closed during the handshake: {exc}"))
        if self.open:
            self.open = False
            if not self.closing:
                self.gen.stats.lost += 1
            self.gen.sink.lost(self)

    def data_received(self, data: bytes) -> None:
        now = perf_counter()
        if self.open and not self.buf:
            # The common case: one whole unmasked text frame, no leftover.
            if data[0] == 0x81:
                n = data[1]
                if n < 126:
                    if len(data) == 2 + n:
                        self.text(data[2:], now)
                        return
                elif n == 126 and len(data) >= 4 and len(data) == 4 + ((data[2] << 8) | data[3]):
                    self.text(data[4:], now)
                    return
        buf = self.buf + data if self.buf else data
        if not self.open:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            self.handshake(buf[:end])
            buf = buf[end + 4 :]
            if not self.open:
                return
        self.buf = self.frames(buf, now)

    # -- input --------------------------------------------------------------------------------

    def handshake(self, head: bytes) -> None:
        opened = self.opened  # LoadGen.open_one awaits it, then drops it
        if not head.startswith(b"HTTP/1.1 101"):
            self.transport.abort()
            opened.set_exception(HandshakeError(head.split(b"\r\n", 1)[0].decode("latin-1")))
            return
        self.open = True
        self.deflate = b"permessage-deflate" in head.lower()
        if not self.gen.welcome:
            opened.set_result(self)

    def frames(self, buf: bytes, now: float) -> bytes:
        """Parse every whole frame of ``buf``; return what is left."""
        while len(buf) >= 2:
            b0, n = buf[0], buf[1] & 0x7F
            off = 2
            if n == 126:
                if len(buf) < 4:
                    break
                n, off = (buf[2] << 8) | buf[3], 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n, off = struct.unpack_from("!Q", buf, 2)[0], 10
            if len(buf) < off + n:
                break
            payload, buf = buf[off : off + n], buf[off + n :]
            opcode = b0 & 0x0F
            if opcode == 0x1:
                if not b0 & 0x80:
                    self.gen.stats.protocol_errors += 1  # fragmented: no server under test does it
                if b0 & 0x40:  # RSV1: permessage-deflate, no context takeover
                    payload = zlib.decompressobj(-15).decompress(payload + b"\x00\x00\xff\xff")
                self.text(payload, now)
            elif opcode == 0x9:
                self.gen.stats.pings += 1
                self.transport.write(masked(0xA, payload))
            elif opcode == 0x8:
                self.gen.stats.server_closes += 1
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                self.closing = True
                self.transport.write(masked(0x8, payload[:2]))
                self.transport.close()
                return b""
            elif opcode != 0xA:
                self.gen.stats.protocol_errors += 1
        return buf

    def text(self, payload: bytes, now: float) -> None:
        kind = payload[2:3]
        if kind == b"C":  # {"ConfigChanged": ...}
            self.count += 1
            self.gen.sink.change(self, payload, now)
        elif kind == b"W":  # {"Welcome": ...}
            opened = self.opened
            if opened is not None and not opened.done():
                opened.set_result(self)
            self.gen.sink.welcome(self, payload, now)
        else:
            self.gen.sink.other(self, payload, now)

    def send_text(self, text: bytes) -> None:
        """A short client text frame (masked), e.g. ``b'"Ping"'``."""
        self.transport.write(masked(0x1, text))

    def close(self) -> None:
        """Leave without a goodbye (RST): no TIME_WAIT pile-up across thousands of runs."""
        self.closing = True
        if self.transport is not None:
            self.transport.abort()


class LoadGen:
    """The clients of one server under test, and the sink their messages go to."""

    def __init__(
        self,
        host: str,
        port: int,
        sink: Sink,
        *,
        tenant: str = "bench",
        deflate: bool = False,
        welcome: bool = False,
        ssl: Any = None,
    ):
        self.loop = asyncio.get_running_loop()
        self.ssl = ssl  # an ssl.SSLContext: wss:// (the server's certificate is for localhost)
        self.host, self.port, self.tenant, self.deflate = host, port, tenant, deflate
        # cfgpush subscribes after the upgrade (with Redis, after a round trip to it): events
        # reach a client from its Welcome on, so a connection counts as open once welcomed.
        self.welcome = welcome
        self.sink = sink
        self.stats = Stats()
        self.clients: list[Client] = []
        self._request = handshake_request(host, port, f"/ws?tenant_id={tenant}", deflate)

    def request(self, last_event_id: str | None = None, *, tenant: str | None = None, port: int | None = None) -> bytes:
        if last_event_id is None and tenant is None and port is None:
            return self._request
        target = f"/ws?tenant_id={tenant or self.tenant}"
        if last_event_id is not None:
            target += f"&last_event_id={last_event_id}"
        return handshake_request(self.host, port or self.port, target, self.deflate)

    async def open_one(
        self,
        vc: Any = None,
        last_event_id: str | None = None,
        timeout: float = 30.0,
        *,
        tenant: str | None = None,
        port: int | None = None,
    ) -> Client:
        """One connection; ``tenant`` and ``port`` default to the generator's own (the soak's
        clients each have a tenant and pick a node per connection)."""
        client = Client(self, self.request(last_event_id, tenant=tenant, port=port), vc)
        try:
            await asyncio.wait_for(
                self.loop.create_connection(
                    lambda: client,
                    self.host,
                    port or self.port,
                    ssl=self.ssl,
                    server_hostname="localhost" if self.ssl else None,
                ),
                timeout,
            )
            await asyncio.wait_for(client.opened, timeout)
            client.opened = None
        except BaseException:
            client.close()
            raise
        return client

    async def connect(self, n: int, *, concurrency: int = 64, rate: float = 0.0, retries: int = 3) -> list[Client]:
        """Open ``n`` connections through a pool of ``concurrency`` workers; return them."""
        pool = Connector(self, concurrency, rate)
        opened: list[Client] = []
        failures: list[BaseException] = []
        done = self.loop.create_future()

        def ok(client: Client, job: Any) -> None:
            opened.append(client)
            check()

        def failed(exc: BaseException, job: Any) -> None:
            tries = job or 0
            if tries + 1 < retries:
                pool.submit(tries + 1, delay=0.2)
            else:
                failures.append(exc)
                check()

        def check() -> None:
            if len(opened) + len(failures) == n and not done.done():
                done.set_result(None)

        pool.on_open, pool.on_fail = ok, failed
        for _ in range(n):
            pool.submit(0)
        if n:
            await done
        pool.stop()
        self.clients.extend(opened)
        if failures:
            raise RuntimeError(f"{len(failures)} of {n} connections to port {self.port} failed: {failures[0]!r}")
        return opened

    def close_all(self) -> None:
        for client in self.clients:
            client.close()
        self.clients.clear()

    def open_count(self) -> int:
        return sum(1 for c in self.clients if c.open)


class Connector:
    """A fixed pool of worker Tasks that open connections: bounded concurrency of handshakes
    (and rate, when ``rate`` > 0). ``submit(job)`` queues one; ``on_open(client, job)`` or
    ``on_fail(exc, job)`` is called with its outcome. ``job`` is passed through (the storm's
    virtual client; a retry count for ``LoadGen.connect``). ``route(job)`` gives the job's
    ``(tenant, port)``, None for the generator's own."""

    def __init__(self, gen: LoadGen, concurrency: int, rate: float = 0.0):
        self.gen = gen
        self.rate = rate
        self.queue: deque = deque()
        self.wakeup = asyncio.Event()
        self.next_slot = 0.0
        self.on_open: Callable[[Client, Any], None] = lambda client, job: None
        self.on_fail: Callable[[BaseException, Any], None] = lambda exc, job: None
        self.last_event_id: Callable[[Any], str | None] = lambda job: None
        self.vc: Callable[[Any], Any] = lambda job: None
        self.route: Callable[[Any], tuple[str | None, int | None]] = lambda job: (None, None)
        self.workers = [asyncio.ensure_future(self._work()) for _ in range(concurrency)]

    def submit(self, job: Any, delay: float = 0.0) -> None:
        if delay > 0:
            self.gen.loop.call_later(delay, self.submit, job)
            return
        self.queue.append(job)
        self.wakeup.set()

    async def _work(self) -> None:
        loop = self.gen.loop
        while True:
            while not self.queue:
                self.wakeup.clear()
                await self.wakeup.wait()
            job = self.queue.popleft()
            if self.rate > 0:  # one slot every 1/rate seconds, shared by the workers
                now = loop.time()
                slot = max(now, self.next_slot)
                self.next_slot = slot + 1.0 / self.rate
                if slot > now:
                    await asyncio.sleep(slot - now)
            try:
                tenant, port = self.route(job)
                client = await self.gen.open_one(self.vc(job), self.last_event_id(job), tenant=tenant, port=port)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # refused, reset, timed out, not 101: the job's owner decides
                self.on_fail(exc, job)
            else:
                self.on_open(client, job)

    def stop(self) -> None:
        for worker in self.workers:
            worker.cancel()


# -- the trigger -------------------------------------------------------------------------------


class HttpClient(asyncio.Protocol):
    """Keep-alive HTTP/1.1 client: requests may be pipelined, answers come back in order."""

    def __init__(self) -> None:
        self.transport = None
        self.buf = b""
        self.waiting: deque[asyncio.Future] = deque()
        self.closed = False

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        self.closed = True
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(ConnectionError(f"control connection lost: {exc}"))

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buf[:end].decode("latin-1").split("\r\n")
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            status = int(head[0].split(" ")[1])
            future = self.waiting.popleft()
            if not future.done():
                future.set_result((status, body))

    def send(
        self, method: str, target: str, host: str, body: bytes = b"", headers: dict | None = None
    ) -> asyncio.Future:
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        future = asyncio.get_running_loop().create_future()
        self.waiting.append(future)
        self.transport.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        return future


class Publisher:
    """``POST /api/v1/events`` (bearer token) and ``GET /healthz`` of one server."""

    def __init__(self, host: str, port: int, token: str, tenant: str = "bench", ssl: Any = None):
        self.host, self.port, self.token, self.tenant = host, port, token, tenant
        self.ssl = ssl
        self.http: HttpClient | None = None

    async def _client(self) -> HttpClient:
        if self.http is None or self.http.closed:
            loop = asyncio.get_running_loop()
            _, self.http = await loop.create_connection(
                HttpClient, self.host, self.port, ssl=self.ssl, server_hostname="localhost" if self.ssl else None
            )
        return self.http

    async def healthy(self, timeout: float) -> None:
        """Wait until ``GET /healthz`` answers 200 (the server serves, not just binds)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                http = await self._client()
                status, _ = await asyncio.wait_for(http.send("GET", "/healthz", f"{self.host}:{self.port}"), 2)
                if status == 200:
                    return
            except (TimeoutError, OSError):
                self.close()
            if loop.time() > deadline:
                raise TimeoutError(f"no 200 from http://{self.host}:{self.port}/healthz within {timeout} s")
            await asyncio.sleep(0.01)

    async def get(self, target: str, timeout: float = 30.0) -> tuple[int, bytes]:
        """``GET target`` on the keep-alive connection (reopened if needed): (status, body)."""
        await self.connect()
        return await asyncio.wait_for(self.http.send("GET", target, f"{self.host}:{self.port}"), timeout)

    async def connect(self) -> None:
        """(Re)open the keep-alive connection: servers close idle ones (cfgpush after its
        --handshake-timeout, 10 s), so call this before a trigger after any long wait."""
        await self._client()

    def publish(self, path: str, tenant: str | None = None) -> asyncio.Future:
        """Write the request now (the caller reads the clock just before); the Future gives
        ``(status, body)``. The connection must be open: ``await connect()`` first."""
        body = json.dumps({"tenant_id": tenant or self.tenant, "change_type": "modified", "path": path}).encode()
        return self.http.send(
            "POST",
            "/api/v1/events",
            f"{self.host}:{self.port}",
            body,
            {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )

    async def post(self, path: str, tenant: str | None = None) -> str:
        """Publish and wait: the event id (connection reopened if the server closed it)."""
        await self.connect()
        return self.event_id(await self.publish(path, tenant))

    @staticmethod
    def event_id(answer: tuple[int, bytes]) -> str:
        status, body = answer
        if status != 202:
            raise RuntimeError(f"publish answered {status}: {body[:200]!r}")
        return json.loads(body)["event_id"]

    def close(self) -> None:
        if self.http is not None and self.http.transport is not None:
            self.http.transport.close()
        self.http = None

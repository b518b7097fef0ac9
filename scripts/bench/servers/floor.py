#!/usr/bin/env python3
"""The floor: a bare asyncio server, the least a Python broadcaster can do.

One ``asyncio.Protocol`` per connection, a minimal HTTP upgrade handshake, client pings
answered, no heartbeat of its own; a published event is encoded once (JSON, then one
WebSocket frame) and the very same bytes are written to every transport of the tenant.
``POST /api/v1/events`` and ``GET /healthz`` are answered on the same port.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import ControlHTTP, EventMaker, arguments, listening, raise_nofile, run

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
by_tenant: dict[str, set] = {}


def text_frame(payload: bytes) -> bytes:
    n = len(payload)
    if n < 126:
        return struct.pack("!BB", 0x81, n) + payload
    if n <= 0xFFFF:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


def unmask(mask: bytes, data: bytes) -> bytes:
    if not data:
        return data
    key = int.from_bytes((mask * (len(data) // 4 + 1))[: len(data)], "big")
    return (int.from_bytes(data, "big") ^ key).to_bytes(len(data), "big")


class Floor(asyncio.Protocol):
    def __init__(self, http: ControlHTTP):
        self.http = http
        self.buf: bytes | None = b""  # None: a control connection
        self.tenant: str | None = None  # set once upgraded

    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc) -> None:
        if self.tenant is not None:
            by_tenant.get(self.tenant, set()).discard(self.transport)

    def data_received(self, data: bytes) -> None:
        if self.tenant is not None:
            self.frames(data)
            return
        if self.buf is None:  # a control connection: the trigger or /healthz
            answer = self.http.feed(data)
            if answer:
                self.transport.write(answer)
            return
        self.buf += data
        if len(self.buf) < 7:
            return
        if not self.buf.startswith(b"GET /ws"):
            data, self.buf = self.buf, None
            self.data_received(data)
            return
        end = self.buf.find(b"\r\n\r\n")
        if end >= 0:
            head, self.buf = self.buf[:end].decode("latin-1"), self.buf[end + 4 :]
            self.upgrade(head)

    def upgrade(self, head: str) -> None:
        lines = head.split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        target = lines[0].split(" ")[1]
        query = dict(p.partition("=")[::2] for p in target.partition("?")[2].split("&") if p)
        key = headers.get("sec-websocket-key", "")
        accept = base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()
        self.transport.write(
            (
                f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
            ).encode()
        )
        self.tenant = query.get("tenant_id", "")
        by_tenant.setdefault(self.tenant, set()).add(self.transport)
        if self.buf:
            data, self.buf = self.buf, b""
            self.frames(data)

    def frames(self, data: bytes) -> None:
        """Client frames (always masked): answer pings and closes, ignore the rest."""
        buf = self.buf + data
        while len(buf) >= 6:
            opcode, n, off = buf[0] & 0x0F, buf[1] & 0x7F, 2
            if n == 126:
                n, off = struct.unpack_from("!H", buf, 2)[0], 4
            elif n == 127:
                n, off = struct.unpack_from("!Q", buf, 2)[0], 10
            if len(buf) < off + 4 + n:
                break
            payload = unmask(buf[off : off + 4], buf[off + 4 : off + 4 + n])
            buf = buf[off + 4 + n :]
            if opcode == 0x9:
                self.transport.write(struct.pack("!BB", 0x8A, len(payload)) + payload)
            elif opcode == 0x8:
                self.transport.write(b"\x88\x02" + (payload[:2] or b"\x03\xe8"))
                self.transport.close()
                break
        self.buf = buf


def main() -> None:
    args = arguments(__doc__.split("\n\n")[0])
    raise_nofile()
    maker = EventMaker()

    def publish(fields: dict) -> str:
        body = maker.make(fields)
        frame = text_frame(json.dumps({"ConfigChanged": body}, separators=(",", ":")).encode())
        for transport in list(by_tenant.get(body["tenant_id"], ())):
            transport.write(frame)  # the same bytes object for every transport
        return body["event_id"]

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: Floor(ControlHTTP(args.publish_token, publish)), args.host, args.port, backlog=128
        )
        listening("floor", args.port)
        async with server:
            await server.serve_forever()

    run(serve, args.loop)


if __name__ == "__main__":
    main()

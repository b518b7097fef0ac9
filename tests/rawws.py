"""A bare WebSocket client on asyncio streams: for peers Tornado's client cannot play.

It does the handshake and then exactly what the test says: stay silent (no pong), stop
reading, reset the connection, or send hand-made frames.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import struct


class RawWebSocket:
    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, status: int, headers: bytes, body: bytes = b""
    ):
        self.reader = reader
        self.writer = writer
        self.status = status
        self.headers = headers
        self.body = body

    @classmethod
    async def connect(
        cls, port: int, query: str, *, host: str = "127.0.0.1", rcvbuf: int | None = None, extra_headers: str = ""
    ) -> RawWebSocket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Before connect, so the advertised window stays small: a reader that stops
            # reading then backs the server up after a few KiB instead of megabytes.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (host, port)), 5)
            reader, writer = await asyncio.open_connection(sock=sock)
        except BaseException:
            sock.close()
            raise
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET /ws?{query} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                f"{extra_headers}\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        status = int(head.split(b" ", 2)[1])
        body = b""
        if status != 101:
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    body = await reader.readexactly(int(line.split(b":")[1]))
        return cls(reader, writer, status, head, body)

    async def read_frame(self, timeout: float = 3.0) -> tuple[int, bytes]:
        """``(opcode, payload)`` of the next frame (server frames are not masked)."""

        async def _read():
            b0, b1 = await self.reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", await self.reader.readexactly(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", await self.reader.readexactly(8))[0]
            return b0 & 0x0F, await self.reader.readexactly(n)

        return await asyncio.wait_for(_read(), timeout)

    async def read_json(self, timeout: float = 3.0):
        """The next text frame as JSON, answering nothing (pings are skipped, not answered)."""
        while True:
            opcode, payload = await self.read_frame(timeout)
            if opcode == 0x1:
                return json.loads(payload)
            if opcode == 0x8:
                code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
                raise ConnectionAbortedError(code)

    def send_frame(self, opcode: int, payload: bytes, *, fin: bool = True) -> None:
        """A masked client frame (RFC 6455 requires clients to mask)."""
        mask = os.urandom(4)
        n = len(payload)
        head = bytes([(0x80 if fin else 0) | opcode])
        if n < 126:
            head += bytes([0x80 | n])
        elif n <= 0xFFFF:
            head += bytes([0x80 | 126]) + struct.pack("!H", n)
        else:
            head += bytes([0x80 | 127]) + struct.pack("!Q", n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.writer.write(head + mask + masked)

    def reset(self) -> None:
        """Drop the connection with a TCP reset, as a crashed peer or a cut network does."""
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    def close(self) -> None:
        self.writer.transport.abort()

"""A bare Server-Sent Events client on asyncio streams: the test decides when the connection ends."""

from __future__ import annotations

import asyncio
import socket


class RawSSE:
    """``GET /events`` on a plain socket: the test decides when the connection ends
    (closing tornado_cfgpush.testing's SSEClient does not close its socket)."""

    def __init__(self, reader, writer, status: int, head: bytes):
        self.reader, self.writer, self.status, self.head = reader, writer, status, head
        self.buffer = b""

    @classmethod
    async def connect(
        cls,
        port: int,
        query: str,
        headers: str = "",
        path: str = "/events",
        timeout: float = 10,
        *,
        rcvbuf: int | None = None,
        version: str = "HTTP/1.1",
    ) -> RawSSE:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            # Before connect, so the advertised window stays small: a reader that stops
            # reading then backs the server up after a few KiB instead of megabytes.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port)), 5)
            reader, writer = await asyncio.open_connection(sock=sock)
        except BaseException:
            sock.close()
            raise
        writer.write(
            f"GET {path}?{query} {version}\r\nHost: 127.0.0.1:{port}\r\n"
            f"Accept: text/event-stream\r\n{headers}\r\n".encode("latin-1")
        )
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        except BaseException:
            writer.transport.abort()
            raise
        return cls(reader, writer, int(head.split(b" ", 2)[1]), head)

    async def read_until(self, marker: bytes, timeout: float = 5.0) -> None:
        while marker not in self.buffer:
            chunk = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not chunk:
                raise EOFError(self.buffer)
            self.buffer += chunk
        self.buffer = self.buffer[self.buffer.index(marker) + len(marker) :]

    def close(self) -> None:
        self.writer.transport.abort()

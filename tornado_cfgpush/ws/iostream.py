"""An asyncio transport over a Tornado ``IOStream``: a WebSocket over TLS after its upgrade.

A plain connection's socket goes to asyncio after the upgrade (handlers/ws.py,
``loop.connect_accepted_socket``). A TLS connection cannot: its session (keys, sequence numbers)
lives in the ``SSLSocket`` Tornado's ``SSLIOStream`` did the handshake on, and a duplicated file
descriptor would only carry the encrypted bytes. So ``StreamTransport`` keeps that stream and
shows ``WebSocketConnection`` the transport it expects: ``write`` (with the slow-client bound:
``pause_writing`` once the unsent bytes pass the high-water mark), ``pause_reading`` /
``resume_reading``, ``close`` after what is buffered, ``abort``.

Only TLS connections use it. A write goes straight to the ``SSLSocket`` when nothing is queued
(the common case); what the socket does not take goes through the stream (a Future per write).
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from typing import Any

from tornado.iostream import IOStream, StreamBufferFullError, StreamClosedError

READ_CHUNK = 64 * 1024


def _retrieve(end: int, transport: StreamTransport, future: asyncio.Future[None]) -> None:
    if not future.cancelled() and future.exception() is None:
        transport._flushed_to(end)


class StreamTransport(asyncio.Transport):
    def __init__(self, stream: IOStream, protocol: asyncio.Protocol):
        super().__init__()
        self._stream = stream
        self._protocol = protocol
        self._high = 64 * 1024
        self._low = 16 * 1024
        self._queued = 0  # bytes handed to the stream, ever
        self._flushed = 0  # of those, bytes the stream wrote to the socket
        self._writing_paused = False
        self._closing = False
        self._lost = False
        self._reading = asyncio.Event()
        self._reading.set()
        stream.set_close_callback(self._on_stream_closed)
        protocol.connection_made(self)
        self._reader = asyncio.ensure_future(self._read())

    # -- reading --------------------------------------------------------------------------------

    async def _read(self) -> None:
        stream = self._stream
        try:
            while True:
                if not self._reading.is_set():
                    await self._reading.wait()
                data = await stream.read_bytes(READ_CHUNK, partial=True)
                if not self._lost:
                    self._protocol.data_received(data)
        except StreamClosedError:
            pass  # the close callback tells the protocol

    def pause_reading(self) -> None:
        self._reading.clear()

    def resume_reading(self) -> None:
        self._reading.set()

    def is_reading(self) -> bool:
        return self._reading.is_set()

    # -- writing --------------------------------------------------------------------------------

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._high = 64 * 1024 if high is None else high
        self._low = self._high // 4 if low is None else low

    def get_write_buffer_size(self) -> int:
        return self._queued - self._flushed

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def write(self, data: bytes | bytearray | memoryview) -> None:
        stream = self._stream
        if self._closing or stream.closed() or not data:
            return
        if not stream.writing():
            # Nothing queued: straight to the TLS socket, without a Future (what Tornado's own
            # write does first, less its bookkeeping); only what it does not take is queued.
            try:
                sent = stream.socket.send(data)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                sent = 0
            except OSError as exc:  # the peer is gone
                stream.close(exc_info=exc)
                return
            if sent == len(data):
                return
            data = data[sent:]
        try:
            future = stream.write(bytes(data) if isinstance(data, bytearray) else data)
        except (StreamClosedError, StreamBufferFullError):
            return
        self._queued += len(data)
        future.add_done_callback(functools.partial(_retrieve, self._queued, self))
        if not self._writing_paused and self._queued - self._flushed > self._high:
            self._writing_paused = True
            self._protocol.pause_writing()

    def _flushed_to(self, end: int) -> None:
        if end > self._flushed:
            self._flushed = end
        if self._writing_paused and self._queued - self._flushed <= self._low:
            self._writing_paused = False
            self._protocol.resume_writing()

    def can_write_eof(self) -> bool:
        return False

    # -- closing --------------------------------------------------------------------------------

    def is_closing(self) -> bool:
        return self._closing or self._stream.closed()

    def close(self) -> None:
        """Close once what is buffered is written."""
        if self._closing:
            return
        self._closing = True
        stream = self._stream
        if stream.closed():
            return
        if not stream.writing():
            stream.close()
            return
        stream.write(b"").add_done_callback(lambda _: stream.close())

    def abort(self) -> None:
        self._closing = True
        self._stream.close()

    def _on_stream_closed(self) -> None:
        if self._lost:
            return
        self._lost = True
        self._closing = True
        self._reading.set()  # the reader sees the closed stream and ends
        error = self._stream.error
        self._protocol.connection_lost(error if isinstance(error, Exception) else None)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        socket = self._stream.socket
        if name == "peername" and socket is not None:
            try:
                return socket.getpeername()
            except OSError:
                return default
        if name == "socket":
            return socket
        return default

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
    # Slots, and reads chained by callbacks rather than a Task per connection: thousands idle.
    __slots__ = (
        "_stream",
        "_protocol",
        "_high",
        "_low",
        "_queued",
        "_flushed",
        "_writing_paused",
        "_closing",
        "_lost",
        "_reading",
        "_read",
    )

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
        self._reading = True
        self._read: asyncio.Future[bytes] | None = None  # the read in flight
        stream.set_close_callback(self._on_stream_closed)
        protocol.connection_made(self)
        self._read_next()

    # -- reading --------------------------------------------------------------------------------

    def _read_next(self) -> None:
        if self._lost or not self._reading or self._read is not None:
            return
        try:
            read = self._stream.read_bytes(READ_CHUNK, partial=True)  # a Future (Tornado's are asyncio's)
        except StreamClosedError:
            return  # the close callback tells the protocol
        assert isinstance(read, asyncio.Future)
        self._read = read
        read.add_done_callback(self._on_read)

    def _on_read(self, future: asyncio.Future[bytes]) -> None:
        self._read = None
        if future.cancelled() or future.exception() is not None:
            return  # closed: the close callback tells the protocol
        if not self._lost:
            self._protocol.data_received(future.result())
        self._read_next()

    def pause_reading(self) -> None:
        self._reading = False  # a read in flight still delivers; no other follows

    def resume_reading(self) -> None:
        self._reading = True
        self._read_next()

    def is_reading(self) -> bool:
        return self._reading

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

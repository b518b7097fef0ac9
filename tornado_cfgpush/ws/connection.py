"""The asyncio side of a WebSocket: one ``asyncio.Protocol`` around a ``ServerProtocol``.

Why not Tornado's ``WebSocketHandler`` for the life of the connection: it keeps, per
connection, the request handler, the HTTP connection, an ``IOStream``, a frame-reading
coroutine with its Task and Futures, and writes through a Future per frame (about 16 KB per
idle connection and 20 to 25 µs per delivery). A push server's connection is idle almost
always; after the upgrade it needs a socket, a frame parser and a few fields. So Tornado does
everything up to the upgrade (handlers/ws.py), then the socket is handed to asyncio
(``loop.connect_accepted_socket``) and served here.

This layer is thin on purpose: it feeds received bytes to the sans-I/O core (ws/protocol.py),
writes what the core says to send, and owns what needs I/O or a clock:

* the transport: a delivery is one ``transport.write`` of prepared bytes (a direct ``send``
  when the socket keeps up);
* flow control: asyncio calls ``pause_writing`` once the unsent bytes pass ``max_backlog``,
  which is the slow-client rule (``on_backlog_full``);
* the close timer: after our close frame, the peer has ``CLOSE_TIMEOUT`` to answer before the
  socket is dropped.

Subclasses (handlers/ws.py) get ``on_message``, ``on_peer_close``, ``on_failure``,
``on_backlog_full`` and ``on_lost``.
"""

from __future__ import annotations

import asyncio
import time

from .frames import CloseCode
from .protocol import CLOSED, OPEN, Close, Failure, Message, ServerProtocol

# How long a closing connection waits for the peer's close frame before dropping the socket
# (Tornado's value): a peer that stopped reading never answers.
CLOSE_TIMEOUT = 5.0


class WebSocketConnection(asyncio.Protocol):
    # Slots, not a __dict__: thousands of these live for hours.
    __slots__ = ("protocol", "max_backlog", "last_seen", "_transport", "_close_timer")

    def __init__(self, protocol: ServerProtocol, max_backlog: int):
        self.protocol = protocol
        self.max_backlog = max_backlog
        self.last_seen = time.monotonic()  # of the last bytes from the peer (the heartbeat rule)
        self._transport: asyncio.Transport | None = None
        self._close_timer: asyncio.TimerHandle | None = None

    # -- asyncio's side ---------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's or uvloop's (which is not an asyncio.Transport subclass).
        self._transport = transport  # type: ignore[assignment]
        # pause_writing() is called once the unsent bytes pass the bound: the slow-client rule.
        transport.set_write_buffer_limits(high=self.max_backlog)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        now = self.last_seen = time.monotonic()
        self.receive(data, now)

    def receive(self, data: bytes, now: float) -> None:
        """Feed ``data`` to the core; write what it answers, then act on what happened."""
        protocol = self.protocol
        events = protocol.receive_data(data, now)
        out = protocol.data_to_send()
        transport = self._transport
        if transport is None:
            return
        if out:
            transport.write(out)  # pongs and close frames first, as the core queued them
        # A message read together with the peer's close frame, before it, counts as if it had
        # been read alone (a client's last Ack, then its close); answers to it go nowhere.
        before_peer_close = protocol.state == CLOSED and any(isinstance(e, Close) for e in events)
        for event in events:
            if isinstance(event, Message):
                if protocol.state == OPEN or before_peer_close:  # not after a close from either side
                    self.on_message(event.data)
            elif isinstance(event, Close):
                before_peer_close = False
                self.on_peer_close(event.code)
                self.finish()  # after what is buffered (the echo): the server closes TCP first
            elif isinstance(event, Failure):
                self.on_failure(event.code, event.reason)
                if event.code == CloseCode.POLICY_VIOLATION:
                    # Over its frame budget, a client may have more frames in flight: closing
                    # now, with them unread, would reset the connection and could destroy our
                    # close frame before the client reads it. Read nothing more; give it time.
                    self.expect_close()
                else:
                    self.finish()
            # Ping (its pong is written) and Pong: last_seen is all they mean here.

    def eof_received(self) -> bool:
        return False  # the peer half-closed: close our side too

    def pause_writing(self) -> None:
        self.on_backlog_full()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self.on_lost()

    # -- our side ------------------------------------------------------------------------------------

    def write(self, data: bytes) -> bool:
        """Prepared frame bytes to the peer; False once a close frame went either way."""
        transport = self._transport
        if transport is None or self.protocol.state != OPEN:
            return False
        transport.write(data)
        return True

    def send_close(self, code: int, reason: str = "") -> bool:
        """Our close frame (once; False when a close frame already went either way)."""
        transport = self._transport
        if transport is None or not self.protocol.send_close(code, reason):
            return False
        transport.write(self.protocol.data_to_send())
        return True

    def expect_close(self) -> None:
        """Wait up to CLOSE_TIMEOUT for the peer's close frame (or its end of stream), then
        drop the socket. When the core reads nothing more (it failed), reading stops too."""
        transport = self._transport
        if transport is None or self._close_timer is not None:
            return
        if self.protocol.state == CLOSED:
            transport.pause_reading()
        self._close_timer = asyncio.get_running_loop().call_later(CLOSE_TIMEOUT, self.abort)

    def finish(self) -> None:
        """Close TCP once what is buffered is out."""
        if self._transport is not None:
            self._transport.close()

    def abort(self) -> None:
        """Drop the socket now (a silent peer, or no answer to our close frame)."""
        if self._transport is not None:
            self._transport.abort()

    def pause_reading(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()

    def buffered(self) -> int:
        """Bytes written and not yet taken by the kernel."""
        return self._transport.get_write_buffer_size() if self._transport is not None else 0

    @property
    def is_open(self) -> bool:
        """Whether the socket is still there (closing or not)."""
        return self._transport is not None and not self._transport.is_closing()

    # -- for subclasses ----------------------------------------------------------------------------

    def on_message(self, message: str | bytes) -> None:
        pass

    def on_peer_close(self, code: int | None) -> None:
        pass

    def on_failure(self, code: int, reason: str) -> None:
        pass

    def on_backlog_full(self) -> None:
        pass

    def on_lost(self) -> None:
        pass

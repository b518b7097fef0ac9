"""A TCP proxy that misbehaves on demand: a slow link, a partition and its heal, a reset.

One proxy forwards one listening port to one target (``127.0.0.1:<port>`` by default), every
connection in both directions, until told otherwise:

* ``delay(low, high)``: each chunk read waits a random time in [low, high] seconds before it
  is written on, in both directions, in order (a chunk never overtakes the one before it, so
  a chunk waits at most ``high``); ``delay(0)`` ends it. A link of 100 to 300 ms per chunk
  makes a round trip of 200 to 600 ms.
* ``hold()``: nothing is forwarded any more, on open connections and new ones, and nothing
  is closed: the data waits in the sockets' buffers (the senders' writes stall once those
  are full) and new connections wait before reaching the target. ``release()`` forwards
  what waited, in order, and goes on: a partition, then its heal. A peer that gave up
  meanwhile (closed its socket) still has what it sent before delivered, then its close,
  as TCP would once the path is back.
* ``drop(refuse=False)``: every open connection is reset (RST on both sides, anything
  unsent is lost); with ``refuse``, connections made afterwards are reset at once, until
  ``release()``.
* ``freeze()``: the connections open at that moment swallow what they read, in both
  directions, and close nothing (a NAT that forgot the flow: a half-open connection); later
  connections are forwarded normally.

``accepted`` counts connections, ``writes_up`` the chunks written towards the target (what
crosses the link: a pipeline of many commands is a few chunks), ``resets`` the connections
``drop`` reset. Used by scripts/faults.py (each node's link to Redis) and by the tests
(tests/tcpproxy.py).
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct

CHUNK = 65536
QUEUED_CHUNKS = 256  # per direction: past it the reader waits (the sender's writes stall)


class _Link:
    """One proxied connection: the client's side, the target's side, their pumps."""

    __slots__ = ("client", "upstream", "tasks", "frozen", "closed")

    def __init__(self, client: asyncio.StreamWriter):
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task] = []
        self.frozen = False
        self.closed = False

    def writers(self) -> list[asyncio.StreamWriter]:
        return [w for w in (self.client, self.upstream) if w is not None]


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST (SO_LINGER 0), not a FIN: the peer's next read or write fails."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


class FaultProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1", *, seed: int | None = None):
        self.target = (target_host, target_port)
        self.port = 0
        self.accepted = 0
        self.writes_up = 0
        self.resets = 0
        self._server: asyncio.AbstractServer | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task] = set()
        self._open = asyncio.Event()  # cleared while held
        self._open.set()
        self._refusing = False
        self._delay = (0.0, 0.0)
        self._random = random.Random(seed)

    async def start(self) -> FaultProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    # -- faults -----------------------------------------------------------------------------------

    def delay(self, low: float, high: float | None = None) -> None:
        """Each chunk waits ``low`` to ``high`` seconds (``high`` defaults to ``low``; 0: none)."""
        high = low if high is None else high
        if not 0 <= low <= high:
            raise ValueError(f"a delay range needs 0 <= low <= high, not {low}, {high}")
        self._delay = (low, high)

    @property
    def held(self) -> bool:
        return not self._open.is_set()

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._refusing = False
        self._open.set()

    def drop(self, *, refuse: bool = False) -> int:
        """Reset every open connection; returns how many. ``refuse``: reset new ones too,
        until ``release()``."""
        self._refusing = self._refusing or refuse
        links = list(self._links)
        for link in links:
            self._end(link, reset=True)
        self.resets += len(links)
        return len(links)

    def freeze(self) -> None:
        for link in self._links:
            link.frozen = True

    # -- forwarding -------------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._refusing:
            _reset(writer)
            return
        link = _Link(writer)
        self._links.add(link)
        self._tasks.add(asyncio.current_task())
        try:
            await self._open.wait()  # held: the connection waits before it reaches the target
            if link.closed:
                return
            try:
                up_reader, link.upstream = await asyncio.open_connection(*self.target)
            except OSError:
                self._end(link, reset=True)
                return
            if link.closed:  # dropped while connecting
                _reset(link.upstream)
                return
            for src, dst, up in ((reader, link.upstream, True), (up_reader, writer, False)):
                queue: asyncio.Queue = asyncio.Queue(QUEUED_CHUNKS)
                link.tasks += [
                    asyncio.ensure_future(self._read(src, queue, link)),
                    asyncio.ensure_future(self._write(queue, dst, link, up)),
                ]
            for task in link.tasks:
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            self._tasks.discard(asyncio.current_task())

    async def _read(self, src: asyncio.StreamReader, queue: asyncio.Queue, link: _Link) -> None:
        loop = asyncio.get_running_loop()
        last_due = 0.0
        try:
            while True:
                await self._open.wait()  # held: leave it in the kernel's buffers
                data = await src.read(CHUNK)
                if not data:
                    break
                if link.frozen:
                    continue  # swallowed: the other side never hears of it
                low, high = self._delay
                due = loop.time() + (self._random.uniform(low, high) if high else 0.0)
                last_due = max(due, last_due)  # in order: never before the chunk ahead of it
                await queue.put((last_due, data))
        except (ConnectionError, OSError):
            pass
        await queue.put(None)

    async def _write(self, queue: asyncio.Queue, dst: asyncio.StreamWriter, link: _Link, up: bool) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                item = await queue.get()
                if item is None:
                    break
                due, data = item
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)  # wait-ok: the link's delay itself
                await self._open.wait()
                if up:
                    self.writes_up += 1
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if not link.frozen and not link.closed:
                # One side ended: what it sent was written on; end the other side too.
                self._end(link, reset=False)

    def _end(self, link: _Link, *, reset: bool) -> None:
        if link.closed:
            return
        link.closed = True
        self._links.discard(link)
        for task in link.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        for writer in link.writers():
            if reset:
                _reset(writer)
            else:
                writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            self._end(link, reset=False)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

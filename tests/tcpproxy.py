"""A TCP proxy that can go silent: a half-open connection, made on purpose.

``freeze()`` stops forwarding on every connection open at that moment, in both directions,
without closing anything: each side's socket stays up and hears nothing, as when a NAT or a
load balancer forgets a flow. Connections accepted afterwards are forwarded normally.
"""

from __future__ import annotations

import asyncio


class FreezableProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.port = 0
        self.accepted = 0
        self._server: asyncio.AbstractServer | None = None
        self._links: list[dict] = []
        self._tasks: set[asyncio.Task] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self.writes_up = 0  # chunks forwarded towards the target (what a client sent)

    async def start(self) -> FreezableProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers += [writer, up_writer]
        link = {"frozen": False}
        self._links.append(link)
        for src, dst, up in ((reader, up_writer, True), (up_reader, writer, False)):
            task = asyncio.ensure_future(self._pipe(src, dst, link, self if up else None))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _pipe(
        src: asyncio.StreamReader, dst: asyncio.StreamWriter, link: dict, counter: FreezableProxy | None
    ) -> None:
        try:
            while True:
                data = await src.read(65536)
                if not data:
                    break
                if link["frozen"]:
                    continue  # swallowed: the other side never hears of it
                if counter is not None:
                    counter.writes_up += 1
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if not link["frozen"]:
                dst.close()

    def freeze(self) -> None:
        for link in self._links:
            link["frozen"] = True

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            await self._server.wait_closed()

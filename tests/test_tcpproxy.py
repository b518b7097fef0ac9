"""The fault proxy (scripts/bench/tcpproxy.py) does what the fault suite relies on: a delay
that keeps order, a hold that loses nothing and delivers on release, a drop that resets.

An echo server behind the proxy, a client in front of it; real sockets.
"""

from __future__ import annotations

import asyncio

import pytest

from tornado_cfgpush.testing import wait_for

from .tcpproxy import FaultProxy

WAIT = 10.0


@pytest.fixture
def echo(io_loop):
    """An echo server on a free port: ``(port, connections accepted, bytes received)``."""
    accepted: list[asyncio.StreamWriter] = []
    received = bytearray()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        try:
            while data := await reader.read(65536):
                received.extend(data)
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        writer.close()

    server = io_loop.run_sync(lambda: asyncio.start_server(serve, "127.0.0.1", 0))
    yield server.sockets[0].getsockname()[1], accepted, received
    server.close()
    for writer in accepted:
        writer.close()


async def connected(proxy: FaultProxy):
    return await asyncio.open_connection("127.0.0.1", proxy.port)


async def read_exactly(reader: asyncio.StreamReader, n: int) -> bytes:
    return await asyncio.wait_for(reader.readexactly(n), WAIT)


@pytest.mark.gen_test(timeout=30)
async def test_a_delayed_link_keeps_the_order_and_waits_at_least_the_low_bound(echo):
    port, _, _ = echo
    proxy = await FaultProxy(port, seed=7).start()
    try:
        proxy.delay(0.05, 0.15)
        reader, writer = await connected(proxy)
        loop = asyncio.get_running_loop()
        sent = loop.time()
        for i in range(20):
            writer.write(b"%02d" % i)
            await writer.drain()
            await asyncio.sleep(0.005)  # wait-ok: separate chunks, each with its own delay
        got = await read_exactly(reader, 40)
        assert got == b"".join(b"%02d" % i for i in range(20))
        # A lower bound, not a timing: each direction waited at least 50 ms.
        assert loop.time() - sent >= 0.1
        proxy.delay(0)
        writer.write(b"ok")
        assert await read_exactly(reader, 2) == b"ok"
        writer.close()
    finally:
        await proxy.close()
    with pytest.raises(ValueError):
        proxy.delay(0.3, 0.1)


@pytest.mark.gen_test(timeout=30)
async def test_a_hold_loses_nothing_and_delivers_in_order_on_release(echo):
    port, accepted, received = echo
    proxy = await FaultProxy(port).start()
    try:
        reader, writer = await connected(proxy)
        writer.write(b"before")
        assert await read_exactly(reader, 6) == b"before"
        proxy.hold()
        assert proxy.held
        writer.write(b"during")
        late_reader, late_writer = await connected(proxy)  # a connection made during the hold
        late_writer.write(b"late")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(reader.readexactly(6), 0.3)  # wait-ok: nothing crosses a hold
        assert len(accepted) == 1  # the new connection has not reached the target
        proxy.release()
        assert await read_exactly(reader, 6) == b"during"
        assert await read_exactly(late_reader, 4) == b"late"
        assert len(accepted) == 2
        # A peer that gave up during a hold: what it sent arrives on release, then its close.
        proxy.hold()
        _, gone_writer = await connected(proxy)
        gone_writer.write(b"last words")
        await gone_writer.drain()
        gone_writer.close()
        proxy.release()
        await wait_for(lambda: received.endswith(b"last words"), WAIT)
        assert len(accepted) == 3
        for w in (writer, late_writer):
            w.close()
    finally:
        await proxy.close()


@pytest.mark.gen_test(timeout=30)
async def test_a_drop_resets_every_connection_and_refuses_until_released(echo):
    port, _, _ = echo
    proxy = await FaultProxy(port).start()
    try:
        reader, writer = await connected(proxy)
        writer.write(b"hi")
        assert await read_exactly(reader, 2) == b"hi"
        assert proxy.drop(refuse=True) == 1 and proxy.resets == 1
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await read_exactly(reader, 1)
        refused_reader, refused_writer = await connected(proxy)
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await read_exactly(refused_reader, 1)
        proxy.release()
        reader, writer = await connected(proxy)
        writer.write(b"back")
        assert await read_exactly(reader, 4) == b"back"
        writer.close()
        refused_writer.close()
    finally:
        await proxy.close()

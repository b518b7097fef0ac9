"""A reader that stops reading costs the server a bounded amount of memory, and no one else."""

import asyncio
import os

import pytest

from tornado_cfgpush.closing import CloseReason
from tornado_cfgpush.testing import wait_for

from .rawsse import RawSSE
from .rawws import RawWebSocket


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.settings(max_backlog_bytes=1024 * 1024, history_size=50)
@pytest.mark.gen_test(timeout=120)
async def test_stuck_reader_keeps_server_memory_bounded_and_resumes(server_port, connect, core):
    fast = await connect("acme")
    await fast.expect("Welcome")
    stuck = await RawWebSocket.connect(server_port, "tenant_id=acme", rcvbuf=4096)
    await stuck.read_json()
    meta = {"blob": "x" * 3500}
    before = rss_bytes()
    total = 16_000  # about 60 MB of events through the server
    received = 0
    last_id = None
    for i in range(total):
        last_id = await core.publish(
            {"tenant_id": "acme", "change_type": "modified", "path": f"f{i}.json", "meta": meta}, "test"
        )
        # Keep the honest client reading as it goes, so only the stuck one backs up.
        while received <= i - 50:
            await fast.expect("ConfigChanged")
            received += 1
        if i % 64 == 0:
            await asyncio.sleep(0)  # wait-ok: give the loop a turn to move bytes
    while received < total:
        assert (await fast.expect("ConfigChanged"))["event_id"].endswith(f"-{received + 1}")
        received += 1
    growth = rss_bytes() - before
    print(f"RSS growth with a stuck reader after {total} events of 3.5 KB: {growth / 2**20:.1f} MiB")
    assert core.hub.slow_closes == 1
    assert core.hub.connection_count("acme") == 1
    # Bounded: the backlog bound (1 MiB), the history (50 events), allocator slack; nowhere
    # near the 60 MB that went through.
    assert growth < 24 * 2**20
    # Back to reading: what was queued arrives, then the 1013 close; it resumes from there.
    seen = await drain(stuck)
    again = await connect("acme", last_event_id=seen)
    assert (await again.expect("Welcome"))["last_event_id"] == last_id
    # 16 000 events went by and the history holds 50: it must be told to reload.
    resync = await again.expect("Resync")
    assert (resync["reason"], resync["last_event_id"]) == ("history_expired", last_id)


async def drain(ws: RawWebSocket) -> str:
    """Read a closed-for-slowness connection to its end: the last event id it got."""
    last = None
    with pytest.raises(ConnectionAbortedError) as closed:
        while True:
            message = await ws.read_json(timeout=5)
            if "ConfigChanged" in message:
                last = message["ConfigChanged"]["event_id"]
    assert closed.value.args[0] == 1013
    ws.close()
    return last


@pytest.mark.settings(max_backlog_bytes=64 * 1024, history_size=5000)
@pytest.mark.gen_test(timeout=60)
async def test_slow_reader_resumes_exactly_after_reconnecting(server_port, connect, core):
    stuck = await RawWebSocket.connect(server_port, "tenant_id=acme", rcvbuf=4096)
    await stuck.read_json()
    ids = []
    while core.hub.slow_closes == 0 and len(ids) < 4000:
        ids.append(
            await core.publish(
                {
                    "tenant_id": "acme",
                    "change_type": "modified",
                    "path": f"f{len(ids)}.json",
                    "meta": {"blob": "y" * 3000},
                },
                "test",
            )
        )
    assert core.hub.slow_closes == 1
    more = [
        await core.publish({"tenant_id": "acme", "change_type": "modified", "path": f"g{i}.json"}, "test")
        for i in range(5)
    ]
    seen = await drain(stuck)
    missed = (ids + more)[(ids + more).index(seen) + 1 :]
    again = await connect("acme", last_event_id=seen)
    await again.expect("Welcome")
    assert [(await again.expect("ConfigChanged"))["event_id"] for _ in missed] == missed
    await again.expect_nothing()


@pytest.mark.settings(max_backlog_bytes=64 * 1024, history_size=50)
@pytest.mark.gen_test(timeout=120)
async def test_a_stuck_sse_reader_is_closed_past_the_backlog_bound(server_port, connect, core):
    """The SSE sink bounds what Tornado queues for a stream (IOStream.max_write_buffer_size):
    past --max-backlog-bytes the stream is dropped, its backlog with it; the others go on."""
    fast = await connect("acme")
    await fast.expect("Welcome")
    stuck = await RawSSE.connect(server_port, "tenant_id=acme", rcvbuf=4096)
    try:
        await stuck.read_until(b"event: Welcome")
        meta = {"blob": "x" * 3500}
        published = 0
        while core.hub.slow_closes == 0:
            assert published < 20_000, "the stuck stream was never closed"  # 70 MB: past any socket buffer
            await core.publish(
                {"tenant_id": "acme", "change_type": "modified", "path": f"f{published}.json", "meta": meta}, "test"
            )
            published += 1
            await fast.expect("ConfigChanged")  # the honest reader keeps up
        await wait_for(lambda: core.hub.connection_count("acme") == 1 and core.limits.total == 1)
        assert core.hub.closes[CloseReason.TOO_SLOW] == 1
        print(f"SSE stream closed as too slow after {published} events of 3.5 KB")
    finally:
        stuck.close()

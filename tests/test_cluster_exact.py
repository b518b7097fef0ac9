"""Exactly once and in order across nodes and Redis faults (issue #19 points 1 to 3): versions
that keep a late node from rolling a file back, publishes batched into one round trip, and a
Redis emptied behind the nodes' backs (its clock behind the old one's) noticed by its epoch.

Two ``CfgPush`` nodes on a private redis-server (the ``cluster`` fixture of tests/conftest.py),
real WebSocket clients. The longer fault scenarios, with a TCP proxy that delays, holds and
drops, are in scripts/ and tests/test_faults.py.
"""

from __future__ import annotations

import pytest

from tornado_cfgpush.broker.memory import MemoryBroker
from tornado_cfgpush.testing.redisserver import WAIT

from .redisnodes import read_ids

SUM = {n: "sha256:" + f"{n:064x}" for n in range(1, 10)}


def change(node, path: str, checksum: str, version: int | None, **extra):
    return node.service.publish(
        {"tenant_id": "acme", "change_type": "modified", "path": path, "checksum": checksum, **extra},
        "filesystem",
        version=version,
    )


async def welcomed(client):
    await client.expect("Welcome", WAIT)
    return client


@pytest.mark.gen_test(timeout=60)
async def test_a_late_node_never_rolls_a_file_back(cluster):
    """Issue #19: a node cut off from Redis published its queued, older observation after the
    other had published newer ones; clients got the file rolled back. Now the broker compares
    each publish with the version recorded for its path, in the same script as the append."""
    a, b = await cluster(), await cluster()
    client = await welcomed(await a.connect())
    v1 = await change(a, "x.json", SUM[1], 100)
    v3 = await change(a, "x.json", SUM[3], 300)
    assert await read_ids(client, 2) == [v1, v3]
    # b observed version 2 earlier and publishes it only now: dropped, the newest id returned.
    assert await change(b, "x.json", SUM[2], 200) == v3
    # b catches up with version 3 itself: the same change, published once.
    assert await change(b, "x.json", SUM[3], 300) == v3
    # the same bytes again, observed later (a touch): no event, the newer version recorded,
    assert await change(b, "x.json", SUM[3], 400) == v3
    # so that an observation between the two is now stale too.
    assert await change(a, "x.json", SUM[2], 350) == v3
    await client.expect_nothing(0.5)
    # A deletion observed after the last version is published; a publish without a version (a
    # plugin, the publish API) is compared by content only, as before.
    gone = await a.service.publish(
        {"tenant_id": "acme", "change_type": "deleted", "path": "x.json"}, "filesystem", version=500
    )
    assert await read_ids(client, 1) == [gone]
    assert await change(b, "x.json", SUM[3], 450) == gone  # b's older view of the file: dropped
    again = await change(b, "x.json", SUM[4], None)
    assert await read_ids(client, 1) == [again]


@pytest.mark.gen_test(timeout=60)
async def test_the_embedded_broker_keeps_the_same_order():
    delivered = []
    broker = MemoryBroker(delivered.append)
    fields = {"tenant_id": "acme", "change_type": "modified", "path": "x.json"}
    v2 = await broker.publish({**fields, "checksum": SUM[2]}, version=200)
    assert await broker.publish({**fields, "checksum": SUM[1]}, version=100) == v2
    assert await broker.publish({**fields, "checksum": SUM[2]}, version=300) == v2
    assert await broker.publish({**fields, "checksum": SUM[1]}, version=250) == v2
    v3 = await broker.publish({**fields, "checksum": SUM[3]}, version=301)
    assert [e.event_id for e in delivered] == [v2, v3]


@pytest.mark.gen_test(timeout=60)
async def test_many_publishes_go_in_one_round_trip_in_order(cluster, redis_server):
    """A source's batch is one pipeline: its throughput does not depend on the link's latency
    (issue #19: one publish per round trip gave 2.5 events/s over a 200 ms link). Counted as
    what crosses the link, not timed: a proxy between the node and Redis counts the writes."""
    from .tcpproxy import FreezableProxy

    proxy = await FreezableProxy(redis_server.port).start()
    try:
        a = await cluster(url=f"redis://127.0.0.1:{proxy.port}/0")
        client = await welcomed(await a.connect())
        payloads = [
            {"tenant_id": "acme", "change_type": "modified", "path": f"f{i}.json", "checksum": SUM[1 + i % 9]}
            for i in range(200)
        ]
        before = proxy.writes_up
        ids = await a.service.publish_many(payloads, "filesystem", [1000 + i for i in range(200)])
        writes = proxy.writes_up - before
        assert all(isinstance(i, str) for i in ids) and len(set(ids)) == 200
        assert await read_ids(client, 200) == ids  # in order
        print(f"\n[cluster] 200 publishes crossed the link in {writes} writes")
        assert writes <= 10  # one pipeline (the kernel splits a large write), not 200 round trips
    finally:
        await proxy.close()


@pytest.mark.gen_test(timeout=90)
async def test_an_emptied_redis_with_its_clock_behind_is_noticed(cluster, admin):
    """Issue #19.4: Redis emptied (FLUSHALL, a replaced or restored instance) while the nodes
    stay connected, its clock behind the ids the nodes delivered: connected clients silently
    missed every later event (delivery dropped ids at or below the node's position). The
    tenant's epoch, announced with every event, tells the nodes the history is another one."""
    a, b = await cluster(), await cluster()
    on_a, on_b = await welcomed(await a.connect()), await welcomed(await b.connect())
    # Ids far ahead of Redis's clock, as a clock that went back would leave them.
    await admin.hset("cfgpush:{acme}:paths", "/newest", "9999999999999-5")
    ahead = await change(a, "x.json", SUM[1], None)
    assert ahead == "9999999999999-6"
    assert await read_ids(on_a, 1) == [ahead] and await read_ids(on_b, 1) == [ahead]
    await admin.flushall()
    behind = await change(a, "x.json", SUM[2], None)
    assert behind < ahead  # as strings of digits here: far fewer digits
    for client in (on_a, on_b):
        resync = await client.expect("Resync", WAIT)
        assert (resync["reason"], resync["last_event_id"]) == ("unknown_epoch", behind)
    following = await change(b, "y.json", SUM[3], None)
    assert await read_ids(on_a, 1) == [following] and await read_ids(on_b, 1) == [following]
    # A client resuming from before the flush is told to reload too.
    late = await a.connect(last_event_id=ahead)
    await late.expect("Welcome", WAIT)
    assert (await late.expect("Resync", WAIT))["reason"] in ("unknown_event_id", "history_expired")

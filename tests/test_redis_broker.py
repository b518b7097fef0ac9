"""The Redis broker: two nodes in one process on a private redis-server, real WebSockets.

Every test starts its own ``redis-server`` (free port, no persistence, a temporary
directory) and kills it at teardown; each node is a ``CfgPush`` with its own ``RedisBroker``
and its own HTTP server, and each watches its own copy of the configuration folder.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import signal
import statistics
import time

import pytest

from tornado_cfgpush.broker import BrokerUnavailable
from tornado_cfgpush.broker.redis import RedisBroker
from tornado_cfgpush.rules import parse_event_id
from tornado_cfgpush.testing import WebSocketClient, wait_for
from tornado_cfgpush.testing.redisserver import WAIT

from .redisnodes import read_ids


async def welcomed(client: WebSocketClient) -> WebSocketClient:
    await client.expect("Welcome", WAIT)
    return client


def history_key(tenant_id: str) -> str:
    return f"cfgpush:{{{tenant_id}}}:history"


# -- fan-out and ids ---------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=120)
async def test_a_change_reaches_clients_on_both_nodes_with_one_id(cluster):
    a, b = await cluster(), await cluster()
    on_a, on_b = await welcomed(await a.connect()), await welcomed(await b.connect())
    other = await welcomed(await b.connect("globex"))
    first = await a.publish(path="a.json")
    second = await b.publish(path="b.json")
    assert parse_event_id(first) < parse_event_id(second)
    for client in (on_a, on_b):
        events = [await client.expect("ConfigChanged", WAIT) for _ in range(2)]
        assert [e["event_id"] for e in events] == [first, second]
        assert [e["path"] for e in events] == ["a.json", "b.json"]
        assert {e["tenant_id"] for e in events} == {"acme"}
    await other.expect_nothing(0.5)
    # Welcome carries the same newest id on either node.
    for node in (a, b):
        late = await node.connect()
        assert (await late.expect("Welcome", WAIT))["last_event_id"] == second
    assert a.broker.readiness() is None and b.broker.readiness() is None


@pytest.mark.gen_test(timeout=120)
async def test_the_same_change_published_by_both_nodes_is_one_event(cluster):
    a, b = await cluster(), await cluster()
    on_a, on_b = await welcomed(await a.connect()), await welcomed(await b.connect())
    checksum = "sha256:" + "1" * 64
    first = await a.publish(path="x.json", checksum=checksum)
    assert await b.publish(path="x.json", checksum=checksum) == first
    assert await a.publish(path="x.json", checksum=checksum) == first
    changed = await b.publish(path="x.json", checksum="sha256:" + "2" * 64)
    # A move leaves its old path deleted: deleting it again is nothing new.
    moved = await a.publish(path="y.json", checksum=checksum, change_type="moved", meta={"old_path": "x.json"})
    assert await b.publish(path="x.json", change_type="deleted") == moved
    for client in (on_a, on_b):
        assert await read_ids(client, 3) == [first, changed, moved]
        await client.expect_nothing(0.5)


@pytest.mark.gen_test(timeout=120)
async def test_two_nodes_watching_copies_of_a_folder_publish_one_event_per_change(cluster):
    a, b = await cluster(), await cluster()
    on_a, on_b = await welcomed(await a.connect()), await welcomed(await b.connect())
    folders = [a.service.settings.config_dir, b.service.settings.config_dir]
    assert folders[0] != folders[1]
    for folder in folders:  # the same bytes land in both copies, as a sync tool would do
        target = folder / "acme" / "new.json"
        (folder / "acme" / "new.json.part").write_text('{"limit": 5}')
        os.replace(folder / "acme" / "new.json.part", target)
    events = [await on_a.expect("ConfigChanged", WAIT), await on_b.expect("ConfigChanged", WAIT)]
    assert events[0] == events[1]
    assert (events[0]["path"], events[0]["change_type"]) == ("new.json", "created")
    await on_a.expect_nothing(1.0)
    await on_b.expect_nothing(0.2)


# -- resume -------------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=120)
async def test_resume_on_the_other_node_replays_exactly_what_was_missed(cluster):
    a, b = await cluster(), await cluster()
    client = await welcomed(await a.connect())
    seen = [await a.publish(path=f"a{i}.json") for i in range(3)]
    assert await read_ids(client, 3) == seen
    client.close()
    missed = [await (a, b)[i % 2].publish(path=f"b{i}.json") for i in range(4)]
    again = await b.connect(last_event_id=seen[-1])
    assert (await again.expect("Welcome", WAIT))["last_event_id"] == missed[-1]
    assert await read_ids(again, 4) == missed
    live = await a.publish(path="live.json")
    assert await read_ids(again, 1) == [live]
    await again.expect_nothing(0.5)


@pytest.mark.settings(history_size=3)
@pytest.mark.gen_test(timeout=120)
async def test_resync_when_the_stream_no_longer_holds_the_id(cluster, admin):
    a, b = await cluster(), await cluster()
    ids = [await (a, b)[i % 2].publish(path=f"a{i}.json") for i in range(10)]
    behind = await b.connect(last_event_id=ids[2])
    await behind.expect("Welcome", WAIT)
    resync = await behind.expect("Resync", WAIT)
    assert (resync["reason"], resync["last_event_id"]) == ("history_expired", ids[-1])
    inside = await a.connect(last_event_id=ids[6])
    await inside.expect("Welcome", WAIT)
    assert await read_ids(inside, 3) == ids[7:]
    # XADD MAXLEN ~ trims whole nodes (100 entries): publish until the first ids are really gone.
    ids += [await a.publish(path=f"b{i}.json") for i in range(250)]
    assert await admin.xlen(history_key("acme")) < len(ids)
    gone = await b.connect(last_event_id=ids[0])
    await gone.expect("Welcome", WAIT)
    assert (await gone.expect("Resync", WAIT))["reason"] == "history_expired"
    # Ids that never were: from the future, or between two retained entries.
    ms, seq = parse_event_id(ids[-1])
    retained = [parse_event_id(entry_id) for entry_id, _ in await admin.xrange(history_key("acme"))]
    between = next(f"{x[0]}-{x[1] + 1}" for x, y in itertools.pairwise(retained) if (x[0], x[1] + 1) < y)
    for since in (f"{ms}-{seq + 1}", f"{ms + 1}-0", between):
        unknown = await a.connect(last_event_id=since)
        await unknown.expect("Welcome", WAIT)
        assert (await unknown.expect("Resync", WAIT))["reason"] == "unknown_event_id", since


@pytest.mark.settings(history_ttl=0.3)
@pytest.mark.gen_test(timeout=120)
async def test_resync_when_the_history_expired_by_age(cluster):
    a, b = await cluster(), await cluster()
    first = await a.publish(path="a.json")
    second = await b.publish(path="b.json")
    await asyncio.sleep(0.4)  # wait-ok: letting the history's age bound pass is the point
    newest = await a.publish(path="c.json")
    old = await b.connect(last_event_id=first)
    await old.expect("Welcome", WAIT)
    assert (await old.expect("Resync", WAIT))["reason"] == "history_expired"
    fresh = await b.connect(last_event_id=second)
    await fresh.expect("Welcome", WAIT)
    assert await read_ids(fresh, 1) == [newest]


@pytest.mark.settings(history_size=4)
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.gen_test(timeout=180)
async def test_clients_moving_between_nodes_see_every_event_once_or_a_resync(cluster, seed):
    """Random publishes on either node, clients dropping and resuming on either node."""
    rng = random.Random(seed)
    nodes = [await cluster(), await cluster()]
    tenants = ["acme", "globex"]
    homes = ["acme", "acme", "globex", "acme"]
    published: dict[str, list[str]] = {t: [] for t in tenants}
    clients: list[WebSocketClient | None] = [None] * len(homes)
    position = [0] * len(homes)  # index in published[home] of the next event the client must see

    async def join(i: int, since: str | None) -> None:
        log = published[homes[i]]
        client = clients[i] = await rng.choice(nodes).connect(homes[i], **({"last_event_id": since} if since else {}))
        welcome = await client.expect("Welcome", WAIT)
        assert welcome["last_event_id"] == (log[-1] if log else None)
        if since is None:
            position[i] = len(log)
        elif len(log) - position[i] > 4:
            resync = await client.expect("Resync", WAIT)
            assert (resync["reason"], resync["last_event_id"]) == ("history_expired", log[-1])
            position[i] = len(log)
        await catch_up(i)

    async def catch_up(i: int) -> None:
        log = published[homes[i]]
        while position[i] < len(log):
            event = await clients[i].expect("ConfigChanged", WAIT)
            assert (event["tenant_id"], event["event_id"]) == (homes[i], log[position[i]]), (
                "gap, duplicate or reordering"
            )
            position[i] += 1

    def last_seen(i: int) -> str | None:
        log = published[homes[i]]
        return log[position[i] - 1] if position[i] else None

    for i in range(len(homes)):
        await join(i, None)
    for step in range(60):
        op = rng.random()
        if op < 0.6:
            tenant = rng.choice(tenants)
            published[tenant].append(await rng.choice(nodes).publish(tenant, path=f"f{step}.json"))
            for i, client in enumerate(clients):
                if client is not None and homes[i] == tenant:
                    await catch_up(i)
        else:
            i = rng.randrange(len(homes))
            if clients[i] is None:
                await join(i, last_seen(i))
            else:
                clients[i].close()
                clients[i] = None
    for i, client in enumerate(clients):
        if client is None:
            await join(i, last_seen(i))
    for client in clients:
        await client.expect_nothing(0.1)


# -- outages ------------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=180)
async def test_redis_killed_then_restarted(cluster, redis_server):
    a, b = await cluster(), await cluster()
    on_a, on_b = await welcomed(await a.connect()), await welcomed(await b.connect())
    before = await a.publish(path="before.json")
    assert await read_ids(on_a, 1) == [before] and await read_ids(on_b, 1) == [before]

    redis_server.kill()
    await wait_for(lambda: a.broker.readiness() and b.broker.readiness(), WAIT)
    assert b.broker.readiness().startswith("redis unreachable: ")
    with pytest.raises(BrokerUnavailable):
        await asyncio.wait_for(a.publish(path="lost.json"), WAIT)
    # Connected clients stay connected (and answered); a new one is told to come back later.
    for client in (on_a, on_b):
        await client.send("Ping")
        assert await client.next(WAIT) == "Pong"
    refused = await b.connect()
    assert (await refused.closed(WAIT)).code == 1013

    # Restarted without persistence: an empty Redis, a new history. Positions from before mean
    # nothing in it (its clock may even be behind the old one's): each node's clients are told
    # to reload, with the new history's newest id, instead of trusting them.
    await redis_server.start(same_port=True)
    await wait_for(lambda: a.broker.readiness() is None and b.broker.readiness() is None, 30)
    after = await a.publish(path="after.json")
    for client in (on_a, on_b):
        resync = await client.expect("Resync", WAIT)
        assert (resync["reason"], resync["last_event_id"]) == ("unknown_epoch", after)
    following = await a.publish(path="following.json")
    assert await read_ids(on_a, 1) == [following] and await read_ids(on_b, 1) == [following]
    await on_b.expect_nothing(0.5)


@pytest.mark.gen_test(timeout=180)
async def test_a_stalled_redis_is_noticed_without_waiting_for_tcp(cluster, redis_server):
    """SIGSTOP: the sockets stay open and nothing answers, as in a network partition."""
    a = await cluster()
    client = await welcomed(await a.connect())
    redis_server.proc.send_signal(signal.SIGSTOP)
    try:
        with pytest.raises(BrokerUnavailable):  # the socket timeout (2 s), not 5 s x 10 retries
            await asyncio.wait_for(a.publish(path="stalled.json"), WAIT)
        # The idle listener PINGs after 5 s of silence and gives up 2 s later.
        await wait_for(lambda: a.broker.readiness() is not None, 30)
        assert a.broker.readiness().startswith("redis unreachable: ")
    finally:
        redis_server.proc.send_signal(signal.SIGCONT)
    await wait_for(lambda: a.broker.readiness() is None, 30)
    event_id = await a.publish(path="resumed.json")
    # A timed-out publish is ambiguous: Redis may run it once it resumes. It is then
    # delivered once, in order, before the next.
    received = [await client.expect("ConfigChanged", WAIT)]
    if received[0]["event_id"] != event_id:
        assert received[0]["path"] == "stalled.json"
        received.append(await client.expect("ConfigChanged", WAIT))
    assert received[-1]["event_id"] == event_id
    await client.expect_nothing(0.3)


@pytest.mark.gen_test(timeout=180)
async def test_events_published_while_a_node_was_unsubscribed_are_caught_up(cluster, redis_server, admin):
    await admin.execute_command("ACL", "SETUSER", "nodeb", "on", ">secret", "~*", "&*", "+@all")
    a = await cluster()
    b = await cluster(url=f"redis://nodeb:secret@127.0.0.1:{redis_server.port}/0")
    on_a, on_b = await welcomed(await a.connect()), await welcomed(await b.connect())
    globex_b = await welcomed(await b.connect("globex"))
    first = await b.publish(path="first.json")
    assert await read_ids(on_a, 1) == [first] and await read_ids(on_b, 1) == [first]

    # Every subscription is cut; B's user may not log in again, so B stays unsubscribed
    # (its pooled command connections are already authenticated and keep working).
    await admin.execute_command("ACL", "SETUSER", "nodeb", "off")
    assert await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub") >= 2
    await wait_for(lambda: b.broker.readiness() is not None, WAIT)
    missed = [await a.publish(path=f"m{i}.json") for i in range(5)]
    missed_globex = [await a.publish("globex", path=f"g{i}.json") for i in range(2)]
    assert await read_ids(on_a, 5) == missed  # A logs in again at once and catches up itself
    await on_b.expect_nothing(0.5)
    assert b.broker.readiness().startswith("redis unreachable: ")

    # A client subscribing on B is told the newest id; B first delivers what it had missed
    # up to that id to its other clients, so none of it can reach the newcomer live later.
    newcomer = await b.connect()
    assert (await newcomer.expect("Welcome", WAIT))["last_event_id"] == missed[-1]
    assert await read_ids(on_b, 5) == missed

    await admin.execute_command("ACL", "SETUSER", "nodeb", "on")
    await wait_for(lambda: b.broker.readiness() is None, 30)
    assert await read_ids(globex_b, 2) == missed_globex  # caught up from the stream
    live = await a.publish(path="live.json")
    for client in (on_a, on_b, newcomer):
        assert await read_ids(client, 1) == [live]
    for client in (on_a, on_b, newcomer, globex_b):
        await client.expect_nothing(0.3)


class GatedReadBroker(RedisBroker):
    """The Redis broker, with its next stream read held until the test lets it go on: the
    window between a subscriber's read and its answer, made as wide as the test wants."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def _read_stream(self, *args):
        answer = await super()._read_stream(*args)
        gate, self.gate = self.gate, None
        if gate is not None:
            self.entered.set()
            await gate.wait()
        return answer


@pytest.mark.gen_test(timeout=180)
async def test_first_subscribers_of_a_tenant_racing_on_an_unsubscribed_node(cluster, redis_server, admin):
    """Two first subscribers of a tenant on a node that is not receiving pub/sub: the one
    answered later read an older stream; it must still get what the other's answer covers."""
    await admin.execute_command("ACL", "SETUSER", "nodeb", "on", ">secret", "~*", "&*", "+@all")
    a = await cluster()
    b = await cluster(url=f"redis://nodeb:secret@127.0.0.1:{redis_server.port}/0", broker_class=GatedReadBroker)
    await welcomed(await b.connect("globex"))  # B now holds a logged-in command connection
    await admin.execute_command("ACL", "SETUSER", "nodeb", "off")
    await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub", "USER", "nodeb")
    await wait_for(lambda: b.broker.readiness() is not None, WAIT)
    ids = [await a.publish("initech", path=f"a{i}.json") for i in range(4)]  # B never saw these

    b.broker.gate = gate = asyncio.Event()
    slow = asyncio.ensure_future(b.connect("initech", last_event_id=ids[1]))
    await asyncio.wait_for(b.broker.entered.wait(), WAIT)  # it has read: newest is ids[3]
    ids.append(await a.publish("initech", path="late.json"))
    fast = await b.connect("initech")
    assert (await fast.expect("Welcome", WAIT))["last_event_id"] == ids[4]
    gate.set()
    slow = await slow
    assert (await slow.expect("Welcome", WAIT))["last_event_id"] == ids[4]
    assert await read_ids(slow, 3) == ids[2:]

    await admin.execute_command("ACL", "SETUSER", "nodeb", "on")
    await wait_for(lambda: b.broker.readiness() is None, 30)
    live = await a.publish("initech", path="live.json")
    for client in (slow, fast):
        assert await read_ids(client, 1) == [live]
        await client.expect_nothing(0.3)


@pytest.mark.settings(history_size=5)
@pytest.mark.gen_test(timeout=180)
async def test_an_outage_longer_than_the_history_ends_in_a_resync(cluster, redis_server, admin):
    await admin.execute_command("ACL", "SETUSER", "nodeb", "on", ">secret", "~*", "&*", "+@all")
    a = await cluster()
    b = await cluster(url=f"redis://nodeb:secret@127.0.0.1:{redis_server.port}/0")
    on_b = await welcomed(await b.connect())
    first = await a.publish(path="first.json")
    assert await read_ids(on_b, 1) == [first]
    await admin.execute_command("ACL", "SETUSER", "nodeb", "off")
    await admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub", "USER", "nodeb")
    await wait_for(lambda: b.broker.readiness() is not None, WAIT)
    missed = [await a.publish(path=f"m{i}.json") for i in range(250)]
    assert await admin.xlen(history_key("acme")) < len(missed)  # the first ones are gone
    await admin.execute_command("ACL", "SETUSER", "nodeb", "on")
    # What is left is delivered in order, then the client is told it cannot be complete.
    received = []
    while True:
        message = await on_b.next(30)
        if "Resync" in message:
            break
        received.append(message["ConfigChanged"]["event_id"])
    assert (message["Resync"]["reason"], message["Resync"]["last_event_id"]) == ("history_expired", missed[-1])
    assert received == missed[len(missed) - len(received) :]


@pytest.mark.gen_test(timeout=120)
async def test_a_node_starts_without_redis_and_recovers(cluster, redis_server):
    redis_server.kill()
    a = await cluster()  # does not raise: logs, reports not ready, keeps trying
    assert a.broker.readiness().startswith("redis unreachable: ")
    await redis_server.start(same_port=True)
    await wait_for(lambda: a.broker.readiness() is None, 30)
    client = await welcomed(await a.connect())
    event_id = await a.publish()
    assert await read_ids(client, 1) == [event_id]


# -- latency -----------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=180)
async def test_cross_node_latency(cluster):
    """Publish on A to receipt by a WebSocket client of B; printed, never asserted."""
    a, b = await cluster(), await cluster()
    on_b = await welcomed(await b.connect())
    samples = []
    for i in range(200):
        started = time.perf_counter()
        event_id = await a.publish(path=f"l{i}.json")
        assert await read_ids(on_b, 1) == [event_id]
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    p50 = statistics.median(samples)
    p99 = samples[int(len(samples) * 0.99) - 1]
    print(
        f"\ncross-node delivery (publish on A -> client of B), {len(samples)} events: "
        f"p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {samples[-1]:.2f} ms"
    )


@pytest.mark.gen_test(timeout=120)
async def test_resumes_in_a_storm_share_reads_and_decoded_events_but_never_cross_tenants(cluster):
    """A reconnect storm: catch-ups asked for in one loop iteration share one stream read and
    one decoded Event per entry. Stream ids are per tenant, so acme's and globex's often
    coincide (same millisecond): the shared events must still never cross tenants."""
    a = await cluster()
    start = {tenant: await a.publish(tenant, path="start.json") for tenant in ("acme", "globex")}
    published: dict[str, list[str]] = {"acme": [], "globex": []}
    for i in range(30):
        for tenant in published:
            published[tenant].append(await a.publish(tenant, path=f"{tenant}-{i}.json"))

    reads = []
    read_stream = a.broker._read_stream

    async def counted(*args, **kwargs):
        reads.append(args[0])
        return await read_stream(*args, **kwargs)

    a.broker._read_stream = counted
    batch = await asyncio.gather(*(a.broker.catch_up(t, start[t]) for t in ("acme", "globex") for _ in range(10)))
    assert sorted(reads) == ["acme", "globex"]  # one read per (tenant, since), not twenty
    for catchup in batch:
        tenant = catchup.events[0].tenant_id
        assert [e.event_id for e in catchup.events] == published[tenant]
        assert all(e.tenant_id == tenant and e.body["path"].startswith(tenant) for e in catchup.events)
        assert catchup.events[0] is batch[0 if tenant == "acme" else 10].events[0]  # decoded once

    # A catch-up asked for after a batch's read went out is a batch of its own: it sees
    # what was published since.
    later = await a.publish(path="later.json")
    assert (await a.broker.catch_up("acme", start["acme"])).events[-1].event_id == later

    # Over real sockets: resuming clients of both tenants, all at once.
    clients = await asyncio.gather(
        *(a.connect(t, last_event_id=start[t]) for t in ("acme", "globex") for _ in range(10))
    )
    for client, tenant in zip(clients, ["acme"] * 10 + ["globex"] * 10, strict=True):
        await welcomed(client)
        expected = published[tenant] + ([later] if tenant == "acme" else [])
        assert await read_ids(client, len(expected)) == expected
        await client.expect_nothing(0.05)


# -- per-tenant state expires ---------------------------------------------------------------------


def paths_key(tenant_id: str) -> str:
    return f"cfgpush:{{{tenant_id}}}:paths"


async def until_gone(admin, *keys: str, timeout: float = WAIT) -> None:
    """Wait until Redis has expired ``keys``."""
    deadline = time.monotonic() + timeout
    while await admin.exists(*keys):
        assert time.monotonic() < deadline, f"{keys} still there after {timeout} s"
        await asyncio.sleep(0.05)  # wait-ok: polling Redis's own expiry under a deadline


@pytest.mark.settings(history_ttl=0.5)
@pytest.mark.gen_test(timeout=120)
async def test_an_idle_tenants_keys_expire_and_its_ids_go_on_above_the_record(cluster, admin):
    """The stream goes ``--history-ttl`` after the newest event (nothing in it could be
    replayed any more), the record later: meanwhile a quiet tenant's clients still resume
    without a reload, and a new stream continues the chain; then the tenant is forgotten."""
    a = await cluster(record_ttl=2.0)
    checksum = "sha256:" + "d" * 64
    ids = [await a.publish(path=f"a{i}.json", checksum=checksum) for i in range(3)]
    assert 0 < await admin.pttl(history_key("acme")) <= 500
    assert 500 < await admin.pttl(paths_key("acme")) <= 2000
    await until_gone(admin, history_key("acme"))
    assert await admin.exists(paths_key("acme"))

    up_to_date = await a.connect(last_event_id=ids[-1])
    assert (await up_to_date.expect("Welcome", WAIT))["last_event_id"] == ids[-1]
    await up_to_date.expect_nothing(0.3)
    behind = await a.connect(last_event_id=ids[0])
    await behind.expect("Welcome", WAIT)
    assert (await behind.expect("Resync", WAIT))["reason"] == "history_expired"
    assert (await a.broker.published_states("acme", "test")).states == {f"a{i}.json": checksum for i in range(3)}
    assert await a.publish(path="a0.json", checksum=checksum) == ids[0]  # still a repeat

    new = await a.publish(path="b.json")
    assert parse_event_id(new) > parse_event_id(ids[-1])
    assert await read_ids(up_to_date, 1) == [new]
    resumed = await a.connect(last_event_id=ids[-1])
    await resumed.expect("Welcome", WAIT)
    assert await read_ids(resumed, 1) == [new]
    await resumed.expect_nothing(0.2)

    # Then the record expires too: the tenant is forgotten. A restarting node would find no
    # recorded states to compare the disk with (and publish nothing for it); clients holding
    # its ids are told to reload.
    await until_gone(admin, history_key("acme"), paths_key("acme"))
    forgotten = await a.connect(last_event_id=new)
    assert (await forgotten.expect("Welcome", WAIT))["last_event_id"] is None
    assert (await forgotten.expect("Resync", WAIT))["reason"] == "unknown_event_id"
    assert (await a.broker.published_states("acme", "test")).states == {}
    assert await a.publish(path="a0.json", checksum=checksum) not in ids  # nothing to repeat


@pytest.mark.gen_test(timeout=120)
async def test_ids_stay_above_the_recorded_newest_even_when_the_clock_is_behind(cluster, admin):
    """A stream recreated after it expired never hands out an id at or below the tenant's
    recorded newest one, even if Redis's clock went back meanwhile."""
    a = await cluster()
    first = await a.publish()
    ahead = parse_event_id(first)[0] + 10**9
    await admin.delete(history_key("acme"))
    await admin.hset(paths_key("acme"), "/newest", f"{ahead}-7")
    client = await a.connect(last_event_id=f"{ahead}-7")
    assert (await client.expect("Welcome", WAIT))["last_event_id"] == f"{ahead}-7"
    assert await a.publish(path="next.json") == f"{ahead}-8"
    assert await a.publish(path="then.json") == f"{ahead}-9"
    assert await read_ids(client, 2) == [f"{ahead}-8", f"{ahead}-9"]


@pytest.mark.gen_test(timeout=120)
async def test_a_node_keeps_cursors_only_for_tenants_with_local_clients(cluster, monkeypatch):
    import tornado_cfgpush.broker.redis as redis_broker

    monkeypatch.setattr(redis_broker, "CURSOR_SWEEP_INTERVAL", 0.05)
    a, b = await cluster(), await cluster()
    on_b = await welcomed(await b.connect())
    others = [await a.publish(f"other-{i}", path="x.json") for i in range(50)]
    seen = [await a.publish(path=f"s{i}.json") for i in range(3)]
    assert await read_ids(on_b, 3) == seen
    # A node delivers (and keeps a cursor) only for its clients' tenants.
    assert set(b.broker._cursor) == {"acme"} and b.broker.state().tenants == 1
    assert a.broker.state().tenants == 0 and len(others) == 50
    assert "cfgpush_broker_tenants 1.0" in b.service.metrics.exposition().decode()
    assert "cfgpush_history_bytes" not in b.service.metrics.exposition().decode()

    on_b.close()
    await wait_for(lambda: b.broker.state().tenants == 0, WAIT)  # the sweep, nothing else
    missed = [await a.publish(path=f"m{i}.json") for i in range(3)]
    again = await b.connect(last_event_id=seen[-1])
    assert (await again.expect("Welcome", WAIT))["last_event_id"] == missed[-1]
    assert await read_ids(again, 3) == missed
    live = [await (a, b)[i % 2].publish(path=f"l{i}.json") for i in range(4)]
    assert await read_ids(again, 4) == live
    await again.expect_nothing(0.3)
    assert set(b.broker._cursor) == {"acme"}

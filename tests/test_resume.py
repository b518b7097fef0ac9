"""Resume: nothing missed, nothing twice, or an explicit Resync (docs/protocol.md section 2)."""

import asyncio
import itertools

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tornado_cfgpush.app import CfgPush, make_app
from tornado_cfgpush.broker.memory import MemoryBroker
from tornado_cfgpush.plugins import get_plugin_manager
from tornado_cfgpush.testing import WebSocketClient, publish


async def read_events(client, count):
    return [(await client.expect("ConfigChanged"))["event_id"] for _ in range(count)]


@pytest.mark.gen_test
async def test_reconnect_replays_what_was_missed_then_goes_live(connect, core):
    client = await connect("acme")
    await client.expect("Welcome")
    seen = [await publish(core, path=f"a{i}.json") for i in range(3)]
    assert await read_events(client, 3) == seen
    client.close()
    missed = [await publish(core, path=f"b{i}.json") for i in range(4)]
    again = await connect("acme", last_event_id=seen[-1])
    welcome = await again.expect("Welcome")
    assert welcome["last_event_id"] == missed[-1]
    assert await read_events(again, 4) == missed
    live = await publish(core, path="live.json")
    assert await read_events(again, 1) == [live]
    await again.expect_nothing()


@pytest.mark.gen_test
async def test_up_to_date_id_replays_nothing(connect, core):
    newest = [await publish(core, path=f"a{i}.json") for i in range(2)][-1]
    client = await connect("acme", last_event_id=newest)
    assert (await client.expect("Welcome"))["last_event_id"] == newest
    await client.expect_nothing()


@pytest.mark.settings(history_size=3)
@pytest.mark.gen_test
async def test_resync_when_history_no_longer_holds_the_id(connect, core):
    ids = [await publish(core, path=f"a{i}.json") for i in range(10)]
    client = await connect("acme", last_event_id=ids[2])
    await client.expect("Welcome")
    resync = await client.expect("Resync")
    assert resync["reason"] == "history_expired"
    assert resync["last_event_id"] == ids[-1]
    assert resync["manifest"]["app.json"].startswith("sha256:")
    # Still within the bound: replayed.
    inside = await connect("acme", last_event_id=ids[6])
    await inside.expect("Welcome")
    assert await read_events(inside, 3) == ids[7:]


@pytest.mark.settings(history_ttl=0.2)
@pytest.mark.gen_test
async def test_resync_when_history_expired_by_age(connect, core):
    first = await publish(core, path="a.json")
    second = await publish(core, path="b.json")
    await asyncio.sleep(0.3)  # wait-ok: letting the history's age bound pass is the point
    newest = await publish(core, path="c.json")
    client = await connect("acme", last_event_id=first)
    await client.expect("Welcome")
    assert (await client.expect("Resync"))["reason"] == "history_expired"
    # The newest event is still young: resuming right before it replays it.
    fresh = await connect("acme", last_event_id=second)
    await fresh.expect("Welcome")
    assert await read_events(fresh, 1) == [newest]


@pytest.mark.parametrize(
    "since, reason",
    [
        ("1-5", "unknown_epoch"),  # an earlier server run
        ("{epoch}-99", "unknown_event_id"),  # from the future
    ],
)
@pytest.mark.gen_test
async def test_resync_for_ids_of_another_epoch_or_unknown(connect, core, since, reason):
    await publish(core)
    client = await connect("acme", last_event_id=since.format(epoch=core.broker.epoch))
    await client.expect("Welcome")
    assert (await client.expect("Resync"))["reason"] == reason


@pytest.mark.gen_test
async def test_manifest_in_welcome_on_request(connect, core, config_dir):
    client = await connect("acme", manifest="1")
    welcome = await client.expect("Welcome")
    import hashlib

    digest = hashlib.sha256((config_dir / "acme" / "app.json").read_bytes()).hexdigest()
    assert welcome["manifest"] == {"app.json": f"sha256:{digest}"}
    plain = await connect("acme")
    assert "manifest" not in await plain.expect("Welcome")


@pytest.mark.gen_test
async def test_resync_after_server_restart(io_loop, settings, config_dir):
    """A new server process is a new epoch: an id of the old one is answered with Resync."""
    from tornado.httpserver import HTTPServer
    from tornado.testing import bind_unused_port

    async def run_server():
        service = CfgPush(settings, get_plugin_manager(load_entry_points=False))
        await service.start()
        await service.wait_started()
        sock, port = bind_unused_port()
        server = HTTPServer(make_app(service))
        server.add_sockets([sock])
        return service, server, port

    first, server, port = await run_server()
    client = await WebSocketClient.open(f"ws://127.0.0.1:{port}/ws", "acme")
    await client.expect("Welcome")
    old_id = await publish(first)
    assert (await client.expect("ConfigChanged"))["event_id"] == old_id
    server.stop()
    await first.stop()
    assert (await client.closed()).code == 1001
    client.close()
    second, server2, port2 = await run_server()
    try:
        again = await WebSocketClient.open(f"ws://127.0.0.1:{port2}/ws", "acme", last_event_id=old_id)
        await again.expect("Welcome")
        resync = await again.expect("Resync")
        assert resync["reason"] == "unknown_epoch"
        assert set(resync["manifest"]) == {"app.json"}
        again.close()
    finally:
        server2.stop()
        await second.stop()


class GatedCatchupBroker(MemoryBroker):
    """The embedded broker, with a catch-up that suspends until the test lets it go on:
    the window in which a shared broker (Redis) answers, made as wide as the test wants."""

    def __init__(self, deliver, **kwargs):
        super().__init__(deliver, **kwargs)
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def catch_up(self, tenant_id, since):
        self.entered.set()
        answer = await super().catch_up(tenant_id, since)
        await self.gate.wait()
        return answer


@pytest.fixture
def core(io_loop, settings, request):
    if request.node.get_closest_marker("gated") is None:
        service = CfgPush(settings, get_plugin_manager(load_entry_points=False))
    else:
        service = CfgPush(settings, get_plugin_manager(load_entry_points=False))
        service.broker = GatedCatchupBroker(service.hub.deliver)
    io_loop.run_sync(service.start)
    io_loop.run_sync(service.wait_started)
    yield service
    io_loop.run_sync(service.stop)


@pytest.mark.gated
@pytest.mark.gen_test
async def test_events_published_during_the_catch_up_come_after_it_once(ws_url, core):
    before = [await publish(core, path=f"a{i}.json") for i in range(3)]
    opening = asyncio.ensure_future(WebSocketClient.open(ws_url, "acme", last_event_id=before[0]))
    await asyncio.wait_for(core.broker.entered.wait(), 5)
    during = [await publish(core, path=f"b{i}.json") for i in range(3)]
    core.broker.gate.set()
    client = await opening
    try:
        welcome = await client.expect("Welcome")
        assert welcome["last_event_id"] == before[-1]
        assert await read_events(client, 5) == before[1:] + during
        await client.expect_nothing()
    finally:
        client.close()


# -- the promise, as a property -------------------------------------------------------------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.sampled_from([0, 1])),
        st.tuples(st.just("drop"), st.integers(0, 2)),
        st.tuples(st.just("reconnect"), st.integers(0, 2)),
    ),
    max_size=40,
)
_runs = itertools.count()


@pytest.mark.settings(history_size=4)
@hsettings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_every_client_sees_every_event_once_in_order_or_a_resync(io_loop, ws_url, core, ops):
    run = next(_runs)
    tenants = [f"p{run}-a", f"p{run}-b"]
    homes = [tenants[0], tenants[0], tenants[1]]  # clients 0 and 1 share a tenant
    io_loop.run_sync(lambda: _scenario(ws_url, core, ops, tenants, homes), timeout=60)


async def _scenario(ws_url, core, ops, tenants, homes):
    published = {t: [] for t in tenants}
    clients = [None, None, None]
    position = [0, 0, 0]  # index in published[home] of the next event the client must see
    last = [None, None, None]

    async def join(i, since):
        client = clients[i] = await WebSocketClient.open(
            ws_url, homes[i], **({"last_event_id": since} if since else {})
        )
        welcome = await client.expect("Welcome")
        log = published[homes[i]]
        assert welcome["last_event_id"] == (log[-1] if log else None)
        missed = len(log) - position[i]
        if since is None:
            position[i] = len(log)
        elif missed > 4:  # more than the history holds: must be told
            resync = await client.expect("Resync")
            assert resync["reason"] == "history_expired" and resync["last_event_id"] == log[-1]
            position[i] = len(log)
        await catch_up(i)

    async def catch_up(i):
        log = published[homes[i]]
        while position[i] < len(log):
            event = await clients[i].expect("ConfigChanged")
            assert event["event_id"] == log[position[i]], "gap, duplicate or reordering"
            assert event["tenant_id"] == homes[i]
            position[i] += 1
            last[i] = event["event_id"]
        if log:
            last[i] = log[-1]

    for i in range(3):
        await join(i, None)
    try:
        for op, arg in ops:
            if op == "publish":
                tenant = tenants[arg]
                published[tenant].append(await publish(core, tenant_id=tenant, path=f"f{len(published[tenant])}.json"))
                for i in range(3):
                    if clients[i] is not None and homes[i] == tenant:
                        await catch_up(i)
            elif op == "drop" and clients[arg] is not None:
                clients[arg].close()
                clients[arg] = None
            elif op == "reconnect" and clients[arg] is None:
                await join(arg, last[arg])
        for i in range(3):
            if clients[i] is None:
                await join(i, last[i])
        for i in range(3):
            await clients[i].expect_nothing(0.05)
    finally:
        for client in clients:
            if client is not None:
                client.close()

"""Per-tenant state expires on time, under one memory bound, and event ids are never reused
(issue 18 item 7, issue 17 point 3), on a real server with the embedded broker.

Time is the broker's clock, moved forward by the test (``Clock``): the expiry under test is
by time, not by the tenant's activity, and no test waits for a TTL to pass in real time.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import HTTPRequest

from tornado_cfgpush.app import CfgPush
from tornado_cfgpush.broker.memory import (
    FORGOTTEN_TTL,
    TENANT_OVERHEAD,
    MemoryBroker,
    event_cost,
    forgotten_cost,
    path_cost,
)
from tornado_cfgpush.metrics import MAX_TENANT_SERIES
from tornado_cfgpush.plugins import get_plugin_manager
from tornado_cfgpush.rules import parse_event_id
from tornado_cfgpush.testing import WebSocketClient, publish, wait_for

TOKEN = "publish-token-state"
TTL = 60.0


class Clock:
    """Real time plus an offset the test moves forward."""

    def __init__(self) -> None:
        self.offset = 0.0

    def time(self) -> float:
        return time.time() + self.offset

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def settings(request, config_dir):
    from tornado_cfgpush.settings import Settings

    marker = request.node.get_closest_marker("settings")
    overrides = marker.kwargs if marker else {}
    return Settings(
        **{"config_dir": config_dir, "debounce_ms": 30, "history_ttl": TTL, "publish_token": TOKEN, **overrides}
    )


@pytest.fixture
def core(io_loop, settings, clock):
    """The service, its broker and its metrics on the test's clock."""
    service = CfgPush(settings, get_plugin_manager(load_entry_points=False))
    service.broker = MemoryBroker(
        service.hub.deliver,
        history_size=settings.history_size,
        history_ttl=settings.history_ttl,
        history_max_bytes=settings.history_max_bytes,
        clock=clock.time,
    )
    service.metrics.clock = clock.monotonic
    io_loop.run_sync(service.start)
    io_loop.run_sync(service.wait_started)
    yield service
    io_loop.run_sync(service.stop)


async def post(http_client, http_url, body):
    response = await http_client.fetch(
        HTTPRequest(
            f"{http_url}/api/v1/events",
            method="POST",
            body=json.dumps(body),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"},
        )
    )
    assert response.code == 202
    return json.loads(response.body)["event_id"]


async def scrape(http_client, http_url) -> dict[tuple, float]:
    response = await http_client.fetch(f"{http_url}/metrics")
    samples = {}
    for family in text_string_to_metric_families(response.body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def read_ids(client: WebSocketClient, count: int) -> list[str]:
    return [(await client.expect("ConfigChanged"))["event_id"] for _ in range(count)]


# -- the case -------------------------------------------------------------------------------


@pytest.mark.settings(metrics_tenant_labels=True)
@pytest.mark.gen_test(timeout=300)
async def test_fifty_thousand_tenants_with_one_event_each_are_forgotten_once_the_ttl_passes(
    http_client, http_url, core, clock, connect
):
    """Issue 18 item 7: 50 000 distinct tenants, one event each, then time passes: the broker,
    the hub, the limits and the metrics hold nothing for them any more."""
    tenants = 50_000
    via_api = [
        await post(http_client, http_url, {"tenant_id": f"api-{i}", "change_type": "modified", "path": "app.json"})
        for i in range(20)
    ]
    assert all(event_id.endswith("-1") for event_id in via_api)  # seq counts per tenant from 1
    for i in range(tenants - len(via_api)):
        await publish(core, tenant_id=f"t{i:05d}", checksum="sha256:" + f"{i:064x}")
    watcher = await connect("t00007")
    await watcher.expect("Welcome")
    state = core.broker.state()
    assert state.tenants == tenants
    assert 0 < state.history_bytes <= core.settings.history_max_bytes
    assert core.metrics.tenant_series() == MAX_TENANT_SERIES  # bounded, the most recent kept
    samples = await scrape(http_client, http_url)
    assert samples[("cfgpush_broker_tenants", ())] == tenants
    assert samples[("cfgpush_history_bytes", ())] == state.history_bytes

    clock.advance(TTL + 1)  # nothing is published, nothing is asked: only time passes
    await wait_for(lambda: core.broker.state().tenants == 0, 30)
    # What stays of each is its newest id (about 150 bytes), so that a quiet tenant's clients
    # resume without a reload; it goes after FORGOTTEN_TTL, or first under memory pressure.
    names = [f"api-{i}" for i in range(20)] + [f"t{i:05d}" for i in range(tenants - 20)]
    assert core.broker.state().forgotten == tenants
    assert core.broker.state().history_bytes == sum(forgotten_cost(name) for name in names)
    assert core.broker.state().dropped == {"expired": tenants, "memory": 0}
    samples = await scrape(http_client, http_url)  # a scrape expires the idle tenants' series
    assert samples[("cfgpush_broker_tenants", ())] == 0
    clock.advance(FORGOTTEN_TTL)
    await wait_for(lambda: core.broker.state().forgotten == 0, 30)
    assert core.broker.state().history_bytes == 0
    samples = await scrape(http_client, http_url)
    assert samples[("cfgpush_history_bytes", ())] == 0
    assert samples[("cfgpush_broker_tenants_dropped_total", (("reason", "expired"),))] == tenants
    assert core.metrics.tenant_series() == 0
    assert not [key for key in samples if ("tenant", "t00001") in key[1]]
    # The hub and the limits hold the connected tenant only, and nothing once it leaves.
    assert list(core.hub.tenants()) == ["t00007"] and set(core.limits.by_tenant) == {"t00007"}
    watcher.close()
    await wait_for(lambda: not list(core.hub.tenants()) and not core.limits.by_tenant)
    assert core.limits.by_ip == {} and core.limits.total == 0


@pytest.mark.gen_test(timeout=60)
async def test_the_sweep_runs_in_slices(core, clock):
    """However many tenants expire at once, one step of the sweep stops at its time budget."""
    for i in range(3000):
        await publish(core, tenant_id=f"s{i}")
    await core.broker.stop()  # no background sweep: the test takes the steps
    clock.advance(TTL + 1)
    steps = 0
    while not core.broker.sweep(budget=0):  # a zero budget: one tenant (or heap entry) per step
        steps += 1
        assert core.broker.state().tenants == max(3000 - steps, 0)
    assert steps >= 3000 and core.broker.state().tenants == 0


# -- ids ----------------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=60)
async def test_an_expired_tenants_ids_are_never_handed_out_again(core, clock, connect):
    epoch = core.broker.epoch
    acme = [await publish(core, path=f"a{i}.json") for i in range(5)]
    globex = [await publish(core, "globex", path=f"g{i}.json") for i in range(3)]
    assert acme[-1] == f"{epoch}-5" and globex[-1] == f"{epoch}-3"
    live = await connect("acme")
    await live.expect("Welcome")
    clock.advance(TTL + 1)
    await wait_for(lambda: core.broker.state().tenants == 0)

    # Forgotten, but its newest id is known: a client holding it missed nothing and resumes
    # without a reload; any older id of before is answered with Resync.
    quiet = await connect("acme", last_event_id=acme[-1])
    assert (await quiet.expect("Welcome"))["last_event_id"] == acme[-1]
    await quiet.expect_nothing()
    late = await connect("acme", last_event_id=acme[1])
    assert (await late.expect("Welcome"))["last_event_id"] == acme[-1]
    resync = await late.expect("Resync")
    assert (resync["reason"], resync["last_event_id"]) == ("history_expired", acme[-1])
    assert resync["manifest"]["app.json"].startswith("sha256:")
    future = await connect("acme", last_event_id=f"{epoch}-99")
    await future.expect("Welcome")
    assert (await future.expect("Resync"))["reason"] == "unknown_event_id"

    # The tenant comes back: its ids continue above every id of a forgotten tenant.
    again = [await publish(core, path=f"b{i}.json") for i in range(2)]
    assert again == [f"{epoch}-6", f"{epoch}-7"]
    assert await read_ids(live, 2) == again  # the connected client just goes on
    assert await read_ids(quiet, 2) == again
    # From acme's very last id before the expiry: exactly what came after; from an older one
    # (or globex's, which may have been acme's in another tenant's numbering): Resync.
    resumed = await connect("acme", last_event_id=acme[-1])
    assert (await resumed.expect("Welcome"))["last_event_id"] == again[-1]
    assert await read_ids(resumed, 2) == again
    await resumed.expect_nothing()
    for since in (acme[3], globex[-1]):
        stale = await connect("acme", last_event_id=since)
        await stale.expect("Welcome")
        assert (await stale.expect("Resync"))["reason"] == "history_expired"
    # globex comes back above the floor too: no id of its own is ever seen twice, and a
    # client at its last id before gets exactly what followed.
    assert await publish(core, "globex", path="g.json") == f"{epoch}-6"
    old_globex = await connect("globex", last_event_id=globex[-1])
    await old_globex.expect("Welcome")
    assert (await old_globex.expect("ConfigChanged"))["event_id"] == f"{epoch}-6"
    older_globex = await connect("globex", last_event_id=globex[0])
    await older_globex.expect("Welcome")
    assert (await older_globex.expect("Resync"))["reason"] == "history_expired"


@pytest.mark.gen_test(timeout=60)
async def test_events_older_than_the_ttl_go_while_the_tenant_stays(core, clock, connect):
    first = await publish(core, path="a.json")
    before = core.broker.state().history_bytes
    clock.advance(TTL / 2)
    second = await publish(core, path="b.json")
    grown = core.broker.state().history_bytes
    clock.advance(TTL / 2 + 1)  # the first is expired, the second is not; nothing else happens
    await wait_for(lambda: core.broker.state().history_bytes < grown)
    assert core.broker.state().tenants == 1
    assert grown - core.broker.state().history_bytes < before  # the event, not the record
    resumed = await connect("acme", last_event_id=first)
    await resumed.expect("Welcome")
    assert await read_ids(resumed, 1) == [second]
    clock.advance(TTL / 2)
    await wait_for(lambda: core.broker.state().tenants == 0)


@pytest.mark.gen_test(timeout=60)
async def test_the_idempotence_record_expires_with_the_tenant(core, clock):
    checksum = "sha256:" + "c" * 64
    first = await publish(core, checksum=checksum)
    assert await publish(core, checksum=checksum) == first  # a repeat: the earlier id
    assert (await core.broker.published_states("acme", "test")).states == {"app.json": checksum}
    clock.advance(TTL + 1)
    await wait_for(lambda: core.broker.state().tenants == 0)
    assert (await core.broker.published_states("acme", "test")).states == {}
    assert await publish(core, checksum=checksum) != first  # a new event: nothing to repeat


# -- the memory bound ---------------------------------------------------------------------------------


@pytest.mark.settings(history_max_bytes=1024 * 1024)
@pytest.mark.gen_test(timeout=120)
async def test_past_the_memory_bound_the_oldest_history_goes_first(http_client, http_url, core, connect):
    """Many tenants with one event each, and one busy tenant: the oldest events of all go
    first, a tenant's record with its last event; the busy tenant keeps its recent events."""
    bound = core.settings.history_max_bytes
    first, busy = {}, []
    for i in range(2000):
        tenant = f"m{i:04d}"
        first[tenant] = await publish(core, tenant_id=tenant, path="a.json")
        if i % 10 == 0:
            busy.append(await publish(core, tenant_id="busy", path=f"b{i}.json"))
        assert core.broker.state().history_bytes <= bound
    state = core.broker.state()
    assert state.dropped["memory"] > 0 and state.evicted_events >= state.dropped["memory"]
    kept = [t for t in core.broker._tenants if t != "busy"]
    assert kept == [f"m{i:04d}" for i in range(2000 - len(kept), 2000)]  # the most recent ones
    assert state.tenants == len(kept) + 1 == 2000 - state.dropped["memory"] + 1
    for tenant in ("m0001", kept[0]):
        resumed = await connect(tenant, last_event_id=first[tenant])
        await resumed.expect("Welcome")
        if tenant == "m0001":  # forgotten: its event went
            assert (await resumed.expect("Resync"))["reason"] == "history_expired"
        else:
            await resumed.expect_nothing()
    old_busy = await connect("busy", last_event_id=busy[0])
    await old_busy.expect("Welcome")
    assert (await old_busy.expect("Resync"))["reason"] == "history_expired"
    recent_busy = await connect("busy", last_event_id=busy[-3])
    await recent_busy.expect("Welcome")
    assert await read_ids(recent_busy, 2) == busy[-2:]
    samples = await scrape(http_client, http_url)
    assert samples[("cfgpush_history_bytes", ())] == state.history_bytes
    assert samples[("cfgpush_history_max_bytes", ())] == bound
    assert samples[("cfgpush_broker_tenants", ())] == state.tenants
    assert samples[("cfgpush_broker_tenants_dropped_total", (("reason", "memory"),))] == state.dropped["memory"]
    assert samples[("cfgpush_history_evicted_events_total", ())] == state.evicted_events


@pytest.mark.gen_test(timeout=60)
async def test_one_tenant_alone_over_the_bound_keeps_its_newest_event(io_loop, clock):
    delivered = []
    broker = MemoryBroker(delivered.append, history_max_bytes=64 * 1024, clock=clock.time)
    ids = []
    for i in range(500):
        ids.append(
            await broker.publish(
                {
                    "tenant_id": "big",
                    "change_type": "modified",
                    "path": f"p{i}.json",
                    "checksum": "sha256:" + f"{i:064x}",
                    "meta": {"pad": "x" * 200},
                }
            )
        )
        assert broker.state().history_bytes <= 64 * 1024
    catchup = await broker.catch_up("big", ids[-2])
    assert [e.event_id for e in catchup.events] == ids[-1:]
    assert (await broker.catch_up("big", ids[0])).resync == "history_expired"
    assert len(delivered) == 500


# -- the promise, as a property, with expiry ----------------------------------------------------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.sampled_from([0, 1])),
        st.tuples(st.just("drop"), st.integers(0, 2)),
        st.tuples(st.just("reconnect"), st.integers(0, 2)),
        st.tuples(st.just("expire"), st.just(0)),
    ),
    max_size=40,
)
_runs = itertools.count()


@pytest.mark.settings(history_size=4)
@hsettings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_every_client_sees_every_event_once_in_order_or_a_resync_across_expiry(io_loop, ws_url, core, clock, ops):
    run = next(_runs)
    io_loop.run_sync(lambda: _scenario(ws_url, core, clock, ops, [f"x{run}-a", f"x{run}-b"]), timeout=60)


async def _scenario(ws_url, core, clock, ops, tenants):
    homes = [tenants[0], tenants[0], tenants[1]]
    published = {t: [] for t in tenants}
    # Where each tenant's current record starts in published[t]: an expiry drops the record,
    # and the next event starts a new one, which follows the tenant's newest id before it.
    record_start = dict.fromkeys(tenants, 0)
    clients = [None, None, None]
    position = [0, 0, 0]  # index in published[home] of the next event the client must see
    last_id = [None, None, None]  # the id the client resumes from, as a client keeps it
    seen = [set(), set(), set()]

    async def join(i):
        home, since = homes[i], last_id[i]
        client = clients[i] = await WebSocketClient.open(ws_url, home, **({"last_event_id": since} if since else {}))
        welcome = await client.expect("Welcome")
        log = published[home]
        # A forgotten tenant's newest id is still known: Welcome names it.
        assert welcome["last_event_id"] == (log[-1] if log else None)
        if since is None:
            position[i], last_id[i] = len(log), welcome["last_event_id"]
        else:
            missed = len(log) - position[i]
            # Exact when nothing was missed, or when what was missed is all kept: within the
            # current record (or right after the tenant's newest id before it) and within the
            # history size (4).
            must_replay = missed == 0 or position[i] >= max(record_start[home], len(log) - 4)
            first = await client.next() if (missed or not must_replay) else None
            if first is not None and "Resync" in first:
                assert not must_replay, "a Resync the history did not call for"
                assert first["Resync"]["reason"] == "history_expired"
                assert first["Resync"]["last_event_id"] == welcome["last_event_id"]
                position[i], last_id[i] = len(log), first["Resync"]["last_event_id"]
            elif first is not None:
                assert must_replay, f"a replay where a Resync was due: {first}"
                check(i, first["ConfigChanged"])
        await catch_up(i)

    def check(i, event):
        log = published[homes[i]]
        assert event["event_id"] == log[position[i]], "gap, duplicate or reordering"
        assert event["event_id"] not in seen[i], "an id seen twice"
        seen[i].add(event["event_id"])
        position[i] += 1
        last_id[i] = event["event_id"]

    async def catch_up(i):
        while position[i] < len(published[homes[i]]):
            check(i, await clients[i].expect("ConfigChanged"))

    for i in range(3):
        await join(i)
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
                await join(arg)
            elif op == "expire":
                clock.advance(core.settings.history_ttl + 1)
                core.broker.sweep(budget=10.0)
                for tenant in tenants:
                    record_start[tenant] = len(published[tenant])
        for i in range(3):
            if clients[i] is None:
                await join(i)
        for i in range(3):
            await clients[i].expect_nothing(0.05)
    finally:
        for client in clients:
            if client is not None:
                client.close()


# -- the broker's own bookkeeping, as a property --------------------------------------------------

BROKER_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.integers(0, 5), st.integers(0, 3), st.integers(0, 400)),
        st.tuples(st.just("advance"), st.floats(0, 40), st.just(0), st.just(0)),
        st.tuples(st.just("sweep"), st.just(0), st.just(0), st.just(0)),
        st.tuples(st.just("catch_up"), st.integers(0, 5), st.just(0), st.just(0)),
    ),
    max_size=80,
)


@hsettings(max_examples=200, deadline=None)
@given(ops=BROKER_OPS, history_size=st.integers(0, 4), max_bytes=st.sampled_from([4000, 12000, 1 << 30]))
def test_the_broker_counts_what_it_keeps_and_never_reuses_an_id(ops, history_size, max_bytes):
    """Whatever is published, asked and swept as time passes: the byte count is the sum of
    what is kept and stays within the bound, each record with history is in the expiry heap
    once, and no tenant is ever handed the same id twice."""
    clock = Clock()
    broker = MemoryBroker(
        lambda event: None, history_size=history_size, history_ttl=TTL, history_max_bytes=max_bytes, clock=clock.time
    )
    handed: dict[str, set[str]] = {}
    loop = asyncio.new_event_loop()
    try:
        for op, a, b, pad in ops:
            if op == "publish":
                tenant = f"t{a}"
                event_id = loop.run_until_complete(
                    broker.publish(
                        {
                            "tenant_id": tenant,
                            "change_type": "modified",
                            "path": f"p{b}.json",
                            "checksum": "sha256:" + f"{len(handed.get(tenant, ())) + 1:064x}",
                            "meta": {"pad": "x" * pad},
                        }
                    )
                )
                assert event_id not in handed.setdefault(tenant, set()), "an id handed out twice"
                handed[tenant].add(event_id)
                assert broker.bytes <= max_bytes or len(broker._tenants) == 1
            elif op == "advance":
                clock.advance(a)
            elif op == "sweep":
                assert broker.sweep(budget=10.0)
            else:
                catchup = loop.run_until_complete(broker.catch_up(f"t{a}", f"{broker.epoch}-1"))
                ids = [parse_event_id(e.event_id)[1] for e in catchup.events]
                assert ids == list(range(ids[0], ids[0] + len(ids))) if ids else True
            total = 0
            for log in broker._tenants.values():
                assert log.bytes == TENANT_OVERHEAD + sum(c for _, e, c in log.history) + sum(
                    path_cost(p) for p in log.last_by_path
                )
                assert all(c == event_cost(e) for _, e, c in log.history)
                total += log.bytes
                queued = [entry for entry in broker._expiry if entry[2] is log]
                assert len(queued) == (1 if log.queued else 0)
                assert log.queued or not log.history
            total += sum(forgotten_cost(tenant) for tenant in broker._forgotten)
            assert broker.bytes == total
    finally:
        loop.close()


@pytest.mark.settings(admin_token="state-admin")
@pytest.mark.gen_test(timeout=120)
async def test_a_tenant_without_clients_costs_at_most_2_kb(http_client, http_url, core, connect):
    """Issue 17 point 3: what the hub, the broker (its history: one event, the idempotence
    record, the newest id) and the status APIs keep per tenant with no client, measured with
    tracemalloc over 5 000 tenants, each with an event and a client that came and went."""
    import gc
    import tracemalloc

    tenants = 5_000
    headers = {"Authorization": "Bearer state-admin"}
    await publish(core, tenant_id="warm-up")  # first-use allocations (caches, pools) not counted
    client = await connect("warm-up")
    await client.expect("Welcome")
    client.close()
    await wait_for(lambda: not list(core.hub.tenants()))
    await http_client.fetch(f"{http_url}/api/v1/tenants?limit=10", headers=headers)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        for i in range(tenants):
            await publish(core, tenant_id=f"idle-{i:05d}", checksum="sha256:" + f"{i:064x}")
        for i in range(0, tenants, 50):  # some had a client, which left
            client = await connect(f"idle-{i:05d}")
            await client.expect("Welcome")
            client.close()
        await wait_for(lambda: not list(core.hub.tenants()), 30)
        await http_client.fetch(f"{http_url}/api/v1/tenants?limit=1000", headers=headers)
        for i in range(0, tenants, 500):  # the status API keeps nothing of what it answered
            body = json.loads(
                (await http_client.fetch(f"{http_url}/api/v1/tenants/idle-{i:05d}", headers=headers)).body
            )
            assert body["last_event_id"] is not None and body["clients"] == 0
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    per_tenant = grown / tenants
    assert core.broker.state().tenants >= tenants and not list(core.hub.tenants())
    # Measured: about 1 970 bytes, most of it the one event the history keeps (its body and
    # its encoded text, about 600 bytes) and the idempotence record.
    assert per_tenant <= 2048, per_tenant

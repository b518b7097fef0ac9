"""The fault suite (issue #19.5) in short: scripts/faults.py --quick, one scenario per test.

Each runs two real ``cfgpush-serve`` nodes on a private Redis, each through its own fault proxy,
both watching one folder (10 tenants x 3 files), 20 clients per node, 5 atomic saves a second,
a few seconds of load around the fault; the checker's verdict on every client (exactly once,
in order, no rollback, nothing lost, Resync only where the fault explains it) is asserted,
with evidence that the fault happened and the load ran, never a timing. About 15 to 20 s each,
run two at a time from the first of these tests on (``fault_runs``): they mostly wait (5 saves
a second, faults of seconds), so the eight take about a minute and a half instead of three.

Below them, minimal reproductions of what the suite found in the server, in-process
(the ``cluster`` fixture of tests/conftest.py), each fixed since.
"""

from __future__ import annotations

import asyncio
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tornado_cfgpush.rules import parse_event_id
from tornado_cfgpush.testing import need_program, wait_for
from tornado_cfgpush.testing.redisserver import WAIT

from .redisnodes import read_ids
from .scriptrun import run_script
from .tcpproxy import FaultProxy

RUN_TIMEOUT = 150  # one quick scenario: about 20 s, more on two busy cores
SUM = {n: "sha256:" + f"{n:064x}" for n in range(1, 10)}
# Each scenario's extra arguments: a hang and a cut last longer than the 7 s in which a node
# notices a silent Redis, so that /readyz shows it.
EXTRA = {"hang": ("--hang-s", "10"), "cut-hold": ("--cut-s", "10"), "cut-drop": ("--cut-s", "10")}
PARALLEL = 2


def _scenario_of(item: pytest.Item) -> str | None:
    """The faults.py scenario a test of this module asserts on, if any."""
    params = item.callspec.params if hasattr(item, "callspec") else {}
    return {
        "test_a_redis_that_hangs_loses_nothing_and_doubles_nothing": "hang",
        "test_a_node_cut_off_from_redis_catches_up_exactly": f"cut-{params.get('how')}",
        "test_a_slow_link_delays_but_stays_exact": "slow",
        "test_an_emptied_redis_resyncs_its_clients_and_loses_nothing": params.get("scenario"),
        "test_a_restarted_node_loses_nothing_and_doubles_nothing": "node-restart",
    }.get(getattr(item, "originalname", ""))


def _run(scenario: str, folder: Path):
    out = folder / "faults.json"
    args = ["--quick", "--scenario", scenario, "--json", str(out), *EXTRA.get(scenario, ())]
    return run_script("faults.py", args, folder, RUN_TIMEOUT), out


@pytest.fixture(scope="module")
def fault_runs(request, tmp_path_factory):
    """The selected tests' faults.py runs, started together (``PARALLEL`` at a time), by scenario."""
    need_program("redis-server")
    wanted = [_scenario_of(item) for item in request.session.items if item.module is request.module]
    pool = ThreadPoolExecutor(PARALLEL)
    runs = {
        scenario: pool.submit(_run, scenario, tmp_path_factory.mktemp(scenario))
        for scenario in dict.fromkeys(s for s in wanted if s)
    }
    yield runs
    pool.shutdown(wait=True)  # every process of every run has ended (run_script checks it)


def run_faults(fault_runs: dict, scenario: str) -> dict:
    """``faults.py --quick --scenario <scenario>``'s JSON summary of that scenario, checked."""
    done, out = fault_runs[scenario].result()
    stdout, stderr = done.stdout, done.stderr
    assert out.exists(), f"exit {done.returncode}; stderr:\n{stderr[-4000:]}"
    (result,) = json.loads(out.read_text())["scenarios"]
    assert not Path(result["workdir"]).exists()  # nodes' logs, Redis' folder, the config folder: gone
    print(stdout)
    assert result["ok"] and done.returncode == 0, stdout + stderr[-3000:]
    # The load really ran and everyone was there at the end.
    counts = result["verdict"]["counts"]
    # Four clients a tenant: most saves reach all four, but those a Resync covers (an emptied
    # Redis's new epoch) are not counted as deliveries.
    assert result["saves"] >= 30 and result["deliveries"] >= 2 * result["saves"], stdout
    assert counts["clients"] == counts["clients_connected_at_end"] == 40 and result["quiesced"]
    return result


def samples(result: dict, node: str) -> list[dict]:
    return [s for s in result["samples"] if s["node"] == node]


def not_ready(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r.get("readyz") == 503]


def test_a_redis_that_hangs_loses_nothing_and_doubles_nothing(fault_runs):
    result = run_faults(fault_runs, "hang")
    for node in ("a", "b"):  # both saw Redis go (the listener notices a silent Redis within 7 s)
        assert any("redis" in " ".join(r.get("reasons", [])) for r in not_ready(samples(result, node)))
    assert result["resyncs"] == {}


@pytest.mark.parametrize("how", ["hold", "drop"])
def test_a_node_cut_off_from_redis_catches_up_exactly(fault_runs, how):
    result = run_faults(fault_runs, f"cut-{how}")
    assert not_ready(samples(result, "b")) and not not_ready(samples(result, "a"))
    assert result["resyncs"] == {}
    if how == "drop":
        assert result["proxies"]["b"]["resets"] > 0


def test_a_slow_link_delays_but_stays_exact(fault_runs):
    result = run_faults(fault_runs, "slow")
    for node in ("a", "b"):
        rows = samples(result, node)
        assert not not_ready(rows)  # slow is not down
        assert any(r.get("lag_s", 0) > 0 for r in rows)  # publishes were seen waiting for the link
    assert result["resyncs"] == {}


@pytest.mark.parametrize("scenario", ["flush", "flush-behind", "restart-empty"])
def test_an_emptied_redis_resyncs_its_clients_and_loses_nothing(fault_runs, scenario):
    result = run_faults(fault_runs, scenario)
    assert result["resyncs"].get("unknown_epoch", 0) > 0
    assert set(result["resyncs"]) <= {"unknown_epoch", "unknown_event_id", "history_expired"}


def test_a_restarted_node_loses_nothing_and_doubles_nothing(fault_runs):
    result = run_faults(fault_runs, "node-restart")
    stopped = next(i for i in result["incidents"] if i["what"].startswith("node b stopped"))
    assert stopped["exit_status"] == 0
    assert result["closes"].get("1001", 0) > 0  # b's clients were sent away, and came back elsewhere
    assert result["resyncs"] == {}


# -- found by the fault suite: minimal reproductions ----------------------------------------------


async def welcomed(client):
    await client.expect("Welcome", WAIT)
    return client


@pytest.mark.gen_test(timeout=60)
async def test_a_starting_node_announces_only_what_changed(cluster, settings):
    """Finding 1 (scenario node-restart: 4 to 14 duplicate events in four full runs). A node
    that starts with a shared broker compares the disk with what was published
    (``FilesystemSource._reconcile_with_published``): a file never published since the cluster
    started (unchanged since) has no record, and is announced ``created`` with the content
    clients already have, in every tenant that has any published file. Now the record keeps
    when it began (the version, a ctime, of its first event): a file with no record and an
    older ctime is nothing new."""
    (settings.config_dir / "acme" / "untouched.json").write_text('{"never": "changed"}')
    a = await cluster()
    client = await welcomed(await a.connect())
    (settings.config_dir / "acme" / "app.json").write_text('{"a": 2}')
    assert (await client.expect("ConfigChanged", WAIT))["path"] == "app.json"
    await cluster(shared=True)  # node b starts: nothing changed on disk since app.json's event
    await client.expect_nothing(1.0)


@pytest.mark.gen_test(timeout=60)
async def test_a_starting_node_announces_a_file_made_while_no_node_watched(cluster, settings):
    """The other side of finding 1's fix (a file never published and older than the tenant's
    record is not new): a file with no record made after the record began is, even with
    an old modification time (tar -x, cp -p, rsync -t keep the mtime; the ctime is the
    kernel's)."""
    a = await cluster()
    client = await welcomed(await a.connect())
    (settings.config_dir / "acme" / "app.json").write_text('{"a": 2}')
    seen = await client.expect("ConfigChanged", WAIT)
    assert seen["path"] == "app.json"
    await a.stop()
    made = settings.config_dir / "acme" / "unpacked.json"
    made.write_text('{"from": "an archive"}')
    os.utime(made, (1_000_000_000, 1_000_000_000))  # 2001: far before the record began
    b = await cluster(shared=True)  # started: what it found is published
    client = await welcomed(await b.connect(last_event_id=seen["event_id"]))  # the client comes back
    event = await client.expect("ConfigChanged", WAIT)
    assert (event["change_type"], event["path"]) == ("created", "unpacked.json")
    await client.expect_nothing(1.0)


@pytest.mark.gen_test(timeout=90)
async def test_changes_that_wait_for_a_slow_link_go_out_in_one_batch(cluster, redis_server, settings):
    """Finding 2 (scenario slow: at 5 saves/s over 100-300 ms per chunk the publish lag grew
    by about 0.77 s every second, to 22.3 s after 30 s; /readyz degraded). The source reads one
    line of the worker's output, publishes it, then reads the next (``FilesystemSource._serve``):
    saves that settle one by one are one line each, so a batch is one event and the throughput
    is one event per round trip again. Here: six saves made during the first publish's round
    trip are published one by one instead of together."""
    proxy = await FaultProxy(redis_server.port).start()
    try:
        a = await cluster(url=f"redis://127.0.0.1:{proxy.port}/0")
        await welcomed(await a.connect())
        sizes: list[int] = []
        publish_many = a.broker.publish_many

        async def counted(items):
            sizes.append(len(items))
            return await publish_many(items)

        a.broker.publish_many = counted
        proxy.delay(0.5)  # a round trip of a second at least
        for i in range(6):
            (settings.config_dir / "acme" / f"f{i}.json").write_text(str(i))
            await asyncio.sleep(0.1)  # wait-ok: saves spread over the first publish's round trip
        await wait_for(lambda: len(sizes) >= 2, 30)
        assert sizes[1] >= 3, sizes
    finally:
        proxy.delay(0)
        await proxy.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_new_epoch_s_resync_comes_before_the_events_that_follow_it(cluster, admin):
    """Finding 3 (scenario restart-empty: 11 clients of one tenant got 1795986254750-0 of the new
    history before their Resync, having never had 1795986254749-0). The first event of a new
    epoch moves the node's cursor and starts the Resync (``RedisBroker._check_epoch`` ->
    ``CfgPush.source_gap``, which reads the newest id first); an event published right after
    it (the same batch: saves that waited for Redis) is delivered live before that Resync.
    Now the Resync goes out at once, naming the id that revealed the new epoch."""
    a, b = await cluster(), await cluster()
    on_b = await welcomed(await b.connect())
    first = await a.service.publish(
        {"tenant_id": "acme", "change_type": "modified", "path": "x.json", "checksum": SUM[1]}, "filesystem"
    )
    assert await read_ids(on_b, 1) == [first]
    await admin.flushall()
    await a.service.publish_many(
        [
            {"tenant_id": "acme", "change_type": "modified", "path": p, "checksum": s}
            for p, s in (("x.json", SUM[2]), ("y.json", SUM[3]))
        ],
        "filesystem",
    )
    first_after = await on_b.next(WAIT)
    assert list(first_after) == ["Resync"], first_after
    resync = first_after["Resync"]
    assert resync["reason"] == "unknown_epoch"
    # The reload covers x.json's new version; y.json's follows it, after the id the Resync named.
    after = await on_b.expect("ConfigChanged", WAIT)
    assert after["path"] == "y.json" and after["checksum"] == SUM[3]
    assert parse_event_id(after["event_id"]) > parse_event_id(resync["last_event_id"])


@pytest.mark.gen_test(timeout=60)
async def test_a_record_from_before_epochs_does_not_hide_an_emptied_redis(cluster, admin):
    """Finding 4 (scenario flush-behind with the tenants' records holding ``/newest`` and no
    ``/epoch``, as records written before epochs do). A node's cursor set from such a record
    has no epoch to compare with (``RedisBroker._check_epoch``: "nothing to compare"), so when
    Redis is emptied with its clock behind, the new history's events are at or below the
    cursor and dropped: no event, no Resync. Now an id at or before such a cursor is taken
    for a new history's."""
    await admin.hset("cfgpush:{acme}:paths", "/newest", "9999999999999-5")  # written before epochs
    a = await cluster()
    client = await welcomed(await a.connect())
    await admin.flushall()
    await a.service.publish(
        {"tenant_id": "acme", "change_type": "modified", "path": "x.json", "checksum": SUM[1]}, "filesystem"
    )
    message = await client.next(WAIT)
    assert list(message) == ["Resync"] and message["Resync"]["reason"] == "unknown_epoch", message

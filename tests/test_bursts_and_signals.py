"""Bursts of changes at disk speed, and signals at the worst moment (issue #12).

Landed main blocked its event loop for seconds on a burst of identical files, and lost SIGTERM
when a burst's wake-ups filled asyncio's self-pipe. Here: a real ``cfgpush-serve`` (or the
in-process server), real files written as fast as the disk takes them, real clients.
Timings are printed, never asserted; scripts/bench.py's ``burst`` scenario measures them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import threading
import time

import pytest
from tornado import web
from tornado.httpclient import AsyncHTTPClient

from tornado_cfgpush import hookimpl
from tornado_cfgpush.testing import LISTENING, wait_for

from .fshelpers import subscribe
from .rawws import RawWebSocket

ROUNDS = int(os.environ.get("CFGPUSH_SIGNAL_ROUNDS", "50"))
BURST = 2_000


def write_burst(root, n: int, tenants=("acme", "globex"), identical: bool = True, stop: threading.Event | None = None):
    """``n`` new files in nested folders, as a ``git checkout`` of a configuration tree writes
    them: folders made on the way, each file written once."""
    for i in range(n):
        if stop is not None and stop.is_set():
            return
        folder = root / tenants[i % len(tenants)] / f"team{i % 10}" / f"svc{i % 37}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"flag{i}.json").write_text("{}" if identical else json.dumps({"i": i}))


@pytest.mark.gen_test(timeout=120)
async def test_a_burst_of_identical_files_is_announced_once_each_while_the_server_answers(
    connect, config_dir, http_url, core
):
    """3 000 files of '{}' took landed main 10.6 s, and /healthz did not answer for 8.9 s."""
    acme = await subscribe(connect, "acme")
    globex = await subscribe(connect, "globex")
    writer = threading.Thread(target=write_burst, args=(config_dir, 3_000))
    started = time.perf_counter()
    writer.start()
    worst = 0.0
    client = AsyncHTTPClient()
    seen: dict[str, set[str]] = {"acme": set(), "globex": set()}

    async def collect(ws, tenant):
        while len(seen[tenant]) < 1_500:
            message = json.loads(await ws.raw(timeout=30))
            kind, body = next(iter(message.items()))
            if kind == "ConfigChanged":
                assert body["change_type"] == "created" and body["tenant_id"] == tenant
                assert body["path"] not in seen[tenant], body  # once each
                seen[tenant].add(body["path"])
            else:  # an overflow rescan may resync (the kernel's queue is 16 384 events here)
                assert kind == "Resync" and body["reason"] == "source_gap", message

    collecting = asyncio.gather(collect(acme, "acme"), collect(globex, "globex"))
    while not collecting.done():
        probe = time.perf_counter()
        assert (await client.fetch(f"{http_url}/healthz", request_timeout=30)).code == 200
        worst = max(worst, time.perf_counter() - probe)
        await asyncio.wait([collecting], timeout=0.01)
    await collecting
    writer.join()
    print(
        f"\n[burst] 3 000 identical files announced {time.perf_counter() - started:.2f} s after the first write; "
        f"/healthz worst {1000 * worst:.1f} ms"
    )


class BlockingRoute:
    """A plugin route that holds the event loop, as a bug or a slow disk would."""

    class Handler(web.RequestHandler):
        def get(self) -> None:
            time.sleep(float(self.get_argument("seconds")))  # wait-ok: blocking the loop is the point
            self.finish("done")

    @hookimpl
    def cfgpush_register_routes(self, settings):
        return [(r"/test/block", self.Handler)]


class TestLoopHealth:
    @pytest.fixture
    def extra_plugins(self):
        return [("blocker", BlockingRoute())]

    @pytest.mark.gen_test(timeout=60)
    async def test_a_blocked_loop_shows_in_metrics_readyz_and_the_log(self, http_url, core, caplog):
        caplog.set_level(logging.INFO, logger="cfgpush.loop")
        core.loop_lag.calm_for = 0.5  # the episode ends sooner than in production (5 s)
        client = AsyncHTTPClient()
        ready = json.loads((await client.fetch(f"{http_url}/readyz")).body)
        assert ready["status"] == "ready"
        await client.fetch(f"{http_url}/test/block?seconds=1.3")
        degraded = json.loads((await client.fetch(f"{http_url}/readyz")).body)
        assert degraded["status"] == "degraded" and "event loop lag" in degraded["reasons"][0], degraded
        metrics = (await client.fetch(f"{http_url}/metrics")).body.decode()
        buckets = {
            line.split('le="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("cfgpush_event_loop_lag_seconds_bucket")
        }
        assert buckets["2.5"] - buckets["1.0"] >= 1, buckets  # the stall, in its bucket
        await client.fetch(f"{http_url}/test/block?seconds=1.2")  # the same episode: no second warning
        assert caplog.text.count("the event loop was blocked") == 1
        await wait_for(lambda: core.loop_lag.degraded_reason() is None, 10)
        assert json.loads((await client.fetch(f"{http_url}/readyz")).body)["status"] == "ready"
        assert "responsive again" in caplog.text


# -- signals --------------------------------------------------------------------------------------


async def _round(start, tmp_path, round_: int, rng: random.Random) -> None:
    root = tmp_path / f"round{round_}"
    for tenant in ("acme", "globex"):
        (root / tenant).mkdir(parents=True)
        (root / tenant / "app.json").write_text("{}")
    drain = 5.0
    server = start(
        "--port", "0", "--config-dir", str(root), "--drain-timeout", str(drain), "--disable-plugin", "ticker"
    )
    port = int((await server.wait_log(LISTENING)).group(1))
    reading = await RawWebSocket.connect(port, "tenant_id=acme")
    stopped = await RawWebSocket.connect(port, "tenant_id=globex", rcvbuf=4096)  # stops reading
    await reading.read_json(timeout=10)
    await stopped.read_json(timeout=10)
    stop = threading.Event()
    writer = threading.Thread(
        target=write_burst, args=(root, BURST), kwargs={"identical": round_ % 2 == 0, "stop": stop}
    )
    writer.start()
    # Anywhere in the burst, or just after it while events are still going out.
    await asyncio.sleep(rng.uniform(0.0, 0.6))  # wait-ok: the random moment is the point of the test
    sent = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    try:
        for ws in (reading, stopped):  # the stopped one reads again: it must find 1001 at the end
            with pytest.raises(ConnectionAbortedError) as closed:
                while True:
                    await ws.read_json(timeout=drain + 5)
            assert closed.value.args[0] == 1001, (round_, closed.value.args)
        status = await server.wait_exit(timeout=drain + 5)
    finally:
        stop.set()
        writer.join()
        reading.close()
        stopped.close()
    assert status == 0, (round_, server.text())
    took = time.monotonic() - sent
    assert "Traceback" not in server.text(), server.text()
    if took > 2:
        print(f"\n[signals] round {round_} took {took:.2f} s:\n" + "\n".join(server.log[-8:]))
    return took


@pytest.mark.gen_test(timeout=900)
async def test_sigterm_at_random_moments_of_bursts_always_drains(start, tmp_path):
    """Landed main never stopped in 1 of 5 rounds (the signal was dropped: 'Exception ignored
    when trying to write to the signal wakeup fd'). Every round here exits 0, with 1001."""
    rng = random.Random(int(os.environ.get("CFGPUSH_SIGNAL_SEED", "12")))
    took = [await _round(start, tmp_path, round_, rng) for round_ in range(ROUNDS)]
    print(
        f"\n[signals] {ROUNDS} rounds, exit after SIGTERM: max {max(took):.2f} s, "
        f"median {sorted(took)[len(took) // 2]:.2f} s"
    )


@pytest.mark.gen_test(timeout=120)
async def test_a_second_sigterm_during_the_drain_exits_at_once(start, config_dir):
    drain = 60.0
    token = "publish-token-for-the-test"
    server = start(
        "--port",
        "0",
        "--config-dir",
        str(config_dir),
        "--drain-timeout",
        str(drain),
        "--disable-plugin",
        "ticker",
        "--publish-token",
        token,
        "--max-backlog-bytes",
        str(64 * 2**20),
    )
    port = int((await server.wait_log(LISTENING)).group(1))
    stuck = await RawWebSocket.connect(port, "tenant_id=acme", rcvbuf=4096)
    await stuck.read_json(timeout=10)
    # A backlog larger than the kernel's socket buffers: the drain would wait for it (up to
    # half of 60 s) before dropping the reader.
    client = AsyncHTTPClient()
    body = json.dumps(
        {"tenant_id": "acme", "change_type": "modified", "path": "big.json", "meta": {"blob": "x" * 3500}}
    )
    for _ in range(30):
        await asyncio.gather(
            *(
                client.fetch(
                    f"http://127.0.0.1:{port}/api/v1/events",
                    method="POST",
                    body=body,
                    headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                )
                for _ in range(50)
            )
        )
    server.proc.send_signal(signal.SIGTERM)
    await server.wait_log("shutting down: closing clients")
    sent = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    status = await server.wait_exit(timeout=20)
    stuck.close()
    # 143: our handler's exit, so the drain was still under way when the second signal came.
    assert status == 128 + signal.SIGTERM, server.text()
    assert "exiting now" in server.text()
    print(f"\n[signals] exit {time.monotonic() - sent:.2f} s after the second SIGTERM (drain limit {drain:g} s)")

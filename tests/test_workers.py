"""``--workers N``: real processes on one port (SO_REUSEPORT), each a node of a private Redis."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal

import pytest
from tornado.httpclient import AsyncHTTPClient

from tornado_cfgpush.testing import ERROR_PREFIX, WebSocketClient, wait_for

WORKER_LISTENING = r"listening on http://127\.0\.0\.1:(\d+) .*worker (\d) of 2\)"
CLIENTS = 24


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


def _listening(server) -> dict[str, int]:
    """worker index -> port, of every listening line so far."""
    found = {}
    for line in list(server.log):
        match = re.search(WORKER_LISTENING, line)
        if match:
            found[match.group(2)] = int(match.group(1))
    return found


def _worker_pids(server) -> dict[int, int]:
    pids = {}
    for line in list(server.log):
        match = re.search(r"worker (\d) of 2 started \(pid (\d+)\)", line)
        if match:
            pids[int(match.group(1))] = int(match.group(2))
    return pids


def _series(text: str, name: str) -> dict[str, float]:
    """worker -> value of an unlabelled-but-for-worker (or transport=ws) series."""
    values = {}
    for line in text.splitlines():
        match = re.match(rf'{name}\{{(?:transport="ws",)?worker="(\d)"\}} (\S+)', line)
        if match:
            values[match.group(1)] = float(match.group(2))
    return values


@pytest.mark.gen_test(timeout=180)
async def test_two_workers_share_a_port_ids_resume_metrics_restart_and_drain(start, redis_server, config_dir):
    server = start(
        "--port", "0", "--config-dir", str(config_dir), "--broker", redis_server.url, "--workers", "2",
        "--metrics-public", "--heartbeat-interval", "1", "--heartbeat-timeout", "3",
    )  # fmt: skip
    await wait_for(lambda: len(_listening(server)) == 2 or server.proc.poll() is not None, 60)
    ports = set(_listening(server).values())
    assert len(ports) == 1, server.text()
    port = ports.pop()
    url = f"ws://127.0.0.1:{port}/ws"
    http = AsyncHTTPClient(force_instance=True)
    clients = [await WebSocketClient.open(url, "acme") for _ in range(CLIENTS)]
    try:
        for client in clients:
            await client.expect("Welcome", timeout=10)
        # Both workers have clients (the kernel spreads connections by their addresses), and
        # /metrics from whichever worker answers shows both.
        metrics = (await http.fetch(f"http://127.0.0.1:{port}/metrics")).body.decode()
        connections = _series(metrics, "cfgpush_connections")
        assert set(connections) == {"0", "1"} and sum(connections.values()) == CLIENTS, metrics
        assert min(connections.values()) > 0, connections

        # One change: every client gets it once, under one id, whichever worker serves it.
        (config_dir / "acme" / "app.json").write_text('{"a": 2}')
        events = [await client.expect("ConfigChanged", timeout=15) for client in clients]
        assert len({e["event_id"] for e in events}) == 1 and events[0]["path"] == "app.json"
        for client in clients:
            await client.expect_nothing(0.3)
        first = events[0]["event_id"]

        # A worker killed: the supervisor starts it again, on the same port; its clients
        # reconnect (to either worker) and resume from their last event with nothing missed.
        pids = _worker_pids(server)
        os.kill(pids[1], signal.SIGKILL)
        await server.wait_log(r"worker 1 \(pid \d+\) exited with status -9 .*starting it again", 30)
        await wait_for(lambda: len(_worker_pids(server)) == 2 and _worker_pids(server)[1] != pids[1], 30)
        await wait_for(lambda: sum(1 for line in server.log if re.search(WORKER_LISTENING, line)) == 3, 60)
        # The next change: the killed worker's clients find their connection gone, reconnect
        # with their last event id and get it in the catch-up; the others get it live.
        (config_dir / "acme" / "app.json").write_text('{"a": 3}')
        second, reconnected = set(), 0
        for n, client in enumerate(clients):
            message = await asyncio.wait_for(client.conn.read_message(), 15)
            if message is None:
                client.close()
                clients[n] = client = await WebSocketClient.open(url, "acme", last_event_id=first)
                reconnected += 1
                assert (await client.expect("Welcome", timeout=10))["tenant_id"] == "acme"
                second.add((await client.expect("ConfigChanged", timeout=15))["event_id"])
            else:
                second.add(json.loads(message)["ConfigChanged"]["event_id"])
        assert 0 < reconnected < CLIENTS and len(second) == 1 and second != {first}
    finally:
        http.close()
        for client in clients:
            client.close()

    # SIGTERM to the supervisor drains both workers; it exits 0 once they have.
    pids = _worker_pids(server)
    server.proc.send_signal(signal.SIGTERM)
    assert await server.wait_exit(60) == 0, server.text()
    assert not any(_alive(pid) for pid in pids.values())
    assert "stopping 2 workers" in server.text() and "Traceback" not in server.text()


@pytest.mark.gen_test(timeout=60)
async def test_workers_need_a_shared_broker_and_a_count(start, config_dir):
    alone = start("--port", "0", "--config-dir", str(config_dir), "--workers", "2")
    assert await alone.wait_exit(60) == 2
    assert alone.log == [
        f"{ERROR_PREFIX} --workers 2 needs --broker redis://...: the embedded broker keeps the events in one "
        "process, and every worker must serve the same event ids and history"
    ]
    bad = start("--port", "0", "--config-dir", str(config_dir), "--workers", "many")
    assert await bad.wait_exit(60) == 2
    assert bad.log == [f"{ERROR_PREFIX} --workers: workers must be a whole number or auto, not 'many'"]

"""Two ``cfgpush-serve`` processes on one private Redis: one server, as clients see it.

Each node is a real process watching its own copy of the configuration (as two machines
behind a load balancer would); clients move between them with ``last_event_id``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal

import pytest
from tornado.httpclient import AsyncHTTPClient

from tornado_cfgpush.testing import LISTENING, Closed, WebSocketClient
from tornado_cfgpush.testing.redisserver import WAIT


@pytest.fixture
def two_nodes(start, redis_server, config_dir, tmp_path):
    """``await two_nodes()`` -> [(server, port, folder), (server, port, folder)]."""

    async def _start():
        nodes = []
        for name in ("a", "b"):
            folder = tmp_path / f"node-{name}"
            shutil.copytree(config_dir, folder)
            server = start(
                "--port",
                "0",
                "--config-dir",
                str(folder),
                "--broker",
                redis_server.url,
                "--debounce-ms",
                "30",
                "--disable-plugin",
                "ticker",
            )
            port = int((await server.wait_log(LISTENING)).group(1))
            nodes.append((server, port, folder))
        return nodes

    return _start


@pytest.fixture
def clients():
    opened: list[WebSocketClient] = []

    async def _open(port: int, tenant_id: str = "acme", **query) -> WebSocketClient:
        client = await WebSocketClient.open(f"ws://127.0.0.1:{port}/ws", tenant_id, **query)
        opened.append(client)
        return client

    yield _open
    for client in opened:
        client.close()


async def readyz(port: int) -> tuple[int, dict]:
    http = AsyncHTTPClient(force_instance=True)
    try:
        response = await http.fetch(f"http://127.0.0.1:{port}/readyz", raise_error=False)
        return response.code, json.loads(response.body)
    finally:
        http.close()


@pytest.mark.gen_test(timeout=180)
async def test_a_change_on_one_node_reaches_both_once(two_nodes, clients):
    (_, port_a, folder_a), (_, port_b, folder_b) = await two_nodes()
    on_a, on_b = await clients(port_a), await clients(port_b)
    other = await clients(port_b, "globex")
    for client in (on_a, on_b, other):
        await client.expect("Welcome", timeout=WAIT)
    (folder_a / "acme" / "app.json").write_text('{"a": 2}')
    first_a = await on_a.expect("ConfigChanged", timeout=WAIT)
    first_b = await on_b.expect("ConfigChanged", timeout=WAIT)
    assert first_a == first_b and first_a["path"] == "app.json"
    # A deployment writes the same file into both nodes' copies: still one event.
    for folder in (folder_a, folder_b):
        (folder / "acme" / "app.json").write_text('{"a": 3}')
    second_a = await on_a.expect("ConfigChanged", timeout=WAIT)
    assert await on_b.expect("ConfigChanged", timeout=WAIT) == second_a
    for client in (on_a, on_b):
        await client.expect_nothing(0.5)
    await other.expect_nothing(0.1)


@pytest.mark.gen_test(timeout=180)
async def test_a_killed_node_s_clients_resume_on_the_other_with_nothing_lost(two_nodes, clients):
    (a, port_a, folder_a), (_, port_b, folder_b) = await two_nodes()
    client = await clients(port_a)
    await client.expect("Welcome", timeout=WAIT)
    (folder_a / "acme" / "app.json").write_text('{"a": 2}')
    last = (await client.expect("ConfigChanged", timeout=WAIT))["event_id"]
    a.proc.send_signal(signal.SIGKILL)
    with pytest.raises(Closed):
        await client.next(timeout=WAIT)
    # While the client is away, changes land on the surviving node.
    watcher = await clients(port_b)
    await watcher.expect("Welcome", timeout=WAIT)
    missed = []
    for i in range(3):
        (folder_b / "acme" / f"new{i}.json").write_text(str(i))
        missed.append((await watcher.expect("ConfigChanged", timeout=WAIT))["event_id"])
    again = await clients(port_b, last_event_id=last)
    assert (await again.expect("Welcome", timeout=WAIT))["last_event_id"] == missed[-1]
    assert [(await again.expect("ConfigChanged", timeout=WAIT))["event_id"] for _ in missed] == missed
    (folder_b / "acme" / "app.json").write_text('{"a": 9}')
    live = await again.expect("ConfigChanged", timeout=WAIT)
    assert live == await watcher.expect("ConfigChanged", timeout=WAIT)
    await again.expect_nothing(0.3)


@pytest.mark.gen_test(timeout=240)
async def test_redis_killed_and_restarted_mid_stream_loses_nothing(two_nodes, clients, redis_server):
    (a, port_a, folder_a), (b, port_b, folder_b) = await two_nodes()
    on_a, on_b = await clients(port_a), await clients(port_b)
    for client in (on_a, on_b):
        await client.expect("Welcome", timeout=WAIT)
    assert (await readyz(port_a))[0] == 200
    redis_server.kill()
    for port in (port_a, port_b):

        async def not_ready(port=port):
            code, body = await readyz(port)
            return code == 503 and any("redis" in r for r in body["reasons"])

        await wait_for_async(not_ready)
    # Clients stay connected and served.
    for client in (on_a, on_b):
        await client.send("Ping")
        assert await client.next(timeout=WAIT) == "Pong"
    # A change made during the outage is held by the source, not lost.
    (folder_a / "acme" / "app.json").write_text('{"during": "outage"}')
    await a.wait_log(r"broker unavailable .* retrying", timeout=WAIT)
    await redis_server.start(same_port=True)
    event_a = await on_a.expect("ConfigChanged", timeout=60)
    assert (event_a["path"], event_a["change_type"]) == ("app.json", "modified")
    assert await on_b.expect("ConfigChanged", timeout=WAIT) == event_a
    for port in (port_a, port_b):

        async def ready(port=port):
            return (await readyz(port))[0] == 200

        await wait_for_async(ready)
    # And the stream goes on.
    (folder_b / "acme" / "after.json").write_text("1")
    after = await on_b.expect("ConfigChanged", timeout=WAIT)
    assert await on_a.expect("ConfigChanged", timeout=WAIT) == after
    assert "Traceback" not in a.text() + b.text()


async def wait_for_async(check, timeout: float = 60.0) -> None:
    """Like tornado_cfgpush.testing.wait_for, for a coroutine predicate."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, f"not within {timeout} s: {check}"
        await asyncio.sleep(0.1)  # wait-ok: polling a condition under a deadline


@pytest.mark.gen_test(timeout=180)
async def test_edits_made_while_the_only_node_was_down_are_published_at_restart(
    start, redis_server, config_dir, clients
):
    args = (
        "--port",
        "0",
        "--config-dir",
        str(config_dir),
        "--broker",
        redis_server.url,
        "--debounce-ms",
        "30",
        "--disable-plugin",
        "ticker",
        "--publish-token",
        "publish-token-1",
    )
    node = start(*args)
    port = int((await node.wait_log(LISTENING)).group(1))
    client = await clients(port)
    await client.expect("Welcome", timeout=WAIT)
    (config_dir / "acme" / "app.json").write_text('{"a": 2}')
    last = (await client.expect("ConfigChanged", timeout=WAIT))["event_id"]
    # Another source's path (here the publish API's): not the filesystem's to delete later.
    http = AsyncHTTPClient(force_instance=True)
    try:
        await http.fetch(
            f"http://127.0.0.1:{port}/api/v1/events",
            method="POST",
            headers={"Authorization": "Bearer publish-token-1", "Content-Type": "application/json"},
            body=json.dumps(
                {
                    "tenant_id": "acme",
                    "change_type": "created",
                    "path": "from-api.json",
                    "checksum": "sha256:" + "e" * 64,
                }
            ),
        )
    finally:
        http.close()
    last = (await client.expect("ConfigChanged", timeout=WAIT))["event_id"]
    node.proc.send_signal(signal.SIGTERM)
    assert await node.wait_exit(timeout=30) == 0
    # Edits while no node runs.
    (config_dir / "acme" / "app.json").write_text('{"a": 3}')
    (config_dir / "acme" / "new.json").write_text("{}")
    (config_dir / "globex" / "app.json").unlink()
    again = start(*args)
    port = int((await again.wait_log(LISTENING)).group(1))
    acme = await clients(port, last_event_id=last)
    await acme.expect("Welcome", timeout=WAIT)
    seen = {}
    for _ in range(2):
        event = await acme.expect("ConfigChanged", timeout=WAIT)
        seen[event["path"]] = event["change_type"]
    assert seen == {"app.json": "modified", "new.json": "created"}
    await acme.expect_nothing(0.5)  # nothing for from-api.json, nothing twice
    globex = await clients(port, "globex", manifest="1")
    assert (await globex.expect("Welcome", timeout=WAIT))["manifest"] == {}

"""``--workers N``: real processes on one port (SO_REUSEPORT), each a node of a private Redis."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import signal

import pytest
from tornado.httpclient import AsyncHTTPClient

from tornado_cfgpush.testing import ERROR_PREFIX, WebSocketClient, wait_for

WORKER_LISTENING = r"listening on http://127\.0\.0\.1:(\d+) .*worker (\d) of 2\)"
CLIENTS = 24
TOKEN = "workers-publish-token"
ADMIN = "workers-admin-token"


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


def _admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN}"}


def _series(text: str, name: str) -> dict[str, float]:
    """worker -> value of an unlabelled-but-for-worker (or transport=ws) series."""
    values = {}
    for line in text.splitlines():
        match = re.match(rf'{name}\{{(?:transport="ws",)?worker="(\d)"\}} (\S+)', line)
        if match:
            values[match.group(1)] = float(match.group(2))
    return values


@pytest.fixture(params=["embedded", "redis"])
def shared(request) -> list[str]:
    """Embedded: worker 0 runs the broker and the sources, worker 1 follows it over the link
    (killed below: a follower). Redis: both are nodes of a private one."""
    return ["--broker", request.getfixturevalue("redis_server").url] if request.param == "redis" else []


@pytest.mark.gen_test(timeout=180)
async def test_two_workers_share_a_port_ids_resume_metrics_restart_and_drain(start, config_dir, shared):
    server = start(
        "--port", "0", "--config-dir", str(config_dir), *shared, "--workers", "2",
        "--heartbeat-interval", "1", "--heartbeat-timeout", "3", "--publish-token", TOKEN,
        "--admin-token", ADMIN, "--serve-content", "*.json",
    )  # fmt: skip
    await wait_for(lambda: len(_listening(server)) == 2 or server.proc.poll() is not None, 60)
    ports = set(_listening(server).values())
    assert len(ports) == 1, server.text()
    port = ports.pop()
    url = f"ws://127.0.0.1:{port}/ws"
    http = AsyncHTTPClient(force_instance=True)
    clients = [await WebSocketClient.open(url, "acme", manifest="1") for _ in range(CLIENTS)]
    try:
        for client in clients:
            # The manifest too, whichever worker answers (a follower asks the leader for it).
            assert set((await client.expect("Welcome", timeout=10))["manifest"]) == {"app.json"}
        # Both workers have clients (the kernel spreads connections by their addresses), and
        # /metrics from whichever worker answers shows both.
        metrics = (await http.fetch(f"http://127.0.0.1:{port}/metrics", headers=_admin())).body.decode()
        connections = _series(metrics, "cfgpush_connections")
        assert set(connections) == {"0", "1"} and sum(connections.values()) == CLIENTS, metrics
        assert min(connections.values()) > 0, connections

        # The tenant's status from whichever worker answers counts every worker's clients.
        status = json.loads((await http.fetch(f"http://127.0.0.1:{port}/api/v1/tenants/acme", headers=_admin())).body)
        assert (status["connections"], status["connections_by_transport"], status["converged"]) == (
            CLIENTS,
            {"ws": CLIENTS},
            CLIENTS,
        ), status

        listed = json.loads((await http.fetch(f"http://127.0.0.1:{port}/api/v1/tenants", headers=_admin())).body)
        acme = next(t for t in listed["tenants"] if t["tenant_id"] == "acme")
        assert (listed["connections"], acme["connections"], acme["converged"]) == (CLIENTS, CLIENTS, CLIENTS)
        assert {t["tenant_id"] for t in listed["tenants"]} == {"acme", "globex"}

        # One change: every client gets it once, under one id, whichever worker serves it.
        (config_dir / "acme" / "app.json").write_text('{"a": 2}')
        events = [await client.expect("ConfigChanged", timeout=15) for client in clients]
        assert len({e["event_id"] for e in events}) == 1 and events[0]["path"] == "app.json"
        for client in clients:
            await client.expect_nothing(0.3)
        # The files API, one connection per request (whichever worker: a follower asks its
        # leader): the list and the file's announced version, the same each time.
        for _ in range(6):
            listing = json.loads((await http.fetch(f"http://127.0.0.1:{port}/api/v1/tenants/acme/files")).body)
            assert listing["files"] == {"app.json": events[0]["checksum"]}, listing
            served = await http.fetch(f"http://127.0.0.1:{port}/api/v1/tenants/acme/files/app.json")
            assert json.loads(served.body) == {"a": 2}
            document = await http.fetch(f"http://127.0.0.1:{port}/api/v1/tenants/acme/files/app.json?form=document")
            assert document.body == b'{"a":2}' and document.headers["Cfgpush-Checksum"] == events[0]["checksum"]

        # The publish API, one connection per request (whichever worker takes it: a follower
        # publishes through the leader): every client gets the three in one order, one id each.
        for n in range(3):
            answer = await http.fetch(
                f"http://127.0.0.1:{port}/api/v1/events",
                method="POST",
                headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
                body=json.dumps({"tenant_id": "acme", "change_type": "modified", "path": f"api{n}.json"}),
            )
            assert answer.code in (200, 201, 202)
        orders = set()
        for client in clients:
            orders.add(tuple([(await client.expect("ConfigChanged", timeout=15))["event_id"] for _ in range(3)]))
        assert len(orders) == 1

        # Content handed with an event on whichever worker is served by every worker (the leader
        # keeps it for its followers, as Redis does for nodes), and its next version replaces it.
        for version in (b'{"rate": 1}', b'{"rate": 2}'):
            answer = await http.fetch(
                f"http://127.0.0.1:{port}/api/v1/events",
                method="POST",
                headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
                body=json.dumps(
                    {
                        "tenant_id": "acme",
                        "change_type": "modified",
                        "path": "handed.json",
                        "checksum": "sha256:" + hashlib.sha256(version).hexdigest(),
                        "content": base64.b64encode(version).decode(),
                    }
                ),
            )
            assert answer.code in (200, 201, 202)
            for _ in range(6):
                served = await http.fetch(f"http://127.0.0.1:{port}/api/v1/tenants/acme/files/handed.json")
                assert served.body == version
        orders = set()
        for client in clients:
            orders.add(tuple([(await client.expect("ConfigChanged", timeout=15))["event_id"] for _ in range(2)]))
        assert len(orders) == 1
        first = orders.pop()[-1]

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
async def test_a_bad_worker_count_is_one_line(start, config_dir):
    bad = start("--port", "0", "--config-dir", str(config_dir), "--workers", "many")
    assert await bad.wait_exit(60) == 2
    assert bad.log == [f"{ERROR_PREFIX} --workers: workers must be a whole number or auto, not 'many'"]


@pytest.mark.gen_test(timeout=90)
async def test_workers_end_with_a_killed_supervisor(start, config_dir):
    server = start("--port", "0", "--config-dir", str(config_dir), "--workers", "2")
    await wait_for(lambda: len(_listening(server)) == 2 or server.proc.poll() is not None, 60)
    pids = _worker_pids(server)
    server.proc.kill()  # SIGKILL: no chance to stop them itself
    await wait_for(lambda: not any(_alive(pid) for pid in pids.values()), 30)


def test_merging_workers_answers():
    from tornado_cfgpush.worker_peers import merge_expositions, merge_summaries

    a = b'# HELP x_total X\n# TYPE x_total counter\nx_total 2.0\n# HELP g G\n# TYPE g gauge\ng{t="ws"} 1.0\n'
    b = b"# HELP x_total X\n# TYPE x_total counter\nx_total 3.0\n"
    merged = merge_expositions([("0", a), ("1", b)]).decode()
    assert 'x_total{worker="0"} 2.0' in merged and 'x_total{worker="1"} 3.0' in merged
    assert 'g{t="ws",worker="0"} 1.0' in merged and merged.count("# TYPE x_total counter") == 1

    def summary(ws: int, sse: int, converged: int, failures: list, invalid: list) -> dict:
        return {
            "tenant_id": "acme",
            "connections": ws + sse,
            "connections_by_transport": {k: v for k, v in (("ws", ws), ("sse", sse)) if v},
            "observers": 0,
            "clients": ws + sse,
            "last_event_id": "1-1",
            "converged": converged,
            "failed": sum(f["clients"] for f in failures),
            "failures": failures,
            "invalid": invalid,
        }

    bad = {"path": "a.json", "pointer": "", "reason": "not JSON", "since": "2026-01-01T00:00:00.000Z"}
    total = merge_summaries(
        [
            summary(2, 0, 1, [{"reason": "boom", "clients": 1}], [bad]),
            summary(1, 1, 2, [{"reason": "boom", "clients": 1}, {"reason": "bang", "clients": 3}], [bad]),
        ]
    )
    assert (total["connections"], total["connections_by_transport"], total["converged"]) == (4, {"ws": 3, "sse": 1}, 3)
    assert total["failed"] == 5 and total["failures"] == [
        {"reason": "bang", "clients": 3},
        {"reason": "boom", "clients": 2},
    ]
    assert total["invalid"] == [bad] and total["last_event_id"] == "1-1"

"""``GET /api/v1/tenants/<id>``: connections, newest event, convergence (admin token)."""

import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tornado_cfgpush.testing import SSEClient, publish

from .statushelpers import quiet_status

TOKEN = "s3cret-admin-token"


async def status(http_client, http_url, tenant="acme", token=TOKEN):
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    response = await http_client.fetch(f"{http_url}/api/v1/tenants/{tenant}", headers=headers, raise_error=False)
    return response.code, json.loads(response.body)


@pytest.mark.settings(admin_token=TOKEN)
@pytest.mark.gen_test
async def test_convergence_counts_clients_that_acked_the_newest_event(http_client, http_url, connect, core):
    code, body = await status(http_client, http_url)
    assert code == 200
    assert body == quiet_status("acme")
    clients = [await connect("acme") for _ in range(3)]
    for client in clients:
        await client.expect("Welcome")
    other = await connect("globex")
    await other.expect("Welcome")
    event_id = await publish(core)
    for client in clients:
        await client.expect("ConfigChanged")
    for client in clients[:2]:
        await client.send({"Ack": {"event_id": event_id}})
        await client.send("Ping")
        assert await client.next() == "Pong"  # the Ack before it has been handled
    code, body = await status(http_client, http_url)
    assert (code, body["connections"], body["last_event_id"], body["converged"]) == (200, 3, event_id, 2)
    assert body["connections_by_transport"] == {"ws": 3}
    newer = await publish(core, path="b.json")
    code, body = await status(http_client, http_url)
    assert (body["last_event_id"], body["converged"]) == (newer, 0)


async def three_views(http_client, http_url, tenant="acme"):
    """The tenant as the status API, the dashboard's list and /metrics (with tenant labels) see it."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    _, status_api = await status(http_client, http_url, tenant)
    listed = json.loads((await http_client.fetch(f"{http_url}/api/v1/tenants", headers=headers)).body)
    dashboard = next(t for t in listed["tenants"] if t["tenant_id"] == tenant)
    text = (await http_client.fetch(f"{http_url}/metrics", headers=headers)).body.decode()
    metrics = {
        sample.labels["transport"]: int(sample.value)
        for family in text_string_to_metric_families(text)
        if family.name == "cfgpush_connections"
        for sample in family.samples
        if sample.labels.get("tenant") == tenant
    }
    return status_api, dashboard, metrics


@pytest.mark.settings(admin_token=TOKEN, metrics_tenant_labels=True)
@pytest.mark.gen_test(timeout=20)
async def test_the_status_api_the_dashboard_and_the_metrics_agree(http_client, http_url, connect, core):
    """One summary (summary.py) behind all three. A dashboard watching the tenant is an observer:
    a connection, never a client, so it never counts as converged (docs/protocol.md: the clients
    whose latest Ack is the newest event, all of them while there is none). The status API used to
    count it as converged while the tenant had no event."""
    clients = [await connect("acme") for _ in range(2)]
    for client in clients:
        await client.expect("Welcome")
    stream = await SSEClient.open(http_url, "acme")
    observer = await connect("acme", headers={"X-CfgPush-Observer": "dashboard", "Authorization": f"Bearer {TOKEN}"})
    try:
        await stream.expect("Welcome")
        await observer.expect("Welcome")
        status_api, dashboard, metrics = await three_views(http_client, http_url)
        assert (
            status_api
            == dashboard
            == {
                "tenant_id": "acme",
                "connections": 4,
                "connections_by_transport": {"ws": 3, "sse": 1},
                "observers": 1,
                "clients": 3,
                "last_event_id": None,
                "converged": 3,
                "failed": 0,
                "failures": [],
                "invalid": [],
            }
        )
        assert metrics == status_api["connections_by_transport"]

        event_id = await publish(core)
        for client in (*clients, observer):
            await client.expect("ConfigChanged")
            await client.send({"Ack": {"event_id": event_id}})
        for client in (*clients, observer):
            await client.send("Ping")
            assert await client.next() == "Pong"  # its Ack, sent before, has been handled
        status_api, dashboard, metrics = await three_views(http_client, http_url)
        assert status_api == dashboard
        assert (status_api["last_event_id"], status_api["clients"], status_api["converged"]) == (event_id, 3, 2)
        assert metrics == status_api["connections_by_transport"] == {"ws": 3, "sse": 1}
    finally:
        stream.close()


def failed_clients(text: str) -> dict[tuple[str, str], int]:
    return {
        (sample.labels["tenant"], sample.labels["reason"]): int(sample.value)
        for family in text_string_to_metric_families(text)
        if family.name == "cfgpush_apply_failed_clients"
        for sample in family.samples
    }


@pytest.mark.settings(admin_token=TOKEN, metrics_tenant_labels=True)
@pytest.mark.gen_test(timeout=30)
async def test_apply_failures_come_back_per_tenant_and_newest_event(http_client, http_url, connect, core):
    """An Ack with ``error`` (issue #16.2): counted per tenant and newest event, the most common
    reasons first and bounded, in the status API, the dashboard's list and /metrics; an SSE
    client (which cannot Ack) counts as neither; a newer Ack replaces the failure."""
    clients = [await connect("acme") for _ in range(5)]
    for client in clients:
        await client.expect("Welcome")
    stream = await SSEClient.open(http_url, "acme")
    try:
        await stream.expect("Welcome")
        event_id = await publish(core)
        long_reason = "TypeError: " + "x" * 150 + "\nTraceback ..."
        answers = [None, "SyntaxError: bad limits", "SyntaxError: bad limits", long_reason, "other"]
        for client, error in zip(clients, answers, strict=True):
            await client.expect("ConfigChanged")
            await client.send({"Ack": {"event_id": event_id, **({"error": error} if error else {})}})
        for client in clients:
            await client.send("Ping")
            assert await client.next() == "Pong"  # its Ack has been handled
        status_api, dashboard, _ = await three_views(http_client, http_url)
        assert status_api == dashboard
        assert (status_api["clients"], status_api["converged"], status_api["failed"]) == (6, 1, 4)
        failures = status_api["failures"]
        assert failures[0] == {"reason": "SyntaxError: bad limits", "clients": 2}
        assert len(failures) == 3 and all(len(f["reason"]) <= 80 for f in failures)
        assert {"reason": "TypeError: " + "x" * 68 + "…", "clients": 1} in failures
        assert len(json.dumps(failures)) < 400
        headers = {"Authorization": f"Bearer {TOKEN}"}
        text = (await http_client.fetch(f"{http_url}/metrics", headers=headers)).body.decode()
        assert failed_clients(text)[("acme", "SyntaxError: bad limits")] == 2

        # A reason over 200 characters, or not a string: refused, the connection stays.
        await clients[0].send({"Ack": {"event_id": event_id, "error": "y" * 201}})
        error = await clients[0].expect("Error")
        assert error["code"] == "bad_message" and "error" in error["message"]
        await clients[0].send({"Ack": {"event_id": event_id, "error": 7}})
        assert (await clients[0].expect("Error"))["code"] == "bad_message"

        # The failing clients apply the next event: no failure left.
        newer = await publish(core, path="b.json")
        for client in clients[1:]:
            await client.expect("ConfigChanged")
            await client.send({"Ack": {"event_id": newer}})
            await client.send("Ping")
            assert await client.next() == "Pong"
        _, body = await status(http_client, http_url)
        assert (body["last_event_id"], body["converged"], body["failed"], body["failures"]) == (newer, 4, 0, [])
        text = (await http_client.fetch(f"{http_url}/metrics", headers=headers)).body.decode()
        assert failed_clients(text) == {}
    finally:
        stream.close()


@pytest.mark.settings(admin_token=TOKEN)
@pytest.mark.gen_test
async def test_sse_clients_are_counted_by_transport(http_client, http_url, core):
    stream = await SSEClient.open(http_url, "acme")
    try:
        await stream.expect("Welcome")
        _, body = await status(http_client, http_url)
        assert body["connections_by_transport"] == {"sse": 1}
    finally:
        stream.close()


@pytest.mark.settings(admin_token=TOKEN)
@pytest.mark.parametrize(
    "token, code, fragment",
    [
        (None, 401, "admin token required"),
        ("wrong", 401, "wrong admin token"),
        (TOKEN + "x", 401, "wrong admin token"),
    ],
)
@pytest.mark.gen_test
async def test_admin_token_is_required(http_client, http_url, core, token, code, fragment):
    got, body = await status(http_client, http_url, token=token)
    assert got == code
    assert fragment in body["error"]
    assert TOKEN not in json.dumps(body)


@pytest.mark.settings(admin_token=TOKEN)
@pytest.mark.parametrize("tenant", ["-bad", "a%20b", "a" * 65])
@pytest.mark.gen_test
async def test_invalid_tenant_is_400(http_client, http_url, core, tenant):
    code, body = await status(http_client, http_url, tenant=tenant)
    assert code == 400
    assert body["error"].startswith("tenant_id")


@pytest.mark.gen_test
async def test_without_an_admin_token_configured_the_api_is_off(http_client, http_url, core):
    code, body = await status(http_client, http_url)
    assert code == 403
    assert "disabled" in body["error"]

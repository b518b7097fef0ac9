"""``GET /api/v1/tenants/<id>``: connections, newest event, convergence (admin token)."""
import json

import pytest

from .conftest import publish
from .sseclient import SSEClient

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
    assert body == {"tenant_id": "acme", "connections": 0, "connections_by_transport": {},
                    "last_event_id": None, "converged": 0}
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


@pytest.mark.settings(admin_token=TOKEN)
@pytest.mark.gen_test
async def test_sse_clients_are_counted_by_transport(http_client, http_url, core):
    stream = await SSEClient.open(http_url, "acme")
    try:
        await stream.expect("Welcome")
        code, body = await status(http_client, http_url)
        assert body["connections_by_transport"] == {"sse": 1}
    finally:
        stream.close()


@pytest.mark.settings(admin_token=TOKEN)
@pytest.mark.parametrize("token, code, fragment", [
    (None, 401, "admin token required"),
    ("wrong", 401, "wrong admin token"),
    (TOKEN + "x", 401, "wrong admin token"),
])
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

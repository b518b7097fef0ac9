"""``/metrics`` (issue 8) and ``/readyz`` against docs/protocol.md section 5, on a real server."""

from __future__ import annotations

import asyncio
import json

import pytest
from marshmallow import ValidationError
from prometheus_client.parser import text_string_to_metric_families

from tornado_cfgpush import hookimpl
from tornado_cfgpush.closing import CloseReason
from tornado_cfgpush.testing import SSEClient, wait_for

VALID = {"tenant_id": "acme", "change_type": "modified", "path": "app.json"}


class Crasher:
    name = "crasher"

    def __init__(self) -> None:
        self.armed = asyncio.Event()
        self.runs = 0

    async def run(self, emit) -> None:
        await self.armed.wait()
        self.runs += 1
        raise RuntimeError("boom")


class Plugin:
    def __init__(self) -> None:
        self.crasher = Crasher()

    @hookimpl
    def cfgpush_register_sources(self, settings):
        return [self.crasher]


@pytest.fixture
def plugin():
    return Plugin()


@pytest.fixture
def extra_plugins(plugin):
    return [("metricsplugin", plugin)]


async def scrape(http_client, http_url) -> tuple[dict[tuple, float], str]:
    """``{(name, (label, value)...): value}`` of every sample, and the raw text."""
    response = await http_client.fetch(f"{http_url}/metrics")
    assert response.code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    text = response.body.decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples, text


@pytest.mark.gen_test(timeout=30)
async def test_metrics_count_connections_events_and_deliveries(http_client, http_url, connect, core, plugin):
    acme1 = await connect("acme")
    acme2 = await connect("acme")
    globex = await connect("globex")
    for client in (acme1, acme2, globex):
        await client.expect("Welcome")
    sse = await SSEClient.open(http_url, "acme")
    try:
        await sse.expect("Welcome")
        await core.publish(dict(VALID), "scripted")
        await core.publish(dict(VALID, path="b.json"), "scripted")
        with pytest.raises(ValidationError):
            await core.publish(dict(VALID, change_type="exploded"), "scripted")
        for client in (acme1, acme2):
            await client.expect("ConfigChanged")
            await client.expect("ConfigChanged")
        plugin.crasher.armed.set()
        await wait_for(lambda: core.runner.restarts["crasher"] >= 1, timeout=10)
        samples, text = await scrape(http_client, http_url)
    finally:
        sse.close()

    assert samples[("cfgpush_connections", (("transport", "ws"),))] == 3
    assert samples[("cfgpush_connections", (("transport", "sse"),))] == 1
    assert samples[("cfgpush_tenants_with_clients", ())] == 2
    assert samples[("cfgpush_events_published_total", (("source", "scripted"),))] == 2
    assert samples[("cfgpush_events_rejected_total", (("reason", "invalid"), ("source", "scripted")))] == 1
    assert samples[("cfgpush_deliveries_total", ())] == 6  # 2 events x (2 WebSocket + 1 SSE) clients of acme
    assert samples[("cfgpush_delivery_seconds_count", ())] == 2  # once per event
    assert samples[("cfgpush_source_restarts_total", (("source", "crasher"),))] >= 1
    assert samples[("cfgpush_source_restarts_total", (("source", "filesystem"),))] == 0
    assert samples[("cfgpush_source_up", (("source", "filesystem"),))] == 1
    assert samples[("cfgpush_broker_up", ())] == 1
    assert samples[("cfgpush_slow_client_disconnects_total", ())] == 0
    assert samples[("cfgpush_heartbeat_closes_total", ())] == 0
    assert ("process_resident_memory_bytes", ()) in samples
    assert "tenant=" not in text  # no per-tenant series by default


class _Ended:
    tenant_id = "acme"


@pytest.mark.gen_test(timeout=30)
async def test_metrics_read_the_hubs_counters(http_client, http_url, core):
    for reason, times in ((CloseReason.TOO_SLOW, 3), (CloseReason.HEARTBEAT_TIMEOUT, 4), (CloseReason.RATE_LIMITED, 2)):
        for _ in range(times):
            core.hub.leave(_Ended(), reason)  # how a subscription's close path counts
    samples, _ = await scrape(http_client, http_url)
    assert samples[("cfgpush_slow_client_disconnects_total", ())] == 3
    assert samples[("cfgpush_heartbeat_closes_total", ())] == 4
    assert samples[("cfgpush_connection_closes_total", (("reason", "rate_limited"),))] == 2
    assert samples[("cfgpush_connection_closes_total", (("reason", "too_slow"),))] == 3


@pytest.mark.gen_test(timeout=30)
async def test_delivery_is_observed_once_per_event_not_per_recipient(connect, core, monkeypatch):
    calls = []
    monkeypatch.setattr(core.metrics.latency, "observe", calls.append)
    clients = [await connect("acme") for _ in range(5)]
    for client in clients:
        await client.expect("Welcome")
    await core.publish(dict(VALID), "scripted")
    for client in clients:
        await client.expect("ConfigChanged")
    assert len(calls) == 1
    assert core.hub.deliveries == 5


@pytest.mark.settings(metrics_tenant_labels=True)
@pytest.mark.gen_test(timeout=30)
async def test_tenant_labels_when_asked(http_client, http_url, connect, core):
    acme = await connect("acme")
    globex = await connect("globex")
    await acme.expect("Welcome")
    await globex.expect("Welcome")
    await core.publish(dict(VALID), "scripted")
    await acme.expect("ConfigChanged")
    samples, _ = await scrape(http_client, http_url)
    assert samples[("cfgpush_connections", (("tenant", "acme"), ("transport", "ws")))] == 1
    assert samples[("cfgpush_connections", (("tenant", "globex"), ("transport", "ws")))] == 1
    assert samples[("cfgpush_events_published_total", (("source", "scripted"), ("tenant", "acme")))] == 1
    assert samples[("cfgpush_deliveries_total", (("tenant", "acme"),))] == 1


@pytest.mark.gen_test(timeout=30)
async def test_readyz_and_healthz_as_in_protocol_section_5(http_client, http_url, core):
    ready = await http_client.fetch(f"{http_url}/readyz", raise_error=False)
    assert (ready.code, ready.body) == (200, b'{"status": "ready"}')
    assert (await http_client.fetch(f"{http_url}/healthz")).code == 200
    core.broker.readiness = lambda: "broker unreachable: test"
    try:
        ready = await http_client.fetch(f"{http_url}/readyz", raise_error=False)
        assert ready.code == 503
        assert b"broker unreachable: test" in ready.body
        samples, _ = await scrape(http_client, http_url)
        assert samples[("cfgpush_broker_up", ())] == 0
    finally:
        del core.broker.readiness


# -- who may scrape (issue 18 item 10) -------------------------------------------------------------

ADMIN = "metrics-admin-token"


async def fetch_metrics(http_client, http_url, token: str | None = None, **headers: str):
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return await http_client.fetch(f"{http_url}/metrics", headers=headers, raise_error=False)


@pytest.mark.settings(admin_token=ADMIN)
@pytest.mark.gen_test(timeout=30)
async def test_with_an_admin_token_metrics_need_it(http_client, http_url, core):
    for token in (None, "wrong-token", ADMIN + "x"):
        response = await fetch_metrics(http_client, http_url, token)
        assert response.code == 401, response.body
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert json.loads(response.body)["error"] in (
            "admin token required (Authorization: Bearer <token>)",
            "wrong admin token",
        )
        assert b"cfgpush_" not in response.body
    response = await fetch_metrics(http_client, http_url, ADMIN)
    assert response.code == 200
    assert b"cfgpush_connections" in response.body


@pytest.mark.settings(admin_token=ADMIN, metrics_public=True)
@pytest.mark.gen_test(timeout=30)
async def test_metrics_public_leaves_them_open_for_a_scraper_on_a_private_network(http_client, http_url, core):
    assert (await fetch_metrics(http_client, http_url)).code == 200
    assert (await fetch_metrics(http_client, http_url, ADMIN)).code == 200


@pytest.mark.settings(admin_token=ADMIN, allowed_hosts=("metrics.internal",))
@pytest.mark.gen_test(timeout=30)
async def test_metrics_answer_only_for_an_allowed_host(http_client, http_url, core):
    rebound = await fetch_metrics(http_client, http_url, ADMIN, Host="evil.example")
    assert rebound.code == 421
    assert "Host" in json.loads(rebound.body)["error"]
    assert (await fetch_metrics(http_client, http_url, ADMIN, Host="metrics.internal:9090")).code == 200


def test_cli_metrics_public_flag():
    from tornado_cfgpush.cli import build_parser, settings_from

    parse = build_parser().parse_args
    assert settings_from(parse([]), {}).metrics_public is False
    assert settings_from(parse(["--metrics-public"]), {}).metrics_public is True
    assert settings_from(parse([]), {"CFGPUSH_METRICS_PUBLIC": "true"}).metrics_public is True

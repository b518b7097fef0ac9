"""The Python client (tornado_cfgpush.client) and ``cfgpush-tail``, against a real server."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tornado_cfgpush import hookimpl
from tornado_cfgpush.client import ConfigChanged, Resync, SubscribeError, Welcome, backoff_delay, subscribe, ws_url
from tornado_cfgpush.closing import CloseReason
from tornado_cfgpush.testing import wait_for

from .tcpproxy import FreezableProxy

TAIL = Path(sys.executable).with_name("cfgpush-tail")
FAST = {"backoff_min": 0.05, "backoff_max": 0.2}


def publish(core, path="a.json", tenant_id="acme"):
    return core.publish({"tenant_id": tenant_id, "change_type": "modified", "path": path}, "test")


class Reader:
    """Runs ``async for`` over a subscription in a task; what it got is in ``events``."""

    def __init__(self, subscription):
        self.sub = subscription
        self.events: list = []
        self.task = asyncio.ensure_future(self._run())

    async def _run(self):
        async for event in self.sub:
            self.events.append(event)

    async def count(self, n, timeout=5.0):
        await wait_for(lambda: len(self.events) >= n or self.task.done(), timeout)
        if self.task.done():
            self.task.result()
        return self.events[:n]

    async def close(self):
        await self.sub.aclose()
        await asyncio.wait_for(self.task, 5)


class TokenRecorder:
    """A ``cfgpush_authorize`` that only records the tokens it is shown (the JWT check decides)."""

    def __init__(self):
        self.tokens: list[str | None] = []

    @hookimpl
    def cfgpush_authorize(self, settings, request, tenant_id, token):
        self.tokens.append(token)
        return None


@pytest.fixture
def extra_plugins():
    return [("recorder", TokenRecorder())]


def tokens_seen(core) -> list:
    return core.pm.get_plugin("recorder").tokens


def record_catch_ups(core) -> list[tuple[str, str | None]]:
    """``(tenant_id, last_event_id)`` of every catch-up the broker is asked for from now on."""
    calls: list[tuple[str, str | None]] = []
    catch_up = core.broker.catch_up

    async def recorded(tenant_id, since):
        calls.append((tenant_id, since))
        return await catch_up(tenant_id, since)

    core.broker.catch_up = recorded
    return calls


def server_conn(core):
    conns = core.hub.connections("acme")
    return conns[0] if len(conns) == 1 else None


# -- pure functions ---------------------------------------------------------------------------------


def test_backoff_is_full_jitter_doubling_to_the_cap():
    rng = random.Random(7)
    for attempt, cap in [(0, 0.5), (1, 1.0), (3, 4.0), (5, 16.0), (6, 20.0), (60, 20.0)]:
        delays = [backoff_delay(attempt, rng=rng.random) for _ in range(2000)]
        assert 0 <= min(delays) < cap * 0.05 and cap * 0.95 < max(delays) <= cap
    # A thousand clients dropped at once come back spread over the first window, not together.
    first = sorted(backoff_delay(0, rng=rng.random) for _ in range(1000))
    assert sum(1 for d in first if d < 0.05) < 200 and first[500] == pytest.approx(0.25, abs=0.06)


@pytest.mark.parametrize(
    "given, expected",
    [
        ("http://h:1", "ws://h:1/ws"),
        ("https://h/x/", "wss://h/x/ws"),
        ("ws://h:1/ws", "ws://h:1/ws"),
        ("http://h:1/events", "ws://h:1/ws"),
    ],
)
def test_ws_url(given, expected):
    assert ws_url(given) == expected


def test_ws_url_refuses_other_schemes():
    with pytest.raises(ValueError, match="expected an http"):
        ws_url("ftp://h/")


# -- against a server ---------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_receives_a_file_edit_and_acknowledges_it(http_url, core, config_dir):
    reader = Reader(subscribe(http_url, "acme", welcome=True, **FAST))
    try:
        (welcome,) = await reader.count(1)
        assert isinstance(welcome, Welcome) and welcome.tenant_id == "acme" and welcome.last_event_id is None
        (config_dir / "acme" / "app.json").write_text('{"a": 2, "b": 1}')
        _, change = await reader.count(2)
        assert isinstance(change, ConfigChanged)
        assert (change.path, change.change_type) == ("app.json", "modified")
        assert change.diff == {"added": ["/b"], "removed": [], "changed": ["/a"]}
        assert change.to_json() == {"ConfigChanged": change.raw}
        # Acknowledged once the loop asked for the next event: convergence on the server.
        await wait_for(lambda: server_conn(core) is not None and server_conn(core).acked == change.event_id)
        assert reader.sub.last_event_id == change.event_id
    finally:
        await reader.close()
    assert reader.sub.state == "closed"
    await wait_for(lambda: core.hub.connection_count() == 0)


@pytest.mark.gen_test(timeout=30)
async def test_apply_failures_are_answered_with_an_ack_error(http_url, core, caplog):
    """issue #16.2: ``failed(exc)`` in the loop's body answers the event with an Ack carrying
    the error, until a later event applies; a body that raises out of ``async with`` reports
    its exception before the connection closes."""
    from tornado_cfgpush.events import AckFailure

    caplog.set_level(logging.DEBUG, "cfgpush.subscription")
    with pytest.raises(KeyError):
        async with subscribe(http_url, "acme", welcome=True, **FAST) as events:
            second = None
            async for event in events:
                if isinstance(event, Welcome):
                    await publish(core)
                elif second is None:
                    assert isinstance(event, ConfigChanged)
                    events.failed(ValueError("limits.rate: " + "x" * 300 + "\nmore"))
                    expected = AckFailure(event.event_id, ("ValueError: limits.rate: " + "x" * 300)[:199] + "…")
                    await wait_for(lambda e=expected: server_conn(core) is not None and server_conn(core).acked == e)
                    assert events.last_event_id is None
                    second = await publish(core, path="b.json")
                elif event.event_id == second:
                    break
            third = await publish(core, path="c.json")
            async for event in events:
                if event.event_id == third:
                    await wait_for(lambda: server_conn(core).acked == second)  # applied: replaces the failure
                    raise KeyError("no such limit")
    await wait_for(lambda: core.hub.connection_count() == 0)
    assert f"could not apply {third}: KeyError: 'no such limit'" in caplog.text


@pytest.mark.gen_test(timeout=30)
async def test_reconnects_and_resumes_without_gap_or_duplicate(http_url, core):
    catch_ups = record_catch_ups(core)
    reader = Reader(subscribe(http_url, "acme", **FAST))
    try:
        await wait_for(lambda: server_conn(core) is not None)
        before = [await publish(core, f"a{i}.json") for i in range(2)]
        await reader.count(2)
        first = server_conn(core)
        first.close(CloseReason.GOING_AWAY)  # 1001, as at a restart
        during = [await publish(core, f"b{i}.json") for i in range(5)]  # before it is back
        await wait_for(lambda: server_conn(core) not in (None, first))
        after = [await publish(core, "c.json")]
        got = await reader.count(8)
        assert [e.event_id for e in got] == before + during + after
        assert reader.sub.connections == 2
        # The second connection was asked to resume from the last event handed out.
        assert catch_ups[-1] == ("acme", before[-1])
    finally:
        await reader.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_burst_of_2000_events_is_acknowledged_within_the_frame_budget(http_url, core):
    """Acks are coalesced (the newest, at most every 100 ms): 2 000 events in a burst do not
    pass the server's frame budget (20 frames a second), and the server learns the last one."""
    statuses: list[str] = []
    reader = Reader(subscribe(http_url, "acme", on_status=lambda s, i: statuses.append(s), **FAST))
    try:
        await wait_for(lambda: server_conn(core) is not None)
        ids = [await publish(core, f"burst{i}.json") for i in range(2000)]
        got = await reader.count(2000, timeout=30)
        assert [e.event_id for e in got] == ids
        await wait_for(lambda: server_conn(core) is not None and server_conn(core).acked == ids[-1])
        assert reader.sub.connections == 1 and "reconnecting" not in statuses
    finally:
        await reader.close()


@pytest.mark.settings(history_size=2)
@pytest.mark.gen_test(timeout=30)
async def test_resync_when_the_history_no_longer_holds_the_id(http_url, core):
    reader = Reader(subscribe(http_url, "acme", **FAST))
    try:
        await wait_for(lambda: server_conn(core) is not None)
        seen = await publish(core)
        await reader.count(1)
        first = server_conn(core)
        first.close(CloseReason.GOING_AWAY)
        missed = [await publish(core, f"m{i}.json") for i in range(4)]
        _, resync = await reader.count(2)
        assert isinstance(resync, Resync)
        assert (resync.reason, resync.last_event_id) == ("history_expired", missed[-1])
        assert set(resync.manifest) == {"app.json"}
        # It goes on from the Resync's id, and acknowledges it.
        await wait_for(lambda: server_conn(core) is not None and server_conn(core).acked == missed[-1])
        live = await publish(core, "live.json")
        assert (await reader.count(3))[2].event_id == live
        assert seen != live
    finally:
        await reader.close()


@pytest.mark.settings(heartbeat_interval=0.3, heartbeat_timeout=5)
@pytest.mark.gen_test(timeout=30)
async def test_half_open_connection_detected_within_two_intervals(http_port, http_server, core):
    proxy = await FreezableProxy(http_port).start()
    statuses: list[tuple[float, str, dict]] = []
    reader = Reader(
        subscribe(
            f"http://127.0.0.1:{proxy.port}",
            "acme",
            on_status=lambda s, i: statuses.append((time.monotonic(), s, i)),
            **FAST,
        )
    )
    try:
        await wait_for(lambda: server_conn(core) is not None)
        await publish(core, "before.json")
        await reader.count(1)
        proxy.freeze()
        frozen_at = time.monotonic()
        missed = await publish(core, "while-frozen.json")  # the server wrote it into the void
        await wait_for(lambda: any(s == "reconnecting" for _, s, _ in statuses), timeout=5)
        detected = next(t for t, s, _ in statuses if s == "reconnecting") - frozen_at
        assert detected <= 2 * 0.3 + 0.25, detected
        assert next(i for _, s, i in statuses if s == "reconnecting")["reason"].startswith("server silent")
        # Through a fresh connection, resumed: the event written into the void arrives.
        assert (await reader.count(2))[1].event_id == missed
        assert proxy.accepted == 2
    finally:
        await reader.close()
        await proxy.close()


SECRET = "client-test-secret-of-at-least-32-bytes"


def mint(exp_in: float, tenant_id: str = "acme") -> str:
    import jwt

    return jwt.encode({"tenant_id": tenant_id, "exp": int(time.time() + exp_in)}, SECRET, algorithm="HS256")


@pytest.mark.settings(jwt_secret=SECRET)
@pytest.mark.gen_test(timeout=30)
async def test_get_token_per_connection_and_refresh_in_place_before_expiry(http_url, core):
    issued: list[str] = []

    def get_token():
        issued.append(mint(2.2))
        return issued[-1]

    reader = Reader(subscribe(http_url, "acme", get_token=get_token, **FAST))
    try:
        await wait_for(lambda: server_conn(core) is not None)
        first = server_conn(core)
        assert tokens_seen(core) == issued[:1]
        expires = time.time() + 2.2
        # Refreshed about a fifth of its life before the expiry, in place (Refresh, Refreshed).
        await wait_for(lambda: len(issued) == 2, timeout=5)
        assert time.time() < expires
        await asyncio.sleep(expires - time.time() + 0.5)  # wait-ok: outliving the first token is the point
        assert server_conn(core) is first and reader.sub.connections == 1
        event = await publish(core)
        assert (await reader.count(1))[0].event_id == event
    finally:
        await reader.close()


@pytest.mark.settings(jwt_secret=SECRET)
@pytest.mark.gen_test(timeout=30)
async def test_refused_token_without_get_token_is_final(http_url):
    with pytest.raises(SubscribeError, match="refused with 401") as refused:
        async for _ in subscribe(http_url, "acme", token=mint(-60), **FAST):
            pass
    assert refused.value.status == 401


@pytest.mark.gen_test(timeout=30)
async def test_invalid_tenant_is_refused_for_good(http_url):
    with pytest.raises(SubscribeError, match="refused with 400: tenant_id") as refused:
        async for _ in subscribe(http_url, "../etc", **FAST):
            pass
    assert refused.value.status == 400


@pytest.mark.gen_test(timeout=30)
async def test_keeps_trying_while_the_server_is_away():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    statuses = []
    sub = subscribe(
        f"http://127.0.0.1:{port}",
        "acme",
        on_status=lambda s, i: statuses.append((s, i)),
        backoff_min=0.02,
        backoff_max=0.05,
    )
    reader = Reader(sub)
    await wait_for(lambda: sum(1 for s, _ in statuses if s == "reconnecting") >= 3)
    await reader.close()
    delays = [i["delay"] for s, i in statuses if s == "reconnecting"]
    assert all(0 <= d <= 0.05 for d in delays)
    assert statuses[-1][0] == "closed"


# -- cfgpush-tail -------------------------------------------------------------------------------------


def _tail(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [str(TAIL), *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.gen_test(timeout=60)
async def test_tail_prints_json_lines_and_stops_on_sigint(http_url, core, config_dir):
    proc = _tail(http_url, "--tenant", "acme")
    try:
        await wait_for(lambda: server_conn(core) is not None, timeout=30)
        (config_dir / "acme" / "app.json").write_text('{"a": 3}')
        loop = asyncio.get_running_loop()
        line = await asyncio.wait_for(loop.run_in_executor(None, proc.stdout.readline), 10)
        message = json.loads(line)
        assert list(message) == ["ConfigChanged"]
        assert (message["ConfigChanged"]["path"], message["ConfigChanged"]["tenant_id"]) == ("app.json", "acme")
        proc.send_signal(signal.SIGINT)
        await wait_for(lambda: proc.poll() is not None, timeout=10)
        assert proc.returncode == 0
        assert "subscribed to acme" in proc.stderr.read()
        assert proc.stdout.read() == ""
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.gen_test(timeout=60)
async def test_tail_refused_tenant_exits_2_with_one_line(http_url):
    proc = _tail(http_url, "--tenant", "bad/tenant")
    try:
        await wait_for(lambda: proc.poll() is not None, timeout=30)
        assert proc.returncode == 2
        err = proc.stderr.read()
        assert err.startswith("cfgpush-tail: error: refused with 400: tenant_id") and err.count("\n") == 1, err
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()

"""cfgpush.js and the dashboard in real headless Chromium (Debian's, driven by Playwright).

Pages are the server's own (``/example.html``, ``/``), so the browser treats them as it would an
application's; clients are started in them with ``startClient`` from
scripts/dashboard_screenshot.py, which also holds the browser set-up and the dashboard's
walk-through that makes docs/dashboard.png.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import socket
import sys
import time
from pathlib import Path

import pytest

from tornado_cfgpush.client import subscribe
from tornado_cfgpush.testing import LISTENING, need_program, wait_for

from .tcpproxy import FreezableProxy

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("dashboard_screenshot", ROOT / "scripts" / "dashboard_screenshot.py")
shot = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("dashboard_screenshot", shot)
_spec.loader.exec_module(shot)

WAIT_MS = 15_000
HEARTBEAT = 0.5
ADMIN = "browser-admin-token"


@pytest.fixture(autouse=True)
def chromium_installed():
    need_program("chromium")


def page_wait(page, expression: str, timeout_ms: int = WAIT_MS):
    return page.wait_for_function(expression, timeout=timeout_ms)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def write(path: Path, text: str) -> None:
    shot.write_atomically(path, text)


async def client_state(page, index: int = 0) -> dict:
    return await page.evaluate(
        """(i) => { const c = window.clients[i];
        return { events: c.events, resyncs: c.resyncs, welcomes: c.welcomes, statuses: c.statuses,
                 transport: c.push.transport, lastEventId: c.push.lastEventId }; }""",
        index,
    )


# -- in-process server -------------------------------------------------------------------------------


@pytest.mark.settings(heartbeat_interval=HEARTBEAT, heartbeat_timeout=2)
@pytest.mark.gen_test(timeout=90)
async def test_page_receives_a_file_edit_pings_and_acknowledges(http_url, core, config_dir, tmp_path):
    async with shot.chromium(tmp_path / "profile") as context:
        # The README's quick start, as is: /example.html?tenant=acme.
        example = await shot.open_app_page(context, http_url, "acme")
        page = await shot.open_app_page(context, http_url)
        await shot.start_client(page, "acme")
        await page_wait(page, "window.clients[0].push.state === 'open'")
        await page_wait(example, "document.getElementById('state').dataset.state === 'open'")
        assert (await client_state(page))["welcomes"][0]["heartbeat_interval"] == HEARTBEAT
        write(config_dir / "acme" / "app.json", '{"a": 2, "limits": {"rate": 5}}')
        await page_wait(page, "window.clients[0].events.length === 1")
        await page_wait(example, "document.querySelectorAll('#changes li').length === 1")
        state = await client_state(page)
        event = state["events"][0]
        assert (event["tenant_id"], event["path"], event["change_type"]) == ("acme", "app.json", "modified")
        assert event["diff"] == {"added": ["/limits"], "removed": [], "changed": ["/a"]}
        assert await example.text_content("#changes li") == "modified app.json"
        assert state["transport"] == "ws" and state["lastEventId"] == event["event_id"]
        # Ack after onChange resolved: both pages' connections converged on the event.
        await wait_for(lambda: [c.acked for c in core.hub.connections("acme")] == [event["event_id"]] * 2)
        # Idle for three heartbeat intervals: the client's Pings get Pongs, so it never takes
        # the server for dead (its watchdog is two intervals) and the server never drops it.
        await asyncio.sleep(3 * HEARTBEAT)  # wait-ok: staying idle is the point
        states = [s["state"] for s in (await client_state(page))["statuses"]]
        assert states == ["connecting", "open"], states
        assert core.hub.connection_count("acme") == 2


@pytest.mark.gen_test(timeout=90)
async def test_a_rejected_on_change_is_answered_with_an_ack_error(http_url, core, config_dir, tmp_path):
    """issue #16.2: onChange rejects, so the event is answered ``{"Ack": {"event_id", "error"}}``
    (the error's name and message); the page that applied it acknowledges as before."""
    from tornado_cfgpush.events import AckFailure

    async with shot.chromium(tmp_path / "profile") as context:
        page = await shot.open_app_page(context, http_url)
        await shot.start_client(page, "acme", {"failWith": "limits.rate must be a number\nat apply()"})
        await shot.start_client(page, "acme")
        await page_wait(page, "window.clients.every((c) => c.push.state === 'open')")
        write(config_dir / "acme" / "app.json", '{"a": 3}')
        await page_wait(page, "window.clients.every((c) => c.events.length === 1)")
        event_id = (await client_state(page))["events"][0]["event_id"]
        failure = AckFailure(event_id, "RangeError: limits.rate must be a number")
        await wait_for(
            lambda: (
                sorted(map(str, (c.acked for c in core.hub.connections("acme"))))
                == sorted(map(str, [failure, event_id]))
            )
        )
        assert (await client_state(page, 0))["lastEventId"] != event_id  # not applied: not saved as applied


@pytest.mark.gen_test(timeout=90)
async def test_a_burst_of_2000_events_is_acknowledged_within_the_frame_budget(http_url, core, tmp_path):
    """Acks are coalesced (the newest, at most every 100 ms): a page that applies 2 000 events
    in a burst stays within the server's frame budget (20 frames a second) and is not closed."""
    async with shot.chromium(tmp_path / "profile") as context:
        page = await shot.open_app_page(context, http_url)
        await shot.start_client(page, "acme")
        await page_wait(page, "window.clients[0].push.state === 'open'")
        [conn] = core.hub.connections("acme")
        ids = [
            await core.publish({"tenant_id": "acme", "change_type": "modified", "path": f"burst{i}.json"}, "t")
            for i in range(2000)
        ]
        await page_wait(page, "window.clients[0].events.length === 2000", timeout_ms=30_000)
        await wait_for(lambda: conn.acked == ids[-1], timeout=10)
        await asyncio.sleep(0.5)  # wait-ok: a close for too many frames would have come by now
        state = await client_state(page)
        assert [e["event_id"] for e in state["events"]] == ids
        assert [s["state"] for s in state["statuses"]] == ["connecting", "open"]
        assert core.hub.connections("acme") == [conn]


@pytest.mark.settings(heartbeat_interval=HEARTBEAT, heartbeat_timeout=5)
@pytest.mark.gen_test(timeout=90)
async def test_half_open_connection_detected_within_two_intervals_and_resumed(http_port, http_server, core, tmp_path):
    proxy = await FreezableProxy(http_port).start()
    try:
        async with shot.chromium(tmp_path / "profile") as context:
            page = await shot.open_app_page(context, f"http://127.0.0.1:{proxy.port}")
            await shot.start_client(page, "acme", {"backoffMin": 50})
            await page_wait(page, "window.clients[0].push.state === 'open'")
            first = await core.publish({"tenant_id": "acme", "change_type": "modified", "path": "a.json"}, "t")
            await page_wait(page, "window.clients[0].events.length === 1")
            proxy.freeze()
            frozen_at = await page.evaluate("performance.now()")
            missed = await core.publish({"tenant_id": "acme", "change_type": "modified", "path": "b.json"}, "t")
            await page_wait(page, "window.clients[0].events.length === 2")
            state = await client_state(page)
            assert [e["event_id"] for e in state["events"]] == [first, missed]
            lost = next(s for s in state["statuses"] if s["state"] == "reconnecting")
            detected = (lost["at"] - frozen_at) / 1000
            assert lost["reason"] == "server silent for two heartbeat intervals"
            assert detected <= 2 * HEARTBEAT + 0.3, detected
            print(f"half-open detected after {detected * 1000:.0f} ms (heartbeat {HEARTBEAT * 1000:.0f} ms)")
    finally:
        await proxy.close()


BLOCK_WEBSOCKETS = """
// As behind a proxy that refuses upgrades: every WebSocket fails before it opens.
window.WebSocket = class BlockedWebSocket {
  constructor(url) {
    this.url = url; this.readyState = 0;
    setTimeout(() => { this.readyState = 3; this.onerror?.(new Event("error"));
      this.onclose?.({ code: 1006, reason: "", wasClean: false }); }, 5);
  }
  send() { throw new DOMException("not open", "InvalidStateError"); }
  close() {}
};
"""


@pytest.mark.settings(heartbeat_interval=HEARTBEAT, heartbeat_timeout=2)
@pytest.mark.gen_test(timeout=90)
async def test_falls_back_to_server_sent_events_when_websockets_are_blocked(http_url, core, config_dir, tmp_path):
    async with shot.chromium(tmp_path / "profile") as context:
        await context.add_init_script(BLOCK_WEBSOCKETS)
        page = await shot.open_app_page(context, http_url)
        await shot.start_client(page, "acme", {"backoffMin": 50})
        await page_wait(page, "window.clients[0].push.state === 'open'")
        assert [c.transport for c in core.hub.connections("acme")] == ["sse"]
        write(config_dir / "acme" / "app.json", '{"a": 5}')
        await page_wait(page, "window.clients[0].events.length === 1")
        state = await client_state(page)
        assert state["transport"] == "sse" and state["events"][0]["path"] == "app.json"
        tried = [s["transport"] for s in state["statuses"] if s["state"] == "connecting"]
        assert tried == ["ws", "ws", "sse"]
        # The SSE ": ping" comments keep it alive: no reconnect over three intervals.
        await asyncio.sleep(3 * HEARTBEAT)  # wait-ok: staying idle is the point
        assert [s["state"] for s in (await client_state(page))["statuses"]].count("open") == 1
        await page.evaluate("window.clients[0].push.close()")
        await wait_for(lambda: core.hub.connection_count("acme") == 0)  # close() ends the stream


# -- cfgpush-serve processes, restarted --------------------------------------------------------------


def serve_args(config_dir: Path, port: int, *extra: str) -> list[str]:
    return [
        "--config-dir",
        str(config_dir),
        "--port",
        str(port),
        "--heartbeat-interval",
        str(HEARTBEAT),
        "--heartbeat-timeout",
        "2",
        "--debounce-ms",
        "30",
        *extra,
    ]


async def started(server) -> int:
    return int((await server.wait_log(LISTENING)).group(1))


async def stop(server) -> None:
    server.proc.terminate()  # SIGTERM: clients get 1001
    assert await server.wait_exit(30) == 0


class Collector:
    """A Python client of another node: proof that an edit was published while a node was down."""

    def __init__(self, url: str):
        self.events: list = []
        self.sub = subscribe(url, "acme", backoff_min=0.05, backoff_max=0.2)
        self.task = asyncio.ensure_future(self._run())

    async def _run(self):
        async for event in self.sub:
            self.events.append(event)

    async def close(self):
        await self.sub.aclose()
        await asyncio.wait_for(self.task, 5)


@pytest.mark.gen_test(timeout=120)
async def test_restart_resumes_without_losing_edits_made_while_down(start, redis_server, config_dir, tmp_path):
    """Node A (the page's) restarts; node B, on the same Redis, sees the edits made meanwhile.

    A freshly started filesystem source reports only what changes after it starts, so the
    edits made while A is down reach the shared history through B, as in a cluster; A's
    clients resume from that history when A is back, all eight spread over the backoff window.
    """
    clients = 8
    port = free_port()
    broker = ("--broker", redis_server.url)
    node_a = start(*serve_args(config_dir, port, *broker))
    node_b = start(*serve_args(config_dir, 0, *broker))
    await started(node_a)
    collector = Collector(f"http://127.0.0.1:{await started(node_b)}")
    base = f"http://127.0.0.1:{port}"
    try:
        async with shot.chromium(tmp_path / "profile") as context:
            page = await shot.open_app_page(context, base)
            for _ in range(clients):
                await shot.start_client(page, "acme", {"storage": True})
            await page_wait(page, "window.clients.every(c => c.push.state === 'open')")
            write(config_dir / "acme" / "app.json", '{"a": 10}')
            await page_wait(page, "window.clients.every(c => c.events.length === 1)")
            await wait_for(lambda: len(collector.events) == 1, timeout=10)

            await stop(node_a)
            await page_wait(page, "window.clients.every(c => c.statuses.some(s => s.state === 'reconnecting'))")
            write(config_dir / "acme" / "app.json", '{"a": 11}')
            write(config_dir / "acme" / "new.json", '{"n": 1}')
            await wait_for(lambda: len(collector.events) == 3, timeout=10)  # in the shared history
            node_a2 = start(*serve_args(config_dir, port, *broker))
            await started(node_a2)
            back_at = await page.evaluate("performance.now()")
            await page_wait(page, "window.clients.every(c => c.events.length === 3)")
            resumed_at = await page.evaluate("performance.now()")

            expected = [e.event_id for e in collector.events]
            for index in range(clients):
                state = await client_state(page, index)
                assert [e["event_id"] for e in state["events"]] == expected  # nothing lost, nothing twice
                assert state["resyncs"] == [] and state["lastEventId"] == expected[-1]
            assert [e["path"] for e in (await client_state(page))["events"]] == ["app.json", "app.json", "new.json"]
            stored = await page.evaluate("Object.keys(sessionStorage).map(k => sessionStorage.getItem(k))")
            assert stored == [expected[-1]]  # storage: true keeps the applied id for a reload

            # No storm: each client's first reconnect came after its own random wait in
            # [0, 0.5 s] (full jitter), so together they spread over that window.
            firsts = []
            for index in range(clients):
                statuses = (await client_state(page, index))["statuses"]
                lost = next(i for i, s in enumerate(statuses) if s["state"] == "reconnecting")
                retry = statuses[lost + 1]
                assert retry["state"] == "connecting"
                firsts.append((retry["at"] - statuses[lost]["at"]) / 1000)
            assert all(0 <= d <= 0.5 + 0.1 for d in firsts), firsts
            assert max(firsts) - min(firsts) > 0.05, firsts
            print(
                f"first reconnects after the 1001: {sorted(round(d * 1000) for d in firsts)} ms; "
                f"all {clients} resumed {resumed_at - back_at:.0f} ms after node A listened again"
            )
    finally:
        await collector.close()


@pytest.mark.gen_test(timeout=120)
async def test_embedded_broker_restart_gets_resync(start, config_dir, tmp_path):
    """The embedded broker's history does not outlive its process: a new epoch."""
    await down_longer_than_the_history(start, config_dir, tmp_path, None)


@pytest.mark.gen_test(timeout=120)
async def test_down_longer_than_the_redis_history_gets_resync(start, redis_server, config_dir, tmp_path):
    await down_longer_than_the_history(start, config_dir, tmp_path, redis_server.url)


async def down_longer_than_the_history(start, config_dir, tmp_path, redis_url):
    port = free_port()
    extra: tuple[str, ...] = ()
    collector = None
    if redis_url is not None:
        extra = ("--broker", redis_url, "--history-size", "2")
        node_b = start(*serve_args(config_dir, 0, *extra))
        collector = Collector(f"http://127.0.0.1:{await started(node_b)}")
    node_a = start(*serve_args(config_dir, port, *extra))
    await started(node_a)
    try:
        async with shot.chromium(tmp_path / "profile") as context:
            page = await shot.open_app_page(context, f"http://127.0.0.1:{port}")
            await shot.start_client(page, "acme", {"backoffMin": 100})
            await page_wait(page, "window.clients[0].push.state === 'open'")
            write(config_dir / "acme" / "app.json", '{"a": 20}')
            await page_wait(page, "window.clients[0].events.length === 1")
            await stop(node_a)
            if collector is not None:  # more edits than the history keeps
                for n in range(4):
                    write(config_dir / "acme" / "app.json", json.dumps({"a": 21 + n}))
                    await wait_for(lambda n=n: len(collector.events) == 2 + n, timeout=10)
            await started(start(*serve_args(config_dir, port, *extra)))
            await page_wait(page, "window.clients[0].resyncs.length === 1")
            state = await client_state(page)
            resync = state["resyncs"][0]
            assert resync["reason"] == ("history_expired" if redis_url else "unknown_epoch")
            assert resync["manifest"] == {"app.json": resync["manifest"]["app.json"]}
            if collector is not None:
                assert resync["last_event_id"] == collector.events[-1].event_id
            # It goes on from the Resync's id: the next edit arrives.
            write(config_dir / "acme" / "app.json", '{"a": 99}')
            await page_wait(page, "window.clients[0].events.length === 2")
            assert len((await client_state(page))["events"]) == 2
    finally:
        if collector is not None:
            await collector.close()


@pytest.mark.gen_test(timeout=120)
async def test_dashboard_renders_the_stream(start, config_dir, tmp_path):
    server = start(*serve_args(config_dir, 0), CFGPUSH_ADMIN_TOKEN=ADMIN)
    base = f"http://127.0.0.1:{await started(server)}"
    requests = []
    out = tmp_path / "dashboard.png"
    async with shot.chromium(tmp_path / "profile") as context:
        context.on("request", lambda r: requests.append(r))
        shown = await shot.capture_dashboard(
            context,
            base,
            admin_token=ADMIN,
            tenant="acme",
            out=out,
            edits=[
                (config_dir / "acme" / "app.json", '{"a": 1, "banner": "hello"}'),
                (config_dir / "acme" / "deep" / "limits.toml", "rate = 5\n"),
            ],
        )
    headers = {r.url: r.headers for r in requests if "/events?" in r.url or "/api/v1/" in r.url}
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = {row["tenant"]: row for row in shown["tenants"]}
    assert rows["acme"]["clients"] == "2" and rows["acme"]["ws"] == "2" and rows["acme"]["sse"] == "1"
    assert rows["acme"]["converged"] == "2/2" and rows["globex"]["clients"] == "0"
    assert [(e["type"], e["path"]) for e in shown["events"]] == [
        ("created", "deep/limits.toml"),
        ("modified", "app.json"),
    ]
    assert shown["events"][1]["diff"].strip() == "+/banner"
    assert shown["convergence"] == f"2 of 2 clients on {shown['events'][0]['id']}"
    assert rows["acme"]["newest"] == shown["events"][0]["id"]
    assert shown["health"] == "healthy · ready" and shown["stream"] == "live (sse)"
    # The admin token travels in headers only, never in a URL.
    assert headers and all(ADMIN not in url for url in headers)
    assert all(h.get("authorization") == f"Bearer {ADMIN}" for h in headers.values())
    assert ADMIN not in server.text()


JWT_SECRET = "browser-test-secret-of-32-bytes-or-more"


@pytest.mark.settings(jwt_secret=JWT_SECRET, admin_token=ADMIN, heartbeat_interval=HEARTBEAT, heartbeat_timeout=2)
@pytest.mark.gen_test(timeout=90)
async def test_with_authentication_on(http_url, core, config_dir, tmp_path):
    """Subscribers need a JWT (cfgpush.js sends it as ?token=); the dashboard's stream is let
    in by the admin token in its Authorization header."""
    import jwt
    from playwright.async_api import expect

    token = jwt.encode({"tenant_id": "acme", "exp": int(time.time()) + 300}, JWT_SECRET, algorithm="HS256")
    async with shot.chromium(tmp_path / "profile") as context:
        app = await shot.open_app_page(context, http_url)
        await shot.start_client(app, "acme", {"token": token})
        await shot.start_client(app, "acme", {"backoffMin": 50, "connectTimeout": 2000})  # no token
        await page_wait(app, "window.clients[0].push.state === 'open'")
        dashboard = await context.new_page()
        await dashboard.goto(http_url + "/")
        await dashboard.fill("#token", ADMIN)
        await dashboard.click("#token-form button[type=submit]")
        await dashboard.locator('#tenants tbody tr[data-tenant="acme"]').click()
        await expect(dashboard.locator("#stream-status")).to_have_attribute("data-state", "open", timeout=WAIT_MS)
        write(config_dir / "acme" / "app.json", '{"a": 7}')
        await page_wait(app, "window.clients[0].events.length === 1")
        await expect(dashboard.locator("#events li.event")).to_have_count(1, timeout=WAIT_MS)
        assert await dashboard.locator("#events li.event .path").text_content() == "app.json"
        # Without a token: refused at every attempt (WebSocket and then SSE), never subscribed.
        await page_wait(app, "window.clients[1].statuses.filter(s => s.state === 'reconnecting').length >= 3")
        unauthorised = await client_state(app, 1)
        assert unauthorised["events"] == [] and "open" not in [s["state"] for s in unauthorised["statuses"]]
        assert sorted(c.transport for c in core.hub.connections("acme")) == ["sse", "ws"]


@pytest.fixture
def ten_thousand_tenants(config_dir):
    """10 000 tenants of one small file each, on disk before the server starts."""
    for n in range(10_000):
        folder = config_dir / f"t{n:05d}"
        folder.mkdir()
        (folder / "a.json").write_bytes(b"{}")


@pytest.mark.settings(admin_token=ADMIN, validate=("*.json",))
@pytest.mark.gen_test(timeout=120)
async def test_dashboard_pages_10000_tenants_and_shows_the_failure_view(
    ten_thousand_tenants, http_url, core, config_dir, tmp_path
):
    """issue #17.3: the list is paged by the server (50 rows whatever the count) with a search
    box; issue #16: the watched tenant's problems, the gate's refusal (file, pointer, reason,
    since when) and the clients that could not apply the newest event, cleared by a good save."""
    from playwright.async_api import expect

    async with shot.chromium(tmp_path / "profile") as context:
        app = await shot.open_app_page(context, http_url)
        await shot.start_client(app, "acme", {"failWith": "no such theme"})
        await shot.start_client(app, "acme")
        await page_wait(app, "window.clients.every((c) => c.push.state === 'open')")

        page = await context.new_page()
        await page.goto(http_url + "/")
        await expect(page.locator("body")).to_have_attribute("data-ready", "1", timeout=WAIT_MS)
        await page.fill("#token", ADMIN)
        await page.click("#token-form button[type=submit]")
        rows = page.locator("#tenants tbody tr")
        await expect(page.locator("#total")).to_contain_text("10002 tenants", timeout=WAIT_MS)
        await expect(rows).to_have_count(50)
        await expect(page.locator("#page-info")).to_have_text("1\u201350 of 10002")
        await page.click("#next-page")
        await expect(page.locator("#page-info")).to_have_text("51\u2013100 of 10002", timeout=WAIT_MS)
        await expect(rows.first).to_have_attribute("data-tenant", "t00048")  # acme, globex, t00000...
        await page.click("#prev-page")
        await expect(page.locator("#page-info")).to_have_text("1\u201350 of 10002", timeout=WAIT_MS)
        await page.fill("#search", "t0999")
        await expect(rows).to_have_count(10, timeout=WAIT_MS)
        await expect(rows.last).to_have_attribute("data-tenant", "t09999")
        await expect(page.locator("#pager")).to_be_hidden()
        await page.fill("#search", "t/")
        await expect(page.locator("#tenants-note")).to_contain_text("A-Z a-z 0-9", timeout=WAIT_MS)
        await page.fill("#search", "acme")
        await expect(rows).to_have_count(1, timeout=WAIT_MS)

        await rows.first.click()
        await expect(page.locator("#stream-status")).to_have_attribute("data-state", "open", timeout=WAIT_MS)
        target = config_dir / "acme" / "app.json"
        write(target, '{"a": 2}')
        await expect(page.locator("#failures li")).to_have_text(
            ["1 client: RangeError: no such theme"], timeout=WAIT_MS
        )
        await expect(page.locator("#convergence")).to_contain_text("1 failed")
        await expect(rows.first.locator(".problems")).to_have_text("1 failed", timeout=WAIT_MS)
        write(target, '{"a": ')
        invalid = page.locator("#invalid li")
        await expect(invalid).to_have_count(1, timeout=WAIT_MS)
        await expect(invalid.locator(".path")).to_have_text("app.json")
        await expect(invalid.locator(".reason")).to_contain_text("does not parse as JSON")
        await expect(invalid.locator(".since")).to_contain_text("ago")
        await expect(rows.first.locator(".problems")).to_have_text("1 failed · 1 refused", timeout=WAIT_MS)
        write(target, '{"a": 3}')  # good again: the refusal is cleared
        await expect(page.locator("#invalid-box")).to_be_hidden(timeout=WAIT_MS)
        await expect(page.locator("#events li.event")).to_have_count(2, timeout=WAIT_MS)


# -- configuration content (--serve-content, issue #14) ----------------------------------------------

CONTENT_PAGE = """async () => {
  const { CfgPush } = await import("/cfgpush.js");
  window.shown = [];
  const push = window.contentPush = new CfgPush(location.origin, { tenantId: "acme", content: true,
    onChange: (event, value) => {
      if (event.path === "ui/theme.json" && value.document) {
        document.body.dataset.color = value.document.color;
        window.shown.push({ color: value.document.color, fromPatch: value.content === null });
      }
    } });
  const theme = await push.file("ui/theme.json");
  document.body.dataset.color = theme.document.color;
}"""


@pytest.mark.settings(serve_content=("ui/*.json",))
@pytest.mark.gen_test(timeout=90)
async def test_a_page_shows_the_new_value_from_the_patch_without_a_request(http_url, core, config_dir, tmp_path):
    theme = {"color": "blue", "sizes": [1, 2.5, 1e21, 1e-7], "labels": {"\u20ac": "x", "\U0001f600": "y"}}
    (config_dir / "acme" / "ui").mkdir()
    write(config_dir / "acme" / "ui" / "theme.json", json.dumps(theme))
    await wait_for(lambda: "ui/theme.json" in (core.manifest("acme") or {}))
    async with shot.chromium(tmp_path / "profile") as context:
        page = await context.new_page()
        await page.goto(http_url + "/example.html")
        await page.evaluate(CONTENT_PAGE)
        await page_wait(page, "document.body.dataset.color === 'blue' && window.contentPush.state === 'open'")
        asked = dict(core.metrics.file_requests)
        assert asked == {"200": 1}  # the page's first load
        write(config_dir / "acme" / "ui" / "theme.json", json.dumps({**theme, "color": "red"}, indent=1))
        await page_wait(page, "document.body.dataset.color === 'red'")
        assert await page.evaluate("window.shown") == [{"color": "red", "fromPatch": True}]
        assert core.metrics.file_requests == asked  # the new value came with the event
        # Canonical JSON agrees with the server's to the byte (numbers, key order, escapes).
        from tornado_cfgpush.patching import canonical

        docs = [theme, {"n": [0.1, 100, 333333333.3333333, 5e-324, -0.0, 2**60], "s": '\u00e9\x1f\n"\\'}]
        for doc in docs:
            text = await page.evaluate("(d) => import('/cfgpush.js').then(m => m.canonicalJson(d))", doc)
            assert text.encode() == canonical(doc)
        # A change whose patch is over --max-patch-bytes comes without one: fetched, once.
        write(config_dir / "acme" / "ui" / "theme.json", json.dumps({"color": "green", "pad": "x" * 20_000}))
        await page_wait(page, "document.body.dataset.color === 'green'")
        assert (await page.evaluate("window.shown"))[-1] == {"color": "green", "fromPatch": False}
        assert core.metrics.file_requests == {"200": 2}


@pytest.mark.settings(serve_content=("ui/*.json",))
@pytest.mark.gen_test(timeout=90)
async def test_a_resync_refreshes_only_the_files_whose_checksum_changed(http_url, core, config_dir, tmp_path):
    (config_dir / "acme" / "ui").mkdir()
    for name in ("a", "b"):
        write(config_dir / "acme" / "ui" / f"{name}.json", json.dumps({"name": name}))
    await wait_for(lambda: {"ui/a.json", "ui/b.json"} <= set(core.manifest("acme") or {}))
    async with shot.chromium(tmp_path / "profile") as context:
        page = await context.new_page()
        await page.goto(http_url + "/example.html")
        await page.evaluate(
            """async () => {
              const { CfgPush } = await import("/cfgpush.js");
              window.resyncs = [];
              const push = window.contentPush = new CfgPush(location.origin, { tenantId: "acme", content: true,
                onResync: (resync, files) => { window.resyncs.push(files.changed); } });
              await push.file("ui/a.json");
              await push.file("ui/b.json");
              // a.json as if an older version were held: the Resync's manifest says it changed.
              push.files.set("ui/a.json", { checksum: "sha256:" + "0".repeat(64), content: "{}", document: {} });
            }"""
        )
        await page_wait(page, "window.contentPush.state === 'open'")
        assert core.metrics.file_requests == {"200": 2}
        await core.source_gap(["acme"], "test")
        await page_wait(page, "window.resyncs.length === 1")
        changed = (await page.evaluate("window.resyncs"))[0]
        assert list(changed) == ["ui/a.json"] and changed["ui/a.json"]["document"] == {"name": "a"}
        assert core.metrics.file_requests == {"200": 3}  # b.json, unchanged, was not asked for


@pytest.mark.settings(serve_content=("ui/*.yaml",))
@pytest.mark.gen_test(timeout=90)
async def test_a_page_holds_a_yaml_files_document_from_the_server_and_patches_it(http_url, core, config_dir, tmp_path):
    """A page cannot parse YAML: it gets the document from ?form=document on the first load,
    then applies the next save's patch to it with no request."""
    (config_dir / "acme" / "ui").mkdir()
    target = config_dir / "acme" / "ui" / "theme.yaml"
    write(target, "color: blue\nsizes: [1, 2.5]\nlabels: {a: x}\n")
    await wait_for(lambda: "ui/theme.yaml" in (core.manifest("acme") or {}))
    async with shot.chromium(tmp_path / "profile") as context:
        page = await context.new_page()
        await page.goto(http_url + "/example.html")
        await page.evaluate(CONTENT_PAGE.replace("ui/theme.json", "ui/theme.yaml"))
        await page_wait(page, "document.body.dataset.color === 'blue' && window.contentPush.state === 'open'")
        held = await page.evaluate("window.contentPush.files.get('ui/theme.yaml')")
        assert held["document"] == {"color": "blue", "sizes": [1, 2.5], "labels": {"a": "x"}}
        assert held["content"] == target.read_text()
        asked = dict(core.metrics.file_requests)
        assert asked == {"200": 2}  # the first load: the text and the document
        write(target, "color: red\nsizes: [1, 2.5]\nlabels: {a: x}\n")
        await page_wait(page, "document.body.dataset.color === 'red'")
        assert await page.evaluate("window.shown") == [{"color": "red", "fromPatch": True}]
        assert core.metrics.file_requests == asked  # the new value came with the event

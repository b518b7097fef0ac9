"""Debian's Caddy in front of a real ``cfgpush-serve``, with docs/deploy/Caddyfile as shipped (its
site address and upstream replaced, the test's certificate given), driven by headless Chromium:
WebSocket and SSE through it, and a client's forged X-Forwarded-For dropped on the way."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
from pathlib import Path

import pytest

from tornado_cfgpush.testing import LISTENING, need_program, wait_for
from tornado_cfgpush.testing.certs import TestCA

from .rawws import RawWebSocket
from .test_browser import client_state, free_port, page_wait, shot
from .test_nginx import _healthy

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "docs" / "deploy" / "Caddyfile"


def _caddyfile(cfgpush_port: int, caddy_port: int, http_port: int, certfile: Path, keyfile: Path) -> str:
    text = DEPLOY.read_text()
    for old, new in (
        ("cfgpush.example.com {", f"127.0.0.1:{caddy_port} {{\n\ttls {certfile} {keyfile}"),
        ("reverse_proxy 127.0.0.1:7945 {", f"reverse_proxy 127.0.0.1:{cfgpush_port} {{"),
    ):
        assert text.count(old) == 1, f"{DEPLOY} no longer has {old!r} once"
        text = text.replace(old, new)
    # No admin endpoint, no redirect server on port 80: nothing shared with the machine.
    return f"{{\n\tadmin off\n\tauto_https disable_redirects\n\thttp_port {http_port}\n}}\n\n{text}"


@pytest.fixture
def caddy(tmp_path):
    started: list[subprocess.Popen] = []

    def _start(caddyfile: str) -> subprocess.Popen:
        home = tmp_path / "caddy"
        home.mkdir()
        (home / "Caddyfile").write_text(caddyfile)
        env = {**os.environ, "HOME": str(home), "XDG_DATA_HOME": str(home), "XDG_CONFIG_HOME": str(home)}
        program = need_program("caddy")
        proc = subprocess.Popen(
            [program, "run", "--adapter", "caddyfile", "--config", str(home / "Caddyfile")],
            cwd=home,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started.append(proc)
        return proc

    yield _start
    for proc in started:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


@pytest.mark.gen_test(timeout=120)
async def test_browser_through_caddy_ws_sse_and_forwarded_for(start, caddy, config_dir, tmp_path):
    need_program("chromium")
    ca = TestCA.create(tmp_path / "pki")
    certfile, keyfile = tmp_path / "pki" / "cert.pem", tmp_path / "pki" / "key.pem"
    ca.issue(certfile, keyfile)
    cfgpush_port, caddy_port = free_port(), free_port()
    server = start(
        "--port", str(cfgpush_port), "--config-dir", str(config_dir), "--trusted-proxy", "127.0.0.1",
    )  # fmt: skip
    await server.wait_log(LISTENING)
    await server.wait_log(r"watching .* files")
    proc = caddy(_caddyfile(cfgpush_port, caddy_port, free_port(), certfile, keyfile))
    await wait_for(lambda: proc.poll() is None and _healthy(caddy_port, ca.cafile), 30, interval=0.1)

    async with shot.chromium(tmp_path / "profile", ["--ignore-certificate-errors"]) as context:
        page = await shot.open_app_page(context, f"https://127.0.0.1:{caddy_port}")
        await shot.start_client(page, "acme", {"transport": "ws"})
        await shot.start_client(page, "acme", {"transport": "sse"})
        await page_wait(page, "window.clients.every((c) => c.push.state === 'open')")
        (config_dir / "acme" / "app.json").write_text('{"a": 2}')
        await page_wait(page, "[0, 1].every((i) => window.clients[i].events.length === 1)")
        assert [(await client_state(page, i))["transport"] for i in (0, 1)] == ["ws", "sse"]

    # A client's own X-Forwarded-For does not get through Caddy to cfgpush.
    ws = await asyncio.wait_for(_through_caddy(caddy_port, ca), 30)
    ws.close()
    await server.wait_log(r"101 GET /ws \(127\.0\.0\.1\)")
    assert "6.6.6.6" not in server.text() and "Traceback" not in server.text()


async def _through_caddy(port: int, ca: TestCA):
    """A raw WebSocket upgrade over TLS to Caddy with a forged X-Forwarded-For."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ca.client_context(), server_hostname="localhost"
    )
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /ws?tenant_id=acme HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            "X-Forwarded-For: 6.6.6.6\r\n\r\n"
        ).encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return RawWebSocket(reader, writer, 101, head)

"""TLS in ``cfgpush-serve`` (--certfile/--keyfile): wss:// and https:// on one port, from the
``websockets`` client, the Python client, ``cfgpush-tail`` and Chromium; certificates rotated
without a restart, and a bad new pair refused while the old one stays.

Certificates come from a private test CA (tornado_cfgpush.testing.certs) made per test.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient

from tornado_cfgpush.client import ConfigChanged, subscribe
from tornado_cfgpush.proxy_protocol import v1_header, v2_header
from tornado_cfgpush.testing import ERROR_PREFIX, LISTENING, SSEClient, WebSocketClient, need_program, wait_for
from tornado_cfgpush.testing.certs import TestCA, peer_serial

TAIL = Path(sys.executable).with_name("cfgpush-tail")


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA.create(tmp_path / "pki")


def _pair(ca: TestCA, folder: Path) -> tuple[Path, Path, int]:
    folder.mkdir(parents=True, exist_ok=True)
    cert = ca.issue(folder / "cert.pem", folder / "key.pem")
    return folder / "cert.pem", folder / "key.pem", cert.serial_number


def _served_serial(port: int, cafile: Path) -> int:
    """The serial of the certificate a new handshake presents (verified against the test CA)."""
    context = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return peer_serial(tls.getpeercert(binary_form=True))


def _replace(path: Path, data: bytes) -> None:
    """As certificate managers do: a new file renamed over the old one."""
    fresh = path.with_suffix(".new")
    fresh.write_bytes(data)
    os.replace(fresh, path)


async def _start_tls(start, config_dir: Path, certfile: Path, keyfile: Path, *more: str):
    server = start(
        "--port",
        "0",
        "--config-dir",
        str(config_dir),
        "--certfile",
        str(certfile),
        "--keyfile",
        str(keyfile),
        "--tls-reload-interval",
        "0.2",
        *more,
    )
    found = await server.wait_log(LISTENING)
    assert "listening on https://" in found.string and "wss://" in found.string
    await server.wait_log(r"watching .* files")
    return server, int(found.group(1))


@pytest.mark.gen_test(timeout=120)
async def test_wss_and_https_on_one_port_then_rotation_and_a_bad_pair(start, config_dir, ca, tmp_path):
    import websockets.asyncio.client

    certfile, keyfile, first = _pair(ca, tmp_path / "live")
    server, port = await _start_tls(start, config_dir, certfile, keyfile)
    trust = ca.client_context()
    assert await asyncio.to_thread(_served_serial, port, ca.cafile) == first

    # The websockets client over wss://, our test client, SSE over https://, the Python client.
    other = await websockets.asyncio.client.connect(f"wss://localhost:{port}/ws?tenant_id=acme", ssl=trust)
    ws = await WebSocketClient.open(f"wss://localhost:{port}/ws", "acme", ssl_options=trust)
    sse = await SSEClient.open(f"https://localhost:{port}", "acme", ssl_options=trust)
    received: list[ConfigChanged] = []
    python_client = subscribe(f"https://localhost:{port}", "acme", ssl_context=trust)

    async def pump() -> None:
        async for event in python_client:
            if isinstance(event, ConfigChanged):
                received.append(event)

    pumping = asyncio.ensure_future(pump())
    http = AsyncHTTPClient(force_instance=True)
    try:
        assert "Welcome" in json.loads(await asyncio.wait_for(other.recv(), 10))
        await ws.expect("Welcome", timeout=10)
        await sse.expect("Welcome", timeout=10)
        await wait_for(lambda: python_client.state == "open", 15)
        health = await http.fetch(f"https://localhost:{port}/healthz", ssl_options=trust)
        assert health.code == 200
        expiry = ca.cert.not_valid_after_utc  # the leaf's is the CA's: both a day from now
        metrics = (await http.fetch(f"https://localhost:{port}/metrics", ssl_options=trust)).body.decode()
        served_expiry = float(metrics.split("\ncfgpush_tls_certificate_expiry_timestamp_seconds ")[1].split()[0])
        assert abs(served_expiry - expiry.timestamp()) < 600, metrics

        (config_dir / "acme" / "app.json").write_text('{"a": 2}')
        assert json.loads(await asyncio.wait_for(other.recv(), 15))["ConfigChanged"]["path"] == "app.json"
        assert (await ws.expect("ConfigChanged", timeout=15))["path"] == "app.json"
        assert (await sse.expect("ConfigChanged", timeout=15))["path"] == "app.json"
        await wait_for(lambda: len(received) == 1, 15)

        # Rotation: a new pair renamed into place is what new handshakes present; the open
        # connections carry on.
        staged = tmp_path / "staged"
        staged.mkdir()
        _, _, second = _pair(ca, staged)
        _replace(keyfile, (staged / "key.pem").read_bytes())
        _replace(certfile, (staged / "cert.pem").read_bytes())
        await server.wait_log(r"TLS certificate reloaded", timeout=30)
        assert await asyncio.to_thread(_served_serial, port, ca.cafile) == second
        metrics = (await http.fetch(f"https://localhost:{port}/metrics", ssl_options=trust)).body.decode()
        assert 'cfgpush_tls_reloads_total{result="loaded"} 1.0' in metrics
        assert 'cfgpush_tls_reloads_total{result="refused"} 0.0' in metrics

        # A bad pair (a certificate without its key): logged, the previous pair stays.
        _pair(ca, staged)
        _replace(certfile, (staged / "cert.pem").read_bytes())
        await server.wait_log(r"new TLS certificate not loaded, the previous one stays in use: .*does not match", 30)
        assert await asyncio.to_thread(_served_serial, port, ca.cafile) == second

        (config_dir / "acme" / "app.json").write_text('{"a": 3}')
        assert json.loads(await asyncio.wait_for(other.recv(), 15))["ConfigChanged"]["path"] == "app.json"
        assert (await ws.expect("ConfigChanged", timeout=15))["path"] == "app.json"
        assert (await sse.expect("ConfigChanged", timeout=15))["path"] == "app.json"
        await wait_for(lambda: len(received) == 2, 15)
        assert python_client.connections == 1  # never reconnected
        metrics = (await http.fetch(f"https://localhost:{port}/metrics", ssl_options=trust)).body.decode()
        assert 'cfgpush_tls_reloads_total{result="refused"} 1.0' in metrics
    finally:
        http.close()
        pumping.cancel()
        await asyncio.gather(pumping, return_exceptions=True)
        await python_client.aclose()
        await other.close()
        ws.close()
        sse.close()
    assert "Traceback" not in server.text()


@pytest.mark.gen_test(timeout=120)
async def test_cfgpush_tail_trusts_a_ca_file(start, config_dir, ca, tmp_path):
    certfile, keyfile, _ = _pair(ca, tmp_path / "live")
    server, port = await _start_tls(start, config_dir, certfile, keyfile)
    url = f"https://localhost:{port}"
    untrusting = subprocess.run(
        [str(TAIL), url, "--tenant", "acme", "--cafile", str(tmp_path / "missing.pem")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert untrusting.returncode == 2 and untrusting.stderr.startswith("cfgpush-tail: error: --cafile"), untrusting
    proc = subprocess.Popen(
        [str(TAIL), url, "--tenant", "acme", "--cafile", str(ca.cafile)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        await server.wait_log(r"101 GET /ws", 30)
        (config_dir / "acme" / "app.json").write_text('{"a": 2}')
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 30)
        assert json.loads(line)["ConfigChanged"]["path"] == "app.json"
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


@pytest.mark.gen_test(timeout=60)
async def test_a_bad_pair_at_start_is_one_line_and_status_2(start, config_dir, ca, tmp_path):
    certfile, _, _ = _pair(ca, tmp_path / "a")
    _, other_key, _ = _pair(ca, tmp_path / "b")
    server = start(
        "--port", "0", "--config-dir", str(config_dir), "--certfile", str(certfile), "--keyfile", str(other_key)
    )
    assert await server.wait_exit(60) == 2
    assert server.log[-1].startswith(ERROR_PREFIX + " --certfile/--keyfile:"), server.text()
    assert "does not match" in server.log[-1]
    missing = start("--port", "0", "--config-dir", str(config_dir), "--certfile", str(tmp_path / "nope.pem"))
    assert await missing.wait_exit(60) == 2
    assert missing.log == [f"{ERROR_PREFIX} --certfile: certfile {str(tmp_path / 'nope.pem')!r} is not a file"]
    keyless = start("--port", "0", "--config-dir", str(config_dir), "--keyfile", str(other_key))
    assert await keyless.wait_exit(60) == 2
    assert keyless.log == [f"{ERROR_PREFIX} --keyfile needs --certfile"]


@pytest.mark.gen_test(timeout=120)
async def test_chromium_page_over_https_receives_over_wss_and_sse(start, config_dir, ca, tmp_path):
    from .test_browser import client_state, page_wait, shot

    need_program("chromium")
    certfile, keyfile, _ = _pair(ca, tmp_path / "live")
    server, port = await _start_tls(start, config_dir, certfile, keyfile)
    # The test CA is not in Chromium's store: the page is an https:// one all the same, so
    # ws:// would be mixed content and only wss:// works.
    async with shot.chromium(tmp_path / "profile", ["--ignore-certificate-errors"]) as context:
        page = await shot.open_app_page(context, f"https://localhost:{port}")
        assert await page.evaluate("location.protocol") == "https:"
        await shot.start_client(page, "acme", {"transport": "ws"})
        await shot.start_client(page, "acme", {"transport": "sse"})
        await page_wait(page, "window.clients.every((c) => c.push.state === 'open')")
        (config_dir / "acme" / "app.json").write_text('{"a": 2}')
        await page_wait(page, "window.clients.every((c) => c.events.length === 1)")
        states = [await client_state(page, i) for i in (0, 1)]
        assert [s["transport"] for s in states] == ["ws", "sse"]
        assert {s["events"][0]["path"] for s in states} == {"app.json"}
    await server.wait_log(r"101 GET /ws")
    assert "Traceback" not in server.text()


def _tls_upgrade(port: int, cafile: Path, prefix: bytes, source: str = "127.0.0.1") -> bytes:
    """A PROXY header in clear (``prefix``), then TLS and a WebSocket upgrade: the status line."""
    context = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0)) as raw:
        raw.sendall(prefix)
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(
                b"GET /ws?tenant_id=acme HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            return tls.recv(4096).split(b"\r\n", 1)[0]


@pytest.mark.gen_test(timeout=90)
async def test_proxy_protocol_before_tls(start, config_dir, ca, tmp_path):
    # A TCP load balancer that passes TLS through sends its PROXY header in clear first.
    certfile, keyfile, _ = _pair(ca, tmp_path / "live")
    server, port = await _start_tls(
        start, config_dir, certfile, keyfile, "--trusted-proxy", "127.0.0.1", "--proxy-protocol"
    )
    here = ("127.0.0.1", port)
    for header, client in (
        (v1_header(("198.51.100.1", 40000), here), "198.51.100.1"),
        (v2_header(("2001:db8::7", 40001), here), "2001:db8::7"),
    ):
        assert await asyncio.to_thread(_tls_upgrade, port, ca.cafile, header) == b"HTTP/1.1 101 Switching Protocols"
        await server.wait_log(rf"101 GET /ws \({re.escape(client)}\)")
    # Another peer: TLS at once, no header, its own address.
    assert (
        await asyncio.to_thread(_tls_upgrade, port, ca.cafile, b"", "127.0.0.2") == b"HTTP/1.1 101 Switching Protocols"
    )
    await server.wait_log(r"101 GET /ws \(127\.0\.0\.2\)")
    assert "Traceback" not in server.text()

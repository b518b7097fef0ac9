"""Debian's nginx in front of a real ``cfgpush-serve``, with docs/deploy/nginx.conf as shipped
(its addresses, port and certificate paths replaced), driven by headless Chromium.

nginx runs as this user, with a private prefix and configuration, on a free port, in the
foreground. It reaches cfgpush from 127.0.0.2 (``proxy_bind``), which is the one
``--trusted-proxy``: so cfgpush's view of the browser's address (127.0.0.1) can only come from
nginx's X-Forwarded-For.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
from pathlib import Path

import pytest

from tornado_cfgpush.testing import LISTENING, need_program, wait_for
from tornado_cfgpush.testing.certs import TestCA

from .test_browser import client_state, free_port, page_wait, shot

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "docs" / "deploy" / "nginx.conf"
PROXY_ADDRESS = "127.0.0.2"


def _site(cfgpush_port: int, nginx_port: int, certfile: Path, keyfile: Path) -> str:
    """docs/deploy/nginx.conf with this test's addresses; each replacement must apply, so a
    change of the shipped file that the test does not follow fails here."""
    text = DEPLOY.read_text()
    for old, new in (
        ("server 127.0.0.1:7945;", f"server 127.0.0.1:{cfgpush_port};"),
        ("listen 443 ssl;", f"listen 127.0.0.1:{nginx_port} ssl;"),
        ("server_name cfgpush.example.com;", "server_name localhost 127.0.0.1;"),
        ("/etc/ssl/cfgpush/fullchain.pem", str(certfile)),
        ("/etc/ssl/cfgpush/privkey.pem", str(keyfile)),
        ("    proxy_http_version 1.1;\n", f"    proxy_http_version 1.1;\n    proxy_bind {PROXY_ADDRESS};\n"),
    ):
        assert text.count(old) == 1, f"{DEPLOY} no longer has {old!r} once"
        text = text.replace(old, new)
    return text


class Nginx:
    def __init__(self, prefix: Path, site: str):
        prefix.mkdir(parents=True)
        (prefix / "tmp").mkdir()
        (prefix / "cfgpush.conf").write_text(site)
        # As root, nginx's workers would switch to "nobody", who cannot enter pytest's folders.
        user = "user root;\n" if os.geteuid() == 0 else ""
        temp = "".join(
            f"    {kind}_temp_path {prefix}/tmp/{kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (prefix / "nginx.conf").write_text(
            f"{user}worker_processes 1;\npid {prefix}/nginx.pid;\nerror_log stderr notice;\n"
            "events { worker_connections 256; }\n"
            f"http {{\n    access_log {prefix}/access.log;\n{temp}    include {prefix}/cfgpush.conf;\n}}\n"
        )
        program = need_program("nginx")
        check = subprocess.run(
            [program, "-t", "-p", str(prefix), "-c", str(prefix / "nginx.conf")], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stderr
        self.log = open(prefix / "stderr.log", "w")
        self.proc = subprocess.Popen(
            [program, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", "daemon off;"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # nginx: fast shutdown
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.log.close()


def _healthy(port: int, cafile: Path) -> bool:
    context = ssl.create_default_context(cafile=str(cafile))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                return tls.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


@pytest.fixture
def nginx_started(tmp_path):
    started: list[Nginx] = []

    def _start(site: str) -> Nginx:
        server = Nginx(tmp_path / "nginx", site)
        started.append(server)
        return server

    yield _start
    for server in started:
        server.stop()


@pytest.mark.gen_test(timeout=180)
async def test_browser_through_nginx_ws_sse_client_address_and_a_restart(
    start, nginx_started, redis_server, config_dir, tmp_path
):
    need_program("chromium")
    ca = TestCA.create(tmp_path / "pki")
    certfile, keyfile = tmp_path / "pki" / "cert.pem", tmp_path / "pki" / "key.pem"
    ca.issue(certfile, keyfile)
    cfgpush_port, nginx_port = free_port(), free_port()
    flags = (
        "--port",
        str(cfgpush_port),
        "--config-dir",
        str(config_dir),
        "--broker",
        redis_server.url,
        "--trusted-proxy",
        PROXY_ADDRESS,
        "--max-connections-per-ip",
        "2",
        "--heartbeat-interval",
        "0.5",
        "--heartbeat-timeout",
        "2",
    )
    server = start(*flags)
    await server.wait_log(LISTENING)
    await server.wait_log(r"watching .* files")
    nginx = nginx_started(_site(cfgpush_port, nginx_port, certfile, keyfile))
    await wait_for(lambda: nginx.proc.poll() is None and _healthy(nginx_port, ca.cafile), 30, interval=0.1)

    async with shot.chromium(tmp_path / "profile", ["--ignore-certificate-errors"]) as context:
        page = await shot.open_app_page(context, f"https://127.0.0.1:{nginx_port}")
        await shot.start_client(page, "acme", {"transport": "ws"})
        await shot.start_client(page, "acme", {"transport": "sse"})
        await page_wait(page, "window.clients.every((c) => c.push.state === 'open')")
        # The browser's address, not nginx's, in the logs and in the per-address limit (2).
        await server.wait_log(r"101 GET /ws \(127\.0\.0\.1\)")
        third = await shot.start_client(page, "acme", {"transport": "ws"})
        await server.wait_log(r"refused /ws \(127\.0\.0\.1\): ip limit reached")
        await page.evaluate("(i) => window.clients[i].push.close()", third)
        assert f"({PROXY_ADDRESS})" not in server.text()

        (config_dir / "acme" / "app.json").write_text('{"a": 2}')
        await page_wait(page, "[0, 1].every((i) => window.clients[i].events.length === 1)")

        # SIGTERM: the page's clients see the close, reconnect through nginx to the node that
        # comes back on the same port (nginx answers 502 meanwhile), and resume from their last
        # event: no Resync, nothing twice, the next change once.
        server.proc.terminate()
        assert await server.wait_exit(30) == 0
        await page_wait(page, "[0, 1].every((i) => window.clients[i].statuses.some((s) => s.state === 'reconnecting'))")
        again = start(*flags)
        await again.wait_log(LISTENING)
        await page_wait(
            page,
            "[0, 1].every((i) => window.clients[i].statuses.filter((s) => s.state === 'open').length === 2)",
            30_000,
        )
        (config_dir / "acme" / "app.json").write_text('{"a": 3}')
        await page_wait(page, "[0, 1].every((i) => window.clients[i].events.length === 2)")
        for i, transport in ((0, "ws"), (1, "sse")):
            state = await client_state(page, i)
            ids = [e["event_id"] for e in state["events"]]
            assert state["transport"] == transport
            assert state["resyncs"] == [] and len(set(ids)) == 2, state
            assert [e["path"] for e in state["events"]] == ["app.json", "app.json"]
        await again.wait_log(r"101 GET /ws \(127\.0\.0\.1\)")
    assert "Traceback" not in server.text() + again.text()

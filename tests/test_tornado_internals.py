"""What cfgpush relies on of Tornado beyond its public API, each with a test that fails when
Tornado changes it (setup.cfg pins tornado>=6.6,<7; these ran on 6.6.1).

Private attributes still used, one test named for each:

* ``IOStream._read_buffer`` (handlers/ws.py): the bytes a client sent right behind its
  upgrade request, which the WebSocket's new owner must read first;
* ``HTTP1Connection._chunking_output`` (handlers/sse.py): whether Tornado frames the response
  body in chunks, which the SSE sink's prepared messages must match;
* ``RequestHandler._request_summary`` (handlers/base.py overrides it): how Tornado's own log
  lines name a request, which must not show a ``?token=``.

Replaced by public APIs, their behaviour checked here too: ``RequestHandler._reason``
(``write_error`` reads the ``HTTPError``), ``RequestHandler._check_cross_origin``
(``auth.cross_site_refused``), ``IOStream._write_buffer`` (``IOStream.writing()`` and
``max_write_buffer_size``; the SSE backlog bound is tested in tests/test_slow_client.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket

import pytest
from tornado import web
from tornado.http1connection import HTTP1Connection
from tornado.iostream import IOStream

from .rawws import RawWebSocket

UPGRADE = (
    b"GET /ws?tenant_id=acme HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def client_frame(payload: bytes) -> bytes:
    """A masked text frame, with a zero mask (the payload is sent as is)."""
    return bytes([0x81, 0x80 | len(payload)]) + b"\0\0\0\0" + payload


@pytest.mark.gen_test
async def test_tornado_private_read_buffer_holds_what_came_with_the_upgrade_request(server_port):
    sock = socket.socket()
    try:
        assert isinstance(IOStream(sock)._read_buffer, bytearray)
    finally:
        sock.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", server_port)
    writer.write(UPGRADE + client_frame(b'{"Ping": {"id": "behind the request"}}'))  # one write
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 101")
    ws = RawWebSocket(reader, writer, 101, head)
    assert "Welcome" in await ws.read_json()
    assert await ws.read_json() == {"Pong": {"id": "behind the request"}}
    ws.close()


@pytest.mark.parametrize("version", ["HTTP/1.1", "HTTP/1.0"])
@pytest.mark.gen_test
async def test_tornado_private_chunking_output_frames_sse_as_tornado_does(server_port, version):
    """The sink writes prepared messages past Tornado, chunked exactly when Tornado chose to
    chunk the response (HTTP/1.1) and bare when the close delimits it (HTTP/1.0)."""
    assert "_chunking_output" in HTTP1Connection.write_headers.__code__.co_names
    reader, writer = await asyncio.open_connection("127.0.0.1", server_port)
    writer.write(f"GET /events?tenant_id=acme {version}\r\nHost: x\r\n\r\n".encode())
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        welcome = b"event: Welcome\ndata: "
        if version == "HTTP/1.1":
            assert b"Transfer-Encoding: chunked" in head
            size = int(await asyncio.wait_for(reader.readuntil(b"\r\n"), 5), 16)
            chunk = await asyncio.wait_for(reader.readexactly(size + 2), 5)
            assert chunk.startswith(welcome) and chunk.endswith(b"\n\n\r\n")
        else:
            assert b"Transfer-Encoding" not in head
            message = await asyncio.wait_for(reader.readuntil(b"\n\n"), 5)
            assert message.startswith(welcome)
            assert json.loads(message[len(welcome) :])["tenant_id"] == "acme"
    finally:
        writer.transport.abort()


@pytest.mark.gen_test
async def test_tornado_private_request_summary_names_the_request_in_tornados_log_lines(server_port, caplog):
    """The test server logs requests with Tornado's default ``Application.log_request``, which
    names each request by ``handler._request_summary()``: ours leaves the token out."""
    assert callable(getattr(web.RequestHandler, "_request_summary", None))
    caplog.set_level(logging.INFO, logger="tornado.access")
    secret = "a-subscriber-token-9f8e7d"
    ws = await RawWebSocket.connect(server_port, f"tenant_id=acme&token={secret}")
    try:
        assert ws.status == 101
        lines = [r.getMessage() for r in caplog.records if r.name == "tornado.access"]
        assert any("GET /ws?tenant_id=acme&token=<redacted> (127.0.0.1)" in line for line in lines), lines
        assert secret not in caplog.text
    finally:
        ws.close()


@pytest.mark.parametrize(
    "method, path, status, reason",
    [
        ("PUT", "/ws?tenant_id=acme", 405, "Method Not Allowed"),  # Tornado's HTTPError(405), no message
        ("GET", "/no/such/path", 404, "no such endpoint"),  # ours, with a message for the client
    ],
)
@pytest.mark.gen_test
async def test_errors_answer_json_with_the_reason_without_tornados_private_reason(
    http_client, http_url, method, path, status, reason
):
    response = await http_client.fetch(
        http_url + path, method=method, raise_error=False, body=b"" if method == "PUT" else None
    )
    assert (response.code, json.loads(response.body)) == (status, {"error": reason})
    assert response.headers["Content-Type"] == "application/json; charset=UTF-8"

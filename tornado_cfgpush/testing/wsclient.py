"""A small test client over a real WebSocket: typed reads with timeouts, close codes."""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any
from urllib.parse import urlencode

from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect


class Closed(Exception):
    def __init__(self, code: int | None, reason: str | None):
        super().__init__(f"closed with {code} {reason!r}")
        self.code = code
        self.reason = reason


class WebSocketClient:
    def __init__(self, conn: WebSocketClientConnection):
        self.conn = conn

    @classmethod
    async def open(
        cls,
        ws_url: str,
        tenant_id: str | None = "acme",
        *,
        headers: dict | None = None,
        ping_interval: float | None = None,
        ssl_options: ssl.SSLContext | None = None,
        **query: Any,
    ) -> WebSocketClient:
        params = dict(query)
        if tenant_id is not None:
            params = {"tenant_id": tenant_id, **params}
        url = f"{ws_url}?{urlencode(params)}" if params else ws_url
        request = HTTPRequest(url, headers=headers or {}, ssl_options=ssl_options)
        conn = await asyncio.wait_for(websocket_connect(request, ping_interval=ping_interval), 5)
        return cls(conn)

    async def raw(self, timeout: float = 3.0) -> str | bytes:
        message = await asyncio.wait_for(self.conn.read_message(), timeout)
        if message is None:
            raise Closed(self.conn.close_code, self.conn.close_reason)
        return message

    async def next(self, timeout: float = 3.0) -> Any:
        return json.loads(await self.raw(timeout))

    async def expect(self, kind: str, timeout: float = 3.0) -> dict:
        """The next message, which must be ``{kind: {...}}``; returns the inside."""
        message = await self.next(timeout)
        assert isinstance(message, dict) and list(message) == [kind], f"expected {kind}, got {message!r}"
        return message[kind]

    async def expect_nothing(self, timeout: float = 0.3) -> None:
        try:
            message = await asyncio.wait_for(self.conn.read_message(), timeout)
        except TimeoutError:
            return
        raise AssertionError(f"expected no message, got {message!r}")

    async def closed(self, timeout: float = 5.0) -> Closed:
        """Read until the server closes; returns the close code and reason."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            message = await asyncio.wait_for(self.conn.read_message(), max(0.01, deadline - loop.time()))
            if message is None:
                return Closed(self.conn.close_code, self.conn.close_reason)

    async def send(self, message: Any) -> None:
        await self.conn.write_message(
            message if isinstance(message, (str, bytes)) else json.dumps(message), binary=isinstance(message, bytes)
        )

    def close(self) -> None:
        self.conn.close()

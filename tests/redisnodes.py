"""Nodes of a cluster in one test process: a ``CfgPush`` on a private redis-server with its own
HTTP server (the ``cluster`` fixture in tests/conftest.py builds them), and reading their events."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tornado.httpserver import HTTPServer

from tornado_cfgpush.app import CfgPush
from tornado_cfgpush.broker.redis import RedisBroker
from tornado_cfgpush.testing import WebSocketClient
from tornado_cfgpush.testing.redisserver import WAIT


class Node:
    def __init__(
        self,
        service: CfgPush,
        server: HTTPServer,
        port: int,
        clients: list,
        stop: Callable[[], Awaitable[None]] | None = None,
    ):
        self.service = service
        self.broker: RedisBroker = service.broker
        self.server = server
        self.port = port
        self._clients = clients
        self._stop = stop

    async def stop(self) -> None:
        """Stop this node now (the ``cluster`` fixture's), not at the teardown."""
        assert self._stop is not None, "a node made without a stop"
        await self._stop()

    async def connect(self, tenant_id: str = "acme", **query) -> WebSocketClient:
        client = await WebSocketClient.open(f"ws://127.0.0.1:{self.port}/ws", tenant_id, **query)
        self._clients.append(client)
        return client

    def publish(self, tenant_id: str = "acme", path: str = "app.json", **extra):
        return self.service.publish({"tenant_id": tenant_id, "change_type": "modified", "path": path, **extra}, "test")


async def read_ids(client: WebSocketClient, count: int, timeout: float = WAIT) -> list[str]:
    return [(await client.expect("ConfigChanged", timeout))["event_id"] for _ in range(count)]

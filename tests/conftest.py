"""Fixtures of this package's tests only. The running server, the clients, ``publish`` and
``wait_for`` come from the pytest plugin ``tornado_cfgpush.testing`` (loaded by the conftest.py
at the repository's root), which the plugin distributions' tests use too.
"""

from __future__ import annotations

import asyncio
import shutil
import sys

import pytest
import redis.asyncio as aioredis
from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port

from tornado_cfgpush.app import CfgPush, make_app
from tornado_cfgpush.broker.redis import RedisBroker
from tornado_cfgpush.plugins import get_plugin_manager
from tornado_cfgpush.testing import WebSocketClient

from .plugintools import Site
from .redisnodes import Node


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A folder on ``sys.path`` for distributions the test writes (``Site.add``)."""
    root = tmp_path / "site"
    root.mkdir()
    monkeypatch.syspath_prepend(str(root))
    before = set(sys.modules)
    yield Site(root)
    # Forget the modules imported from the folder, so no other test sees them.
    for name in set(sys.modules) - before:
        if str(root) in str(getattr(sys.modules[name], "__file__", "") or ""):
            del sys.modules[name]


@pytest.fixture
def admin(io_loop, redis_server):
    """A separate client, for what an operator (or a failure) does to the Redis."""
    client = aioredis.from_url(redis_server.url, decode_responses=True)
    yield client
    io_loop.run_sync(client.aclose)


@pytest.fixture
def cluster(io_loop, settings, redis_server, tmp_path):
    """``await cluster(url=None, shared=False, **broker_kwargs)`` -> a running ``Node``; all stopped
    at teardown. Each node watches its own copy of the configuration folder (made when it
    starts), or with ``shared`` the one folder itself."""
    services: list[CfgPush] = []
    servers: list[HTTPServer] = []
    clients: list[WebSocketClient] = []

    async def add_node(url: str | None = None, broker_class=RedisBroker, shared: bool = False, **broker_kwargs) -> Node:
        node_settings = settings
        if services and not shared:  # each node watches its own copy of the configuration folder
            copy = tmp_path / f"config-{len(services)}"
            shutil.copytree(settings.config_dir, copy)
            node_settings = settings.replace(config_dir=copy)
        node_settings = node_settings.replace(broker=url or redis_server.url)
        # The service builds its broker from the settings, as cfgpush-serve --broker does.
        service = CfgPush(node_settings, get_plugin_manager(load_entry_points=False))
        assert isinstance(service.broker, RedisBroker)
        if broker_class is not RedisBroker or broker_kwargs:
            service.broker = broker_class(
                service.hub.deliver,
                node_settings.broker,
                history_size=node_settings.history_size,
                history_ttl=node_settings.history_ttl,
                tenants=service.hub.tenants,
                on_gap=service._history_lost,
                **broker_kwargs,
            )
        services.append(service)  # stopped at teardown even if starting fails
        await service.start()
        await service.wait_started()
        sock, port = bind_unused_port()
        server = HTTPServer(make_app(service))
        server.add_sockets([sock])
        servers.append(server)

        async def stop() -> None:  # before the teardown, as a SIGTERM would
            server.stop()
            servers.remove(server)
            services.remove(service)
            await service.stop()
            await server.close_all_connections()

        return Node(service, server, port, clients, stop)

    yield add_node

    async def teardown():
        for client in clients:
            client.close()
        for server in servers:
            server.stop()
        outcomes = [await asyncio.gather(service.stop(), return_exceptions=True) for service in services]
        for server in servers:
            await server.close_all_connections()
        errors = [outcome[0] for outcome in outcomes if isinstance(outcome[0], BaseException)]
        if errors:
            raise errors[0]

    io_loop.run_sync(teardown, timeout=60)

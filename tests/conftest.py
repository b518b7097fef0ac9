"""Shared fixtures: a real server (pytest-tornado's ``http_server``) over real sockets and files.

``core`` is the running service (hub, broker, sources) on the test's IOLoop; ``app`` is its
Tornado application, which pytest-tornado's ``http_server`` serves on a free port.
Tests change the settings or plugins by overriding the ``settings`` / ``extra_plugins``
fixtures in their module.
"""
from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil

import pytest

from tornado_cfgpush.app import CfgPush, make_app
from tornado_cfgpush.plugins import get_plugin_manager
from tornado_cfgpush.settings import Settings

from .wsclient import Client

REQUIRE_SERVICES = os.environ.get("CFGPUSH_REQUIRE_SERVICES") == "1"


def need_program(name: str) -> str:
    """The path of ``name``; skip (or fail under CFGPUSH_REQUIRE_SERVICES=1) without it."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (apt-get install the package that provides it)"
        if REQUIRE_SERVICES:
            pytest.fail(message + "; CFGPUSH_REQUIRE_SERVICES=1 forbids skipping")
        pytest.skip(message)
    return path


def ticker_installed() -> bool:
    """Whether the example third-party plugin (plugins/cfgpush-ticker) is installed."""
    return importlib.util.find_spec("cfgpush_ticker") is not None


def need_ticker() -> None:
    if not ticker_installed():
        message = "the example plugin is not installed (pip install ./plugins/cfgpush-ticker)"
        if REQUIRE_SERVICES:
            pytest.fail(message + "; CFGPUSH_REQUIRE_SERVICES=1 forbids skipping")
        pytest.skip(message)


@pytest.fixture
def redis_server(io_loop):
    """A private redis-server on a free port, killed at teardown (tests/redisserver.py)."""
    from .redisserver import RedisServer

    server = RedisServer(need_program("redis-server"))
    try:
        io_loop.run_sync(server.start, timeout=60)
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def config_dir(tmp_path):
    root = tmp_path / "config"
    (root / "acme").mkdir(parents=True)
    (root / "globex").mkdir()
    (root / "acme" / "app.json").write_text('{"a": 1}')
    (root / "globex" / "app.json").write_text('{"g": 1}')
    return root


@pytest.fixture
def settings(request, config_dir):
    """Test settings; ``@pytest.mark.settings(name=value, ...)`` changes some for one test."""
    marker = request.node.get_closest_marker("settings")
    overrides = marker.kwargs if marker else {}
    return Settings(**{"config_dir": config_dir, "debounce_ms": 30, **overrides})


@pytest.fixture
def extra_plugins():
    """``(name, plugin)`` pairs registered besides the built-ins; override per module."""
    return []


@pytest.fixture
def core(io_loop, settings, extra_plugins):
    pm = get_plugin_manager(settings.disabled_plugins, load_entry_points=False, extra_plugins=extra_plugins)
    service = CfgPush(settings, pm)
    io_loop.run_sync(service.start)
    io_loop.run_sync(service.wait_started)
    yield service
    io_loop.run_sync(service.stop)


@pytest.fixture
def app(core):
    return make_app(core)


@pytest.fixture
def server_port(http_server, http_port):
    """The port of the running test server (``http_port`` alone starts no server)."""
    return http_port


@pytest.fixture
def ws_url(http_server, http_port):
    return f"ws://127.0.0.1:{http_port}/ws"


@pytest.fixture
def http_url(http_server, http_port):
    return f"http://127.0.0.1:{http_port}"


@pytest.fixture
def connect(ws_url):
    """``await connect("acme", **query)`` -> an open ``Client``; all closed at teardown."""
    clients: list[Client] = []

    async def _connect(tenant_id: str | None = "acme", **query) -> Client:
        client = await Client.open(ws_url, tenant_id, **query)
        clients.append(client)
        return client

    yield _connect
    for client in clients:
        client.close()


def publish(core, tenant_id="acme", path="app.json", **extra):
    """Publish a ``modified`` event through the service's one path (schema, broker, hub)."""
    return core.publish({"tenant_id": tenant_id, "change_type": "modified", "path": path, **extra}, "test")


async def wait_for(predicate, timeout: float = 5.0, interval: float = 0.01) -> None:
    """Wait until ``predicate()`` is true, or fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        await asyncio.sleep(interval)  # wait-ok: polling a condition under a deadline


@pytest.fixture
def start(tmp_path):
    """``start(*args, **env)`` -> a running ``cfgpush-serve`` (tests/serveproc.py) in
    ``tmp_path``; killed at teardown."""
    from .serveproc import Server, clean_env

    servers: list[Server] = []

    def _start(*args: str, **env: str) -> Server:
        server = Server(list(args), tmp_path, clean_env(**env))
        servers.append(server)
        return server

    yield _start
    for server in servers:
        server.kill()

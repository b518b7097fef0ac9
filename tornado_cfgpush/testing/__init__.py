"""``tornado_cfgpush.testing``: a pytest plugin for testing cfgpush and its plugins against a real
server, over real sockets (docs/plugins.md, "Testing a plugin").

Load it from the conftest.py at the root of your tests (it needs pytest-tornado, which the
``testing`` extra installs)::

    pytest_plugins = ["tornado_cfgpush.testing"]

Fixtures:

* ``core``: the running service (``app.CfgPush``: hub, broker, sources) on the test's IOLoop,
  started and stopped around the test; built from ``settings`` and ``plugin_manager``;
* ``app``: its Tornado application, which pytest-tornado's ``http_server`` serves on a free
  port (``server_port``, ``http_url``, ``ws_url``);
* ``settings``: ``Settings`` over ``config_dir`` (two tenants, ``acme`` and ``globex``, one file
  each) with a 30 ms debounce; ``@pytest.mark.settings(name=value, ...)`` changes some for one
  test; override the fixture for more;
* ``plugin_manager``: the built-in plugins and ``extra_plugins`` (``(name, plugin)`` pairs, none
  by default), no entry points; override it to load installed plugins as a user's server does;
* ``connect``: ``await connect("acme", **query)``, an open ``WebSocketClient``; ``connect_sse``:
  ``await connect_sse("acme", **query)``, an ``SSEClient``; both closed at teardown;
* ``start``: ``start(*args, **env)``, a real ``cfgpush-serve`` process (``ServeProcess``) in the
  test's ``tmp_path``, killed at teardown;
* ``redis_server``: a private ``redis-server`` on a free port (``RedisServer``), killed at
  teardown.

Helpers: ``publish(core, tenant_id, path, **fields)``, ``wait_for(predicate, timeout)``,
``need_program(name)``, ``unavailable(message)`` (skip, or fail under
``CFGPUSH_REQUIRE_SERVICES=1``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .redisserver import RedisServer
from .serveproc import COMMAND, ERROR_PREFIX, LISTENING, ServeProcess, clean_env
from .sseclient import SSEClient, SSEEvent
from .waiting import REQUIRE_SERVICES, need_program, unavailable, wait_for
from .wsclient import Closed, WebSocketClient

if TYPE_CHECKING:  # pragma: no cover
    from tornado.ioloop import IOLoop
    from tornado.web import Application

    from ..app import CfgPush
    from ..plugins import CfgPushPluginManager
    from ..settings import Settings

__all__ = [
    "COMMAND",
    "ERROR_PREFIX",
    "LISTENING",
    "REQUIRE_SERVICES",
    "Closed",
    "RedisServer",
    "SSEClient",
    "SSEEvent",
    "ServeProcess",
    "WebSocketClient",
    "clean_env",
    "need_program",
    "publish",
    "unavailable",
    "wait_for",
]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "settings(**overrides): Settings fields to change for this test (tornado_cfgpush.testing)"
    )


def publish(core: CfgPush, tenant_id: str = "acme", path: str = "app.json", **fields: Any) -> Awaitable[str]:
    """Publish a ``modified`` event through the service's one path (schema, broker, hub);
    await it for the event id."""
    return core.publish({"tenant_id": tenant_id, "change_type": "modified", "path": path, **fields}, "test")


# -- an in-process server -------------------------------------------------------------------------


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    root = tmp_path / "config"
    (root / "acme").mkdir(parents=True)
    (root / "globex").mkdir()
    (root / "acme" / "app.json").write_text('{"a": 1}')
    (root / "globex" / "app.json").write_text('{"g": 1}')
    return root


@pytest.fixture
def settings(request: pytest.FixtureRequest, config_dir: Path) -> Settings:
    """Test settings; ``@pytest.mark.settings(name=value, ...)`` changes some for one test."""
    from ..settings import Settings

    marker = request.node.get_closest_marker("settings")
    overrides = marker.kwargs if marker else {}
    return Settings(**{"config_dir": config_dir, "debounce_ms": 30, **overrides})


@pytest.fixture
def extra_plugins() -> list[tuple[str, object]]:
    """``(name, plugin)`` pairs registered besides the built-ins; override per module."""
    return []


@pytest.fixture
def plugin_manager(settings: Settings, extra_plugins: list[tuple[str, object]]) -> CfgPushPluginManager:
    """The built-ins (less ``settings.disabled_plugins``) and ``extra_plugins``; no entry points,
    so that what is installed beside cfgpush does not change the package's own tests."""
    from ..plugins import get_plugin_manager

    return get_plugin_manager(settings.disabled_plugins, load_entry_points=False, extra_plugins=extra_plugins)


@pytest.fixture
def core(io_loop: IOLoop, settings: Settings, plugin_manager: CfgPushPluginManager) -> Iterator[CfgPush]:
    """The running service: started (sources too) before the test, stopped after it."""
    from ..app import CfgPush

    service = CfgPush(settings, plugin_manager)
    io_loop.run_sync(service.start)
    io_loop.run_sync(service.wait_started)
    yield service
    io_loop.run_sync(service.stop)


@pytest.fixture
def app(core: CfgPush) -> Application:
    """What pytest-tornado's ``http_server`` serves."""
    from ..app import make_app

    return make_app(core)


@pytest.fixture
def server_port(http_server: Any, http_port: int) -> int:
    """The port of the running test server (``http_port`` alone starts no server)."""
    return http_port


@pytest.fixture
def ws_url(http_server: Any, http_port: int) -> str:
    return f"ws://127.0.0.1:{http_port}/ws"


@pytest.fixture
def http_url(http_server: Any, http_port: int) -> str:
    return f"http://127.0.0.1:{http_port}"


# -- clients ----------------------------------------------------------------------------------------


@pytest.fixture
def connect(ws_url: str) -> Iterator[Callable[..., Awaitable[WebSocketClient]]]:
    """``await connect("acme", **query)`` -> an open ``WebSocketClient``; all closed at teardown."""
    clients: list[WebSocketClient] = []

    async def _connect(tenant_id: str | None = "acme", **query: Any) -> WebSocketClient:
        client = await WebSocketClient.open(ws_url, tenant_id, **query)
        clients.append(client)
        return client

    yield _connect
    for client in clients:
        client.close()


@pytest.fixture
def connect_sse(http_url: str) -> Iterator[Callable[..., Awaitable[SSEClient]]]:
    """``await connect_sse("acme", **query)`` -> an ``SSEClient`` reading ``/events``; all closed
    at teardown."""
    streams: list[SSEClient] = []

    async def _open(tenant_id: str = "acme", **kwargs: Any) -> SSEClient:
        stream = await SSEClient.open(http_url, tenant_id, **kwargs)
        streams.append(stream)
        return stream

    yield _open
    for stream in streams:
        stream.close()


# -- processes ---------------------------------------------------------------------------------------


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    """``start(*args, **env)`` -> a running ``cfgpush-serve`` in ``tmp_path``, its environment
    without any ``CFGPUSH_*`` variable but ``env``; killed at teardown."""
    servers: list[ServeProcess] = []

    def _start(*args: str, **env: str) -> ServeProcess:
        server = ServeProcess(list(args), tmp_path, clean_env(**env))
        servers.append(server)
        return server

    yield _start
    for server in servers:
        server.kill()


@pytest.fixture
def redis_server(io_loop: IOLoop) -> Iterator[RedisServer]:
    """A private redis-server on a free port, killed at teardown (its data in a temporary folder)."""
    server = RedisServer(need_program("redis-server"))
    try:
        io_loop.run_sync(server.start, timeout=60)
        yield server
    finally:
        server.cleanup()

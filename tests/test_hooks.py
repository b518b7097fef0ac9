"""The hooks ``cfgpush_add_options`` and ``cfgpush_register_routes`` (issue 8).

In-process plugins through ``load_configuration`` (the CLI's merge) and through the real
server; an installed distribution through ``cfgpush-serve`` in a subprocess.
"""

from __future__ import annotations

import json

import pytest
from tornado import web

from tornado_cfgpush import hookimpl
from tornado_cfgpush.cli import UsageError, load_configuration
from tornado_cfgpush.plugins import PluginError, describe_plugins, get_plugin_manager
from tornado_cfgpush.settings import Settings

from .clihelpers import assert_one_error_line, run_cli


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise ValueError(f"must be positive, not {value}")
    return value


class OptionsPlugin:
    """Brings flags of every kind argparse has."""

    @hookimpl
    def cfgpush_add_options(self, parser):
        group = parser.add_argument_group("demo plugin")
        group.add_argument("--demo-level", dest="demo_level", type=_positive, default=3)
        group.add_argument("--demo-name", dest="demo_name", default="plain")
        group.add_argument("--demo-on", dest="demo_on", action="store_true")
        group.add_argument("--demo-tag", dest="demo_tags", action="append")
        group.add_argument("--demo-api-token", dest="demo_api_token")


PLUGIN = [("demo", OptionsPlugin())]


def load(argv, environ=None):
    return load_configuration(argv, environ or {}, extra_plugins=PLUGIN)


def test_plugin_options_default_into_settings_extra():
    settings, pm, _, origins, options = load([])
    demo = {k: v for k, v in settings.extra.items() if k.startswith("demo_")}  # installed plugins add theirs
    assert demo == {"demo_level": 3, "demo_name": "plain", "demo_on": False, "demo_tags": None, "demo_api_token": None}
    assert [o.flag for o in options if o.flag.startswith("--demo-")] == [
        "--demo-level",
        "--demo-name",
        "--demo-on",
        "--demo-tag",
        "--demo-api-token",
    ]
    assert origins["demo_level"] == "default"
    assert "cfgpush_add_options" in {h for e in describe_plugins(pm) if e["name"] == "demo" for h in e["hooks"]}


def test_plugin_options_merge_flag_environment_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('demo-level = 7\ndemo-name = "from-file"\ndemo-on = true\ndemo-tag = ["a", "b"]\n')
    environ = {"CFGPUSH_CONFIG": str(path), "CFGPUSH_DEMO_NAME": "from-env"}
    settings, _, _, origins, _ = load(["--demo-level", "9"], environ)
    assert settings.extra["demo_level"] == 9
    assert settings.extra["demo_name"] == "from-env"
    assert settings.extra["demo_on"] is True
    assert settings.extra["demo_tags"] == ["a", "b"]
    assert (origins["demo_level"], origins["demo_name"], origins["demo_on"]) == (
        "--demo-level",
        "CFGPUSH_DEMO_NAME",
        f"{path}: demo-on",
    )
    settings, *_ = load([], {"CFGPUSH_DEMO_ON": "false", "CFGPUSH_DEMO_TAG": "x,y"})
    assert (settings.extra["demo_on"], settings.extra["demo_tags"]) == (False, ["x", "y"])


@pytest.mark.parametrize(
    "argv, environ, message",
    [
        (["--demo-level", "0"], {}, "--demo-level"),
        ([], {"CFGPUSH_DEMO_LEVEL": "-1"}, "CFGPUSH_DEMO_LEVEL: must be positive, not -1"),
        ([], {"CFGPUSH_DEMO_ON": "maybe"}, "CFGPUSH_DEMO_ON: expected true or false, not 'maybe'"),
    ],
)
def test_bad_plugin_option_is_a_usage_error(argv, environ, message):
    with pytest.raises(UsageError, match=message):
        load(argv, environ)


def test_file_key_of_a_plugin_option_is_known_only_with_the_plugin(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text("demo-level = 2\n")
    assert load(["--config", str(path)])[0].extra["demo_level"] == 2
    with pytest.raises(UsageError, match="unknown key 'demo-level'"):
        load_configuration(["--config", str(path)], {})


def test_clashing_option_is_a_plugin_error():
    class Clash:
        @hookimpl
        def cfgpush_add_options(self, parser):
            parser.add_argument("--port")

    with pytest.raises(PluginError, match="cfgpush_add_options failed: ArgumentError: argument --port"):
        load_configuration([], {}, extra_plugins=[("clash", Clash())])


def test_secret_plugin_option_is_redacted_by_print_config(tmp_path, site):
    site.add(
        "cfgpush-test-opts",
        {"opts": "cfgpush_test_opts"},
        {
            "cfgpush_test_opts": """\
from tornado_cfgpush import hookimpl

@hookimpl
def cfgpush_add_options(parser):
    parser.add_argument("--opts-api-token", dest="opts_api_token")
    parser.add_argument("--opts-dsn", dest="opts_dsn")
    parser.add_argument("--opts-size", dest="opts_size", type=int, default=5)
"""
        },
    )
    env = {"PYTHONPATH": str(site.root), "CFGPUSH_OPTS_API_TOKEN": "tok-very-secret"}
    from tornado_cfgpush.testing import clean_env

    result = run_cli(
        "--print-config", "--opts-dsn", "host=db user=app password=pw-secret", cwd=tmp_path, env=clean_env(**env)
    )
    assert result.returncode == 0, result.stderr
    assert "tok-very-secret" not in result.stdout and "pw-secret" not in result.stdout
    assert 'opts-api-token = "<redacted>"  # CFGPUSH_OPTS_API_TOKEN' in result.stdout
    assert 'opts-dsn = "host=db user=app password=<redacted>"  # --opts-dsn' in result.stdout
    assert "opts-size = 5  # default" in result.stdout
    listed = {e["name"]: e for e in json.loads(run_cli("--plugins", cwd=tmp_path, env=clean_env(**env)).stdout)}
    assert listed["opts"]["hooks"] == ["cfgpush_add_options"]
    result = run_cli("--opts-size", "many", "--print-config", cwd=tmp_path, env=clean_env(**env))
    assert_one_error_line(result, "argument --opts-size: invalid int value: 'many'")


# -- cfgpush_register_routes, through the real server --------------------------------------------


class EchoHandler(web.RequestHandler):
    def initialize(self, greeting: str) -> None:
        self.greeting = greeting

    def get(self, name: str) -> None:
        core = self.application.cfgpush
        self.finish({"greeting": self.greeting, "name": name, "sources": [s.name for s in core.sources]})


class ShadowHandler(web.RequestHandler):
    def get(self) -> None:
        self.finish("taken over")


class RoutesPlugin:
    def __init__(self) -> None:
        self.settings = None

    @hookimpl
    def cfgpush_register_routes(self, settings):
        self.settings = settings
        return [
            (r"/demo/hello/([a-z]+)", EchoHandler, {"greeting": "hi"}),
            (r"/healthz", ShadowHandler),
            web.url(r"/demo/plain", ShadowHandler),
        ]


@pytest.fixture
def routes_plugin():
    return RoutesPlugin()


@pytest.fixture
def extra_plugins(routes_plugin):
    return [("routes", routes_plugin)]


@pytest.mark.gen_test(timeout=30)
async def test_registered_routes_are_served_after_the_builtin_ones(http_client, http_url, core, routes_plugin):
    assert routes_plugin.settings is core.settings
    response = await http_client.fetch(f"{http_url}/demo/hello/world")
    assert json.loads(response.body) == {"greeting": "hi", "name": "world", "sources": ["filesystem"]}
    assert (await http_client.fetch(f"{http_url}/demo/plain")).body == b"taken over"
    # A built-in path stays built-in.
    assert json.loads((await http_client.fetch(f"{http_url}/healthz")).body) == {"status": "ok"}
    missing = await http_client.fetch(f"{http_url}/demo/hello/UPPER", raise_error=False)
    assert missing.code == 404


def test_plugin_without_routes_adds_none():
    pm = get_plugin_manager(load_entry_points=False)
    assert pm.hook.cfgpush_register_routes(settings=Settings()) == []

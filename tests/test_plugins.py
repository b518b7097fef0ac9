"""The plugin contract (docs/plugins.md): loading, blocking, failures by name, and sources at run time.

Entry-point cases use real distributions: a ``<name>-1.0.dist-info`` folder and its module in a
folder put on ``sys.path``, found by ``importlib.metadata`` exactly like an installed plugin.
Run-time cases register an in-process plugin through the ``extra_plugins`` fixture and talk to
the real server over WebSockets.
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import logging
import re
import sys
import time
from importlib import metadata
from pathlib import Path

import pytest
from marshmallow import ValidationError

from tornado_cfgpush import PROJECT_NAME, hookimpl, hookspecs
from tornado_cfgpush.plugins import BUILTIN_PLUGINS, PluginError, describe_plugins, get_plugin_manager
from tornado_cfgpush.settings import Settings
from tornado_cfgpush.sources import filesystem
from tornado_cfgpush.testing import wait_for

from .plugintools import need_ticker

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


# -- real distributions on sys.path ---------------------------------------------------------------

GOOD_PLUGIN = """\
from tornado_cfgpush import hookimpl

@hookimpl
def cfgpush_register_sources(settings):
    return []
"""


# -- loading and blocking -------------------------------------------------------------------------


def test_builtin_filesystem_is_registered(config_dir):
    pm = get_plugin_manager(load_entry_points=False)
    assert pm.get_plugin("filesystem") is filesystem
    assert pm.origins["filesystem"][0] == "tornado_cfgpush"
    listed = {entry["name"]: entry for entry in describe_plugins(pm)}
    assert listed["filesystem"]["hooks"] == ["cfgpush_register_sources"]
    settings = Settings(config_dir=config_dir, debounce_ms=70)
    sources = [s for found in pm.hook.cfgpush_register_sources(settings=settings) for s in found]
    assert [(s.name, s.config_dir, s.debounce) for s in sources] == [("filesystem", config_dir, 0.07)]


def test_disabled_builtin_is_blocked():
    pm = get_plugin_manager(["filesystem"], load_entry_points=False)
    assert pm.is_blocked("filesystem")
    assert not pm.has_plugin("filesystem")
    assert "filesystem" not in {entry["name"] for entry in describe_plugins(pm)}
    assert pm.hook.cfgpush_register_sources(settings=Settings()) == []


def test_builtin_is_blocked_before_it_is_imported(monkeypatch):
    monkeypatch.setitem(BUILTIN_PLUGINS, "brokenbuiltin", "cfgpush_test_no_such_module")
    pm = get_plugin_manager(["brokenbuiltin"], load_entry_points=False)
    assert not pm.has_plugin("brokenbuiltin")
    with pytest.raises(PluginError) as info:
        get_plugin_manager(load_entry_points=False)
    assert "'brokenbuiltin'" in str(info.value)
    assert "cfgpush_test_no_such_module" in str(info.value)


def test_entry_point_is_blocked_before_it_is_imported(site):
    site.add(
        "cfgpush-test-explosive",
        {"explosive": "cfgpush_test_explosive"},
        {"cfgpush_test_explosive": 'raise RuntimeError("imported although disabled")\n'},
    )
    pm = get_plugin_manager(["explosive"])
    assert not pm.has_plugin("explosive")
    assert "cfgpush_test_explosive" not in sys.modules


def test_entry_point_whose_import_fails_is_named(site):
    site.add(
        "cfgpush-test-explosive",
        {"explosive": "cfgpush_test_explosive"},
        {"cfgpush_test_explosive": 'raise RuntimeError("no database driver")\n'},
    )
    with pytest.raises(PluginError) as info:
        get_plugin_manager()
    message = str(info.value)
    assert "'explosive'" in message
    assert "cfgpush-test-explosive 1.0" in message
    assert "RuntimeError: no database driver" in message


def test_entry_point_to_a_missing_module_is_named(site):
    site.add("cfgpush-test-ghost", {"ghost": "cfgpush_test_not_there"})
    with pytest.raises(PluginError) as info:
        get_plugin_manager()
    assert "'ghost'" in str(info.value)
    assert "ModuleNotFoundError" in str(info.value)


def test_entry_point_is_loaded_with_its_distribution(site):
    site.add("cfgpush-test-good", {"good": "cfgpush_test_good"}, {"cfgpush_test_good": GOOD_PLUGIN})
    pm = get_plugin_manager()
    assert pm.get_plugin("good") is sys.modules["cfgpush_test_good"]
    listed = {entry["name"]: entry for entry in describe_plugins(pm)}
    assert listed["good"] == {
        "name": "good",
        "distribution": "cfgpush-test-good",
        "version": "1.0",
        "hooks": ["cfgpush_register_sources"],
    }


def test_entry_point_name_clash_is_refused(site):
    site.add("cfgpush-test-one", {"twin": "cfgpush_test_one"}, {"cfgpush_test_one": GOOD_PLUGIN})
    site.add("cfgpush-test-two", {"twin": "cfgpush_test_two"}, {"cfgpush_test_two": GOOD_PLUGIN})
    with pytest.raises(PluginError) as info:
        get_plugin_manager()
    assert "'twin'" in str(info.value)
    assert "already taken" in str(info.value)


def test_entry_point_may_not_take_a_builtin_name(site):
    site.add("cfgpush-test-impostor", {"filesystem": "cfgpush_test_impostor"}, {"cfgpush_test_impostor": GOOD_PLUGIN})
    with pytest.raises(PluginError) as info:
        get_plugin_manager()
    assert "'filesystem'" in str(info.value)
    assert "cfgpush-test-impostor" in str(info.value)
    assert "already taken" in str(info.value)


def test_one_distribution_seen_twice_on_sys_path_is_loaded_once(site, monkeypatch):
    # A build's *.egg-info in the working folder and the installed copy: the same plugin,
    # not a clash.
    site.add("cfgpush-test-twice", {"twice": "cfgpush_test_twice"}, {"cfgpush_test_twice": GOOD_PLUGIN})
    site.add("cfgpush-test-twice", {"twice": "cfgpush_test_twice"}, folder="again")
    monkeypatch.syspath_prepend(str(site.root / "again"))
    pm = get_plugin_manager()
    assert pm.has_plugin("twice")


def test_plugin_with_an_unknown_hook_is_named(site):
    site.add(
        "cfgpush-test-nope",
        {"nope": "cfgpush_test_nope"},
        {
            "cfgpush_test_nope": """\
from tornado_cfgpush import hookimpl

@hookimpl
def cfgpush_nope(settings):
    return None
"""
        },
    )
    with pytest.raises(PluginError) as info:
        get_plugin_manager()
    assert "'nope'" in str(info.value)
    assert "cfgpush_nope" in str(info.value)


def test_plugin_with_wrong_hook_arguments_is_named(site):
    site.add(
        "cfgpush-test-typo",
        {"typo": "cfgpush_test_typo"},
        {
            "cfgpush_test_typo": """\
from tornado_cfgpush import hookimpl

@hookimpl
def cfgpush_register_sources(config):
    return []
"""
        },
    )
    with pytest.raises(PluginError) as info:
        get_plugin_manager()
    assert "'typo'" in str(info.value)
    assert "config" in str(info.value)


def test_installed_ticker_entry_point_is_loaded(monkeypatch):
    need_ticker()
    import cfgpush_ticker

    pm = get_plugin_manager()
    assert pm.get_plugin("ticker") is cfgpush_ticker
    assert pm.origins["ticker"] == ("cfgpush-ticker", metadata.version("cfgpush-ticker"))
    monkeypatch.setenv("CFGPUSH_TICKER_TENANT", "acme")
    monkeypatch.setenv("CFGPUSH_TICKER_INTERVAL", "0.5")
    sources = [s for found in pm.hook.cfgpush_register_sources(settings=Settings()) for s in found]
    ticker = next(s for s in sources if s.name == "ticker")
    assert (ticker.tenant_id, ticker.interval) == ("acme", 0.5)
    monkeypatch.setenv("CFGPUSH_TICKER_INTERVAL", "soon")
    with pytest.raises(ValueError, match="CFGPUSH_TICKER_INTERVAL"):
        pm.hook.cfgpush_register_sources(settings=Settings())
    assert not get_plugin_manager(["ticker"]).has_plugin("ticker")


# -- sources at run time, through the real server ---------------------------------------------------

VALID = {"tenant_id": "acme", "change_type": "modified", "path": "app.json"}


class ScriptedSource:
    """Emits what the test tells it to."""

    name = "scripted"

    def __init__(self) -> None:
        self.emit = None
        self.started = asyncio.Event()

    async def run(self, emit) -> None:
        self.emit = emit
        self.started.set()
        await asyncio.get_running_loop().create_future()  # until cancelled at shutdown


class CrashingSource:
    """Raises on every run once armed; remembers when each run began."""

    name = "crasher"

    def __init__(self) -> None:
        self.armed = asyncio.Event()
        self.runs: list[float] = []
        self.serves = ["crash-tenant"]

    def tenants(self) -> list[str]:
        """The tenants whose clients must resynchronise when it restarts."""
        return self.serves

    async def run(self, emit) -> None:
        await self.armed.wait()
        self.runs.append(time.monotonic())
        raise RuntimeError(f"boom #{len(self.runs)}")


class FinishingSource:
    """Has nothing to do: its run returns at once."""

    name = "finisher"

    def __init__(self) -> None:
        self.runs = 0

    async def run(self, emit) -> None:
        self.runs += 1


class InProcessPlugin:
    def __init__(self) -> None:
        self.scripted = ScriptedSource()
        self.crasher = CrashingSource()
        self.finisher = FinishingSource()
        self.settings = None

    @hookimpl
    def cfgpush_register_sources(self, settings):
        self.settings = settings
        return [self.scripted, self.crasher, self.finisher]


@pytest.fixture
def plugin():
    return InProcessPlugin()


@pytest.fixture
def extra_plugins(plugin):
    return [("inprocess", plugin)]


@pytest.fixture(autouse=True)
def logs(caplog):
    """Capture cfgpush's INFO records from the start, fixtures' set-up included."""
    caplog.set_level(logging.INFO, logger="cfgpush")
    return caplog


def records(caplog, logger: str = "cfgpush.sources") -> list[logging.LogRecord]:
    return [r for r in caplog.get_records("setup") + caplog.records if r.name == logger]


@pytest.mark.gen_test(timeout=30)
async def test_plugin_sources_run_beside_the_builtin(core, plugin):
    assert plugin.settings is core.settings
    assert [s.name for s in core.sources] == ["scripted", "crasher", "finisher", "filesystem"]
    assert "scripted" in core.runner.running


@pytest.mark.gen_test(timeout=30)
async def test_emit_returns_the_event_id_and_the_client_receives_it(connect, plugin):
    client = await connect("acme")
    await client.expect("Welcome")
    event_id = await plugin.scripted.emit(dict(VALID, meta={"by": "test"}))
    event = await client.expect("ConfigChanged")
    assert event["event_id"] == event_id
    assert (event["tenant_id"], event["change_type"], event["path"]) == ("acme", "modified", "app.json")
    assert event["source"] == "scripted"
    assert event["meta"] == {"by": "test"}


@pytest.mark.gen_test(timeout=30)
async def test_invalid_payload_is_refused_counted_logged_and_never_delivered(connect, core, plugin, logs):
    client = await connect("acme")
    await client.expect("Welcome")
    with pytest.raises(ValidationError) as info:
        await plugin.scripted.emit({"tenant_id": "acme", "change_type": "exploded", "path": "/etc/passwd"})
    assert set(info.value.messages) == {"change_type", "path"}
    with pytest.raises(ValidationError) as info:
        await plugin.scripted.emit(dict(VALID, tenant_id="../globex"))
    assert set(info.value.messages) == {"tenant_id"}
    assert core.runner.rejected["scripted"] == 2

    refused = [r.getMessage() for r in records(logs) if "invalid event refused" in r.getMessage()]
    assert len(refused) == 2
    assert "scripted" in refused[0]
    assert "change_type: must be one of" in refused[0]
    assert "path: path must be relative" in refused[0]
    assert "tenant_id: tenant_id must start with a letter or digit" in refused[1]

    # The next event is the first the client sees, and the first the broker numbered.
    event_id = await plugin.scripted.emit(VALID)
    event = await client.expect("ConfigChanged")
    assert event["event_id"] == event_id
    assert event_id.endswith("-1")
    await client.expect_nothing()


@pytest.mark.gen_test(timeout=60)
async def test_crashing_source_is_restarted_with_backoff_and_harms_no_one(connect, core, plugin, config_dir, logs):
    core.runner.backoff_initial, core.runner.backoff_max = 0.05, 0.4
    client = await connect("acme")
    await client.expect("Welcome")
    plugin.crasher.armed.set()
    await wait_for(lambda: len(plugin.crasher.runs) >= 5, timeout=20)

    # Another source keeps emitting, the built-in one too, and the server keeps serving.
    event_id = await plugin.scripted.emit(VALID)
    assert (await client.expect("ConfigChanged"))["event_id"] == event_id
    (config_dir / "acme" / "app.json").write_text('{"a": 2}')
    event = await client.expect("ConfigChanged", timeout=10)
    assert (event["source"], event["path"]) == ("filesystem", "app.json")
    other = await connect("globex")
    assert (await other.expect("Welcome"))["tenant_id"] == "globex"
    assert {"scripted", "filesystem"} <= core.runner.running

    # Backoff: run k+1 starts at least half of min(initial * 2**k, max) after run k.
    runs = plugin.crasher.runs[:5]
    for k, (before, after) in enumerate(itertools.pairwise(runs)):
        least = min(0.05 * 2**k, 0.4) / 2
        assert after - before >= least - 0.002, f"restart {k + 1} came after {after - before:.3f} s"
    assert core.runner.restarts["crasher"] >= 4

    crashes = [r for r in records(logs) if r.getMessage().startswith("source crasher crashed")]
    assert len(crashes) >= 4
    assert crashes[0].levelno == logging.ERROR
    assert str(crashes[0].exc_info[1]) == "boom #1"


@pytest.mark.gen_test(timeout=30)
async def test_restarted_source_makes_its_tenants_clients_resync(connect, core, plugin):
    core.runner.backoff_initial, core.runner.backoff_max = 0.05, 0.05
    plugin.crasher.serves = ["acme"]
    acme = await connect("acme")
    globex = await connect("globex")
    await acme.expect("Welcome")
    await globex.expect("Welcome")
    newest = await plugin.scripted.emit(VALID)
    assert (await acme.expect("ConfigChanged"))["event_id"] == newest
    plugin.crasher.armed.set()
    resync = await acme.expect("Resync", timeout=10)
    assert (resync["reason"], resync["last_event_id"]) == ("source_gap", newest)
    assert "app.json" in resync["manifest"]  # the filesystem source lists the tenant's files
    await globex.expect_nothing(0.3)


@pytest.mark.gen_test(timeout=30)
async def test_emit_gap_resyncs_the_named_tenants_only(connect, core, plugin):
    acme = await connect("acme")
    globex = await connect("globex")
    await acme.expect("Welcome")
    await globex.expect("Welcome")
    await plugin.scripted.emit.gap(["globex"])
    resync = await globex.expect("Resync")
    assert (resync["tenant_id"], resync["reason"], resync["last_event_id"]) == ("globex", "source_gap", None)
    await acme.expect_nothing(0.3)
    await plugin.scripted.emit.gap()  # None: every tenant
    assert (await acme.expect("Resync"))["reason"] == "source_gap"
    assert (await globex.expect("Resync"))["reason"] == "source_gap"


@pytest.mark.gen_test(timeout=30)
async def test_one_resync_encoded_once_reaches_every_client_of_the_tenant_in_its_framing(connect, http_url, plugin):
    from tornado_cfgpush.testing import SSEClient

    sockets = [await connect("acme") for _ in range(3)]
    stream = await SSEClient.open(http_url, "acme")
    for ws in sockets:
        await ws.expect("Welcome")
    await stream.expect("Welcome")
    await plugin.scripted.emit.gap(["acme"])
    bodies = [await ws.expect("Resync") for ws in sockets] + [await stream.expect("Resync")]
    assert all(body == bodies[0] for body in bodies)
    assert bodies[0]["reason"] == "source_gap" and "app.json" in bodies[0]["manifest"]
    stream.close()


@pytest.mark.gen_test(timeout=30)
async def test_emit_skipped_counts_logs_once_and_resyncs_that_tenant_only(connect, core, plugin, logs):
    acme = await connect("acme")
    globex = await connect("globex")
    await acme.expect("Welcome")
    await globex.expect("Welcome")
    for _ in range(3):  # the same change met three times: counted three times, logged once
        await plugin.scripted.emit.skipped("acme", "rows/7", "its key breaks the path rule", "bad_key")
        assert (await acme.expect("Resync"))["reason"] == "source_gap"
    await globex.expect_nothing(0.3)
    assert core.metrics.rejected_events[("scripted", "bad_key")] == 3
    lines = [r.getMessage() for r in records(logs) if "cannot be published" in r.getMessage()]
    assert len(lines) == 1 and "rows/7" in lines[0] and "its key breaks the path rule" in lines[0]


@pytest.mark.gen_test(timeout=30)
async def test_source_whose_run_returns_is_not_restarted(connect, core, plugin, logs):
    def supervising() -> bool:
        return any(t.get_name() == "source:finisher" and not t.done() for t in asyncio.all_tasks())

    await wait_for(lambda: not supervising(), timeout=10)  # its supervisor is done for good
    assert plugin.finisher.runs == 1
    assert core.runner.restarts["finisher"] == 0
    assert "finisher" not in core.runner.running
    assert any(r.getMessage() == "source finisher finished" for r in records(logs))
    client = await connect("acme")  # and the server serves on
    await client.expect("Welcome")


# -- meta: every hook documented and tested (datasette's test_docs.py) ------------------------------

HOOKS = sorted(name for name, obj in vars(hookspecs).items() if getattr(obj, f"{PROJECT_NAME}_spec", None) is not None)


def test_hookspecs_are_found():
    assert "cfgpush_register_sources" in HOOKS


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_complete_docstring(hook):
    spec = getattr(hookspecs, hook)
    doc = inspect.getdoc(spec)
    assert doc, f"{hook} has no docstring in hookspecs.py"
    for param in inspect.signature(spec).parameters:
        assert f":param {param}:" in doc, f"{hook}: parameter {param!r} is not documented"
    assert ":returns:" in doc, f"{hook}: the return value is not documented"
    if getattr(spec, f"{PROJECT_NAME}_spec").get("firstresult"):
        assert "firstresult" in doc, f"{hook} is firstresult and its docstring does not say so"


# README.md is written by someone else: until it exists, this test fails and says so.
@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented_in_readme_or_docs(hook):
    readme = ROOT / "README.md"
    if not readme.is_file():
        pytest.fail(
            f"README.md is missing at {readme}: its plugin guide must have a section for each hook ({', '.join(HOOKS)})"
        )
    pages = [readme, *sorted((ROOT / "docs").glob("*.md"))]
    assert any(hook in page.read_text(encoding="utf-8") for page in pages), (
        f"{hook} is not documented in README.md or docs/*.md"
    )


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_exercised_by_a_test(hook):
    pattern = re.compile(rf"\b{re.escape(hook)}\b")
    users = [path.name for path in sorted(TESTS.glob("test_*.py")) if pattern.search(path.read_text(encoding="utf-8"))]
    assert users, f"no test under tests/ uses {hook}"

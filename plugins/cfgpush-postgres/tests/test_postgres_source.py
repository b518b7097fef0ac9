"""cfgpush-postgres against the real PostgreSQL on 127.0.0.1:5432, through a real server.

Each run creates its own database and drops it at the end. The plugin is loaded from its
installed entry point (``pip install ./plugins/cfgpush-postgres``), as a user's would be.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from importlib import metadata

import psycopg
import pytest

from tornado_cfgpush.plugins import get_plugin_manager, known_plugin_names
from tornado_cfgpush.settings import Settings
from tornado_cfgpush.testing import COMMAND, clean_env, unavailable, wait_for

ADMIN_DSN = os.environ.get("CFGPUSH_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


def checksum(content: str) -> str:
    return "sha256:" + hashlib.sha256(content.encode("utf-8")).hexdigest()


@pytest.fixture
def database():
    """A fresh database for this test; dropped (connections and all) at teardown."""
    name = f"cfgpush_test_{uuid.uuid4().hex[:12]}"
    try:
        admin = psycopg.connect(ADMIN_DSN, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        unavailable(f"PostgreSQL is not reachable at {ADMIN_DSN}: {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield psycopg.conninfo.make_conninfo(ADMIN_DSN, dbname=name), admin, name
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture
def dsn(database):
    return database[0]


# The running server is tornado_cfgpush.testing's (``core``, ``app``, ``connect``), made of these:


@pytest.fixture
def settings(dsn, tmp_path):
    return Settings(config_dir=tmp_path, extra={"postgres_dsn": dsn, "postgres_install": True})


@pytest.fixture
def plugin_manager(settings):
    """Only this distribution's plugin: the installed entry point, as a user gets it."""
    return get_plugin_manager(sorted(known_plugin_names() - {"postgres"}))


@pytest.fixture
def source(core):
    source = next(s for s in core.sources if s.name == "postgres")
    source.backoff_initial, source.backoff_max = 0.05, 0.2  # reconnect quickly
    return source


@pytest.fixture
def ws(connect):
    async def welcomed(tenant_id: str):
        client = await connect(tenant_id)
        await client.expect("Welcome", timeout=5)
        return client

    return welcomed


async def expect(client, kind: str = "ConfigChanged", timeout: float = 5.0) -> dict:
    return await client.expect(kind, timeout)


@pytest.fixture
def writer(io_loop, dsn, core):
    conn = io_loop.run_sync(lambda: psycopg.AsyncConnection.connect(dsn, autocommit=True))
    yield conn
    io_loop.run_sync(conn.close)


@pytest.mark.gen_test(timeout=30)
async def test_row_changes_become_events(ws, writer, source):
    acme = await ws("acme")
    globex = await ws("globex")
    await writer.execute(
        "INSERT INTO cfgpush_config (tenant_id, path, content) VALUES ('acme', 'billing/limits.json', '{\"rate\": 1}')"
    )
    event = await expect(acme)
    assert (event["change_type"], event["path"], event["checksum"], event["source"]) == (
        "created",
        "billing/limits.json",
        checksum('{"rate": 1}'),
        "postgres",
    )
    assert "meta" not in event
    await writer.execute("UPDATE cfgpush_config SET content = content WHERE tenant_id = 'acme'")  # no byte changed
    await writer.execute(
        "UPDATE cfgpush_config SET content = '{\"rate\": 2}', updated_at = now() WHERE tenant_id = 'acme'"
    )
    event = await expect(acme)
    assert (event["change_type"], event["checksum"]) == ("modified", checksum('{"rate": 2}'))
    await writer.execute("UPDATE cfgpush_config SET path = 'billing/quota.json' WHERE tenant_id = 'acme'")
    moved_away, moved_in = await expect(acme), await expect(acme)
    assert (moved_away["change_type"], moved_away["path"], moved_away["checksum"]) == (
        "deleted",
        "billing/limits.json",
        None,
    )
    assert (moved_in["change_type"], moved_in["path"]) == ("created", "billing/quota.json")
    await writer.execute("DELETE FROM cfgpush_config WHERE tenant_id = 'acme'")
    event = await expect(acme)
    assert (event["change_type"], event["path"], event["checksum"]) == ("deleted", "billing/quota.json", None)
    # globex saw nothing of acme: its first event is its own.
    await writer.execute("INSERT INTO cfgpush_config (tenant_id, path, content) VALUES ('globex', 'g.json', 'x')")
    assert (await expect(globex))["path"] == "g.json"
    assert source.manifest("globex") == {"g.json": checksum("x")}
    assert source.tenants() == ["globex"]


@pytest.mark.gen_test(timeout=30)
async def test_a_row_that_breaks_the_rules_is_refused_and_the_next_one_delivered(ws, writer, core):
    acme = await ws("acme")
    await writer.execute("INSERT INTO cfgpush_config (tenant_id, path, content) VALUES ('../acme', 'a.json', 'x')")
    await writer.execute("INSERT INTO cfgpush_config (tenant_id, path, content) VALUES ('acme', '/etc/passwd', 'x')")
    await writer.execute("INSERT INTO cfgpush_config (tenant_id, path, content) VALUES ('acme', 'ok.json', 'x')")
    assert (await expect(acme))["path"] == "ok.json"
    assert core.runner.rejected["postgres"] == 2
    assert core.runner.restarts["postgres"] == 0


@pytest.mark.gen_test(timeout=60)
async def test_changes_made_while_the_connection_is_down_are_emitted_after_the_reconnect(
    ws, writer, source, database, http_client, http_port
):
    _, admin, name = database
    await writer.execute(
        "INSERT INTO cfgpush_config (tenant_id, path, content) VALUES "
        "('acme', 'keep.json', 'k'), ('acme', 'change.json', 'v1'), ('acme', 'drop.json', 'd')"
    )
    acme = await ws("acme")
    await wait_for(lambda: len(source.known) == 3)
    # Keep it away: no new connection to the database, then kill the one it has.
    admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
    pid = source.backend_pid
    admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    await wait_for(lambda: source.failures >= 2 and not source.connected)  # lost, then refused at least once
    await writer.execute("UPDATE cfgpush_config SET content = 'v2' WHERE path = 'change.json'")
    await writer.execute("DELETE FROM cfgpush_config WHERE path = 'drop.json'")
    await writer.execute("INSERT INTO cfgpush_config (tenant_id, path, content) VALUES ('acme', 'new.json', 'n')")
    ready = await http_client.fetch(f"http://127.0.0.1:{http_port}/readyz", raise_error=False)
    assert ready.code == 200  # a database outage does not take the node out of service
    admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')

    events = {}
    for _ in range(3):
        event = await expect(acme, timeout=10)
        events[event["path"]] = event
    assert {p: (e["change_type"], e["checksum"]) for p, e in events.items()} == {
        "change.json": ("modified", checksum("v2")),
        "drop.json": ("deleted", None),
        "new.json": ("created", checksum("n")),
    }
    assert all(e["meta"] == {"reconciled": True} for e in events.values())
    assert source.connections == 2 and source.backend_pid != pid
    # And it listens again.
    await writer.execute("UPDATE cfgpush_config SET content = 'k2' WHERE path = 'keep.json'")
    event = await expect(acme)
    assert (event["path"], event["change_type"], "meta" in event) == ("keep.json", "modified", False)


@pytest.mark.gen_test(timeout=30)
async def test_truncate_deletes_every_row(ws, writer):
    acme = await ws("acme")
    await writer.execute("INSERT INTO cfgpush_config (tenant_id, path, content) VALUES ('acme', 'a.json', 'a')")
    assert (await expect(acme))["change_type"] == "created"
    await writer.execute("TRUNCATE cfgpush_config")
    event = await expect(acme)
    assert (event["path"], event["change_type"]) == ("a.json", "deleted")


def test_install_command_creates_the_table_and_trigger(database):
    dsn, _, _ = database
    sql = subprocess.run([sys.executable, "-m", "cfgpush_postgres", "sql"], capture_output=True, text=True, timeout=60)
    assert sql.returncode == 0 and "CREATE TABLE IF NOT EXISTS cfgpush_config" in sql.stdout
    for _ in range(2):  # idempotent
        done = subprocess.run(
            [sys.executable, "-m", "cfgpush_postgres", "install", dsn], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, done.stderr
    with psycopg.connect(dsn) as conn:
        columns = [
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_name = 'cfgpush_config' ORDER BY ordinal_position"
            )
        ]
        triggers = {r[0] for r in conn.execute("SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")}
    assert columns == ["tenant_id", "path", "content", "updated_at"]
    assert triggers == {"cfgpush_config_notify", "cfgpush_config_notify_truncate"}
    bad = subprocess.run(
        [sys.executable, "-m", "cfgpush_postgres", "install", dsn + "_missing"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and bad.stderr.startswith("cfgpush-postgres: error: ")


def test_without_a_dsn_there_is_no_source():
    pm = get_plugin_manager(sorted(known_plugin_names() - {"postgres"}))
    assert pm.hook.cfgpush_register_sources(settings=Settings()) == [[]]


def test_cfgpush_serve_lists_it_and_takes_its_options(tmp_path):
    listed = subprocess.run(
        [*COMMAND, "--plugins"], capture_output=True, text=True, timeout=60, cwd=tmp_path, env=clean_env()
    )
    assert listed.returncode == 0, listed.stderr
    plugins = {entry["name"]: entry for entry in json.loads(listed.stdout)}
    assert plugins["postgres"] == {
        "name": "postgres",
        "distribution": "cfgpush-postgres",
        "version": metadata.version("cfgpush-postgres"),
        "hooks": ["cfgpush_add_options", "cfgpush_register_sources"],
    }
    shown = subprocess.run(
        [*COMMAND, "--print-config", "--postgres-dsn", "postgresql://app:pw-secret@db/cfg"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=clean_env(CFGPUSH_POSTGRES_INSTALL="true"),
    )
    assert shown.returncode == 0, shown.stderr
    assert 'postgres-dsn = "postgresql://app:<redacted>@db/cfg"  # --postgres-dsn' in shown.stdout
    assert "postgres-install = true  # CFGPUSH_POSTGRES_INSTALL" in shown.stdout
    assert "pw-secret" not in shown.stdout

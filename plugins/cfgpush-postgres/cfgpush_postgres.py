"""cfgpush-postgres: configuration rows in PostgreSQL, pushed to browsers on LISTEN/NOTIFY.

Each row of ``cfgpush_config(tenant_id, path, content, updated_at)`` is one configuration
file of one tenant. A trigger (``INSTALL_SQL``) sends ``NOTIFY cfgpush_config`` with the row's
tenant, path and the sha256 of its content; this source LISTENs on an asynchronous psycopg 3
connection and emits ``created`` / ``modified`` / ``deleted`` with ``checksum``
``sha256:<hex>``. A lost connection is re-opened with jittered, doubling backoff; after each
reconnect the source compares every row's checksum with what it knew and emits what changed
while it was away, so no change is lost (the states in between are, as with a file edited
twice while the server was down).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import sys
from typing import Any

import psycopg
from marshmallow import ValidationError

from tornado_cfgpush import Emit, hookimpl

__version__ = "0.1.0"

log = logging.getLogger("cfgpush.postgres")

CHANNEL = "cfgpush_config"
APPLICATION_NAME = "cfgpush-postgres"

# Idempotent: run it by hand, with `cfgpush-postgres install DSN`, or at start with --postgres-install.
INSTALL_SQL = """\
CREATE TABLE IF NOT EXISTS cfgpush_config (
    tenant_id  text        NOT NULL CHECK (char_length(tenant_id) BETWEEN 1 AND 64),
    path       text        NOT NULL CHECK (char_length(path) BETWEEN 1 AND 1024),
    content    text        NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, path)
);

-- One notification per changed row: {"tenant_id", "path", "checksum"} (hex sha256 of the
-- content as UTF-8; null when the row is gone). A changed key is a delete plus an insert.
CREATE OR REPLACE FUNCTION cfgpush_config_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('cfgpush_config', '{"truncate": true}');
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' OR (TG_OP = 'UPDATE' AND (OLD.tenant_id, OLD.path) IS DISTINCT FROM (NEW.tenant_id, NEW.path)) THEN
        PERFORM pg_notify('cfgpush_config', json_build_object(
            'tenant_id', OLD.tenant_id, 'path', OLD.path, 'checksum', NULL)::text);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM pg_notify('cfgpush_config', json_build_object(
            'tenant_id', NEW.tenant_id, 'path', NEW.path,
            'checksum', encode(sha256(convert_to(NEW.content, 'UTF8')), 'hex'))::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE OR REPLACE TRIGGER cfgpush_config_notify
    AFTER INSERT OR UPDATE OR DELETE ON cfgpush_config
    FOR EACH ROW EXECUTE FUNCTION cfgpush_config_notify();

CREATE OR REPLACE TRIGGER cfgpush_config_notify_truncate
    AFTER TRUNCATE ON cfgpush_config
    FOR EACH STATEMENT EXECUTE FUNCTION cfgpush_config_notify();
"""

# Checksums are computed by the server: a reconnect transfers 64 hex digits per row, not contents.
SNAPSHOT_SQL = "SELECT tenant_id, path, encode(sha256(convert_to(content, 'UTF8')), 'hex') FROM cfgpush_config"


class PostgresSource:
    """LISTEN for row changes; after each (re)connect, emit what differs from what it knew."""

    name = "postgres"

    def __init__(
        self,
        dsn: str,
        *,
        install: bool = False,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        idle_check: float = 30.0,
    ):
        self.dsn = dsn
        self.install = install
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.idle_check = idle_check  # seconds without a notification before "SELECT 1"
        self.started = asyncio.Event()  # set after the first snapshot: changes are reported from then on
        self.known: dict[tuple[str, str], str] = {}  # (tenant_id, path) -> "sha256:<hex>"
        self.connected = False
        self.connections = 0  # sessions opened
        self.failures = 0  # sessions lost or refused
        self.backend_pid: int | None = None
        self._session_worked = False

    # -- what the server asks of a source ----------------------------------------------------------

    def tenants(self) -> list[str]:
        return sorted({tenant for tenant, _ in self.known})

    def manifest(self, tenant_id: str) -> dict[str, str] | None:
        found = {path: checksum for (tenant, path), checksum in self.known.items() if tenant == tenant_id}
        return found or None

    async def run(self, emit: Emit) -> None:
        delay = 0.0
        while True:
            self._session_worked = False
            try:
                await self._session(emit)
                error = "connection closed"
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                error = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            self.connected = False
            self.backend_pid = None
            self.failures += 1
            if self._session_worked:
                delay = 0.0  # it was connected: start again from the short delay
            delay = min(delay * 2 if delay else self.backoff_initial, self.backoff_max)
            wait = random.uniform(delay / 2, delay)
            log.warning("postgres: %s; reconnecting in %.2f s", error, wait)
            await asyncio.sleep(wait)

    async def _session(self, emit: Emit) -> None:
        async with await psycopg.AsyncConnection.connect(
            self.dsn, autocommit=True, application_name=APPLICATION_NAME
        ) as conn:
            if self.install:
                await conn.execute(INSTALL_SQL)
                self.install = False  # once per process is enough
                log.info("postgres: table cfgpush_config and its trigger are installed")
            await conn.execute(f"LISTEN {CHANNEL}")
            # LISTEN first, then the snapshot: a change committed in between is in both, and
            # its notification then finds the checksum already known (no duplicate event).
            await self._reconcile(conn, emit, announce=self.started.is_set())
            self.backend_pid = conn.info.backend_pid
            self.connected = True
            self.connections += 1
            self._session_worked = True
            if not self.started.is_set():
                log.info("postgres: listening (%d rows)", len(self.known))
            else:
                log.info("postgres: reconnected and caught up (%d rows)", len(self.known))
            self.started.set()
            while True:
                # notifies() holds the connection: a query waits until it is closed (psycopg
                # keeps notifications that arrive meanwhile for the next call).
                compare_all = False
                async with contextlib.aclosing(conn.notifies(timeout=self.idle_check)) as notifies:
                    async for notify in notifies:
                        if not await self._on_notify(notify.payload, emit):
                            compare_all = True
                            break
                if compare_all:
                    await self._reconcile(conn, emit, announce=True)
                else:
                    await conn.execute("SELECT 1")  # quiet for a while: is the connection alive?

    async def _reconcile(self, conn: psycopg.AsyncConnection, emit: Emit, *, announce: bool) -> None:
        """Read every row's checksum; when ``announce``, emit what differs from ``known``."""
        cursor = await conn.execute(SNAPSHOT_SQL)
        current = {(tenant, path): "sha256:" + digest for tenant, path, digest in await cursor.fetchall()}
        if announce:
            for key, checksum in sorted(current.items()):
                before = self.known.get(key)
                if before != checksum:
                    await self._emit(emit, key, "created" if before is None else "modified", checksum, True)
            for key in sorted(set(self.known) - set(current)):
                await self._emit(emit, key, "deleted", None, True)
        self.known = current

    async def _on_notify(self, payload: str, emit: Emit) -> bool:
        """Emit what one notification says; False when every row must be compared instead."""
        try:
            data = json.loads(payload)
            if data.get("truncate"):
                return False
            key = (str(data["tenant_id"]), str(data["path"]))
            digest = data.get("checksum")
        except (ValueError, KeyError, TypeError, AttributeError):
            log.warning("postgres: unexpected notification %r; comparing every row", payload[:200])
            return False
        before = self.known.get(key)
        if digest is None:
            if before is not None:
                await self._emit(emit, key, "deleted", None, False)
            return True
        checksum = "sha256:" + digest
        if before != checksum:  # an update that changed no byte is no event
            await self._emit(emit, key, "created" if before is None else "modified", checksum, False)
        return True

    async def _emit(
        self, emit: Emit, key: tuple[str, str], change_type: str, checksum: str | None, reconciled: bool
    ) -> None:
        tenant_id, path = key
        payload: dict[str, Any] = {"tenant_id": tenant_id, "change_type": change_type, "path": path}
        if change_type != "deleted":
            payload["checksum"] = checksum
        if reconciled:
            payload["meta"] = {"reconciled": True}  # found by comparing checksums after a reconnect
        try:
            await emit(payload)
        except ValidationError:
            pass  # logged and counted by the server (a tenant id or path that breaks the rules)
        if checksum is None:
            self.known.pop(key, None)
        else:
            self.known[key] = checksum


# -- hooks ------------------------------------------------------------------------------------------


@hookimpl
def cfgpush_add_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("cfgpush-postgres")
    group.add_argument(
        "--postgres-dsn",
        dest="postgres_dsn",
        metavar="DSN",
        help="PostgreSQL connection string (postgresql://user@host/db or 'host=... dbname=...') "
        "of the database holding cfgpush_config; the source is off without it",
    )
    group.add_argument(
        "--postgres-install",
        dest="postgres_install",
        action="store_true",
        help="create the cfgpush_config table and its trigger at start (idempotent)",
    )


@hookimpl
def cfgpush_register_sources(settings) -> list[PostgresSource]:
    dsn = settings.extra.get("postgres_dsn")
    if not dsn:
        return []
    return [PostgresSource(dsn, install=bool(settings.extra.get("postgres_install")))]


# -- cfgpush-postgres install | sql ------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="cfgpush-postgres", description="Set up PostgreSQL for the cfgpush postgres source."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    install = commands.add_parser("install", help="create the table cfgpush_config and its trigger (idempotent)")
    install.add_argument("dsn", help="connection string of the database")
    commands.add_parser("sql", help="print the SQL that install runs")
    args = parser.parse_args(argv)
    if args.command == "sql":
        print(INSTALL_SQL, end="")
        return 0
    try:
        with psycopg.connect(args.dsn, autocommit=True, application_name=APPLICATION_NAME) as conn:
            conn.execute(INSTALL_SQL)
    except psycopg.Error as exc:
        print(f"cfgpush-postgres: error: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    print("installed: table cfgpush_config, trigger cfgpush_config_notify (NOTIFY cfgpush_config)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

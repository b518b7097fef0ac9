"""The filesystem source as the server sees it: a worker process to start, lines to publish.

The way a change travels::

    worker process (worker.py): watchdog -> Inbox -> settle loop (tree.py reads, settle.py
      decides) -> one JSON line per batch of events on its stdout
    server's event loop (here): read a line when the previous one is published -> emit each
      event (schema, broker, hub) -> read the next line

The event loop never waits on a disk, a parse or a scan, and never wakes once per file: it
reads lines from a pipe, one at a time, and only when it is ready for more, so a burst the
server cannot take at once waits in the worker (where changes of one file coalesce) instead
of in memory here. Each ``emit`` yields to the loop once, so ten thousand events are ten
thousand short steps between which clients are served, not one long one.

What the server was told is kept here too (``manifest``, ``tenants``), and handed to the next
worker when the source restarts, which then reports only what differs on disk.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

from marshmallow import ValidationError

from ... import Emit
from ...content import CONTENT_FIELDS, MAX_SERVED_BYTES
from ...schemas import flatten_messages
from .settle import NOT_REPRESENTABLE
from .tree import Refused, Tree
from .watch import inotify_watch_limit

log = logging.getLogger("cfgpush.sources.filesystem")

SOURCE_NAME = "filesystem"
WORKER_MODULE = "tornado_cfgpush.sources.filesystem.worker"
# The worker writes a line at least this often (``alive`` when idle); silence past it means it
# hangs, and the source restarts (its tenants get Resync, as after any crash).
WORKER_SILENCE = 20.0
# One event may carry a long diff; a line is cut at 256 KiB of events, but never splits one.
LINE_LIMIT = 64 * 1024 * 1024
PUBLISH_BATCH = 500  # events per emit.many: one round trip with a shared broker
# Lines read ahead of the publishing: while a publish waits for a slow broker, the saves that
# settle meanwhile (a line each) are read, and go out together in the next round trip instead
# of one round trip each. Bounded, so a flood still fills the pipe and the worker coalesces.
READ_AHEAD = 64
REFUSED = "invalid_path"  # cfgpush_events_rejected_total's reason for a name that cannot be announced
INVALID_CONTENT = "invalid_content"  # cfgpush_events_rejected_total's reason for what the gate refused


class WorkerFailed(Exception):
    """The worker process failed or vanished; the source runner restarts the source."""


class FilesystemSource:
    name = SOURCE_NAME

    def __init__(
        self,
        config_dir: Path | str,
        debounce: float = 0.05,
        *,
        max_delay: float | None = None,
        polling: bool = False,
        canary: float = 60.0,
        fallback: str = "poll",
        validate: tuple[str, ...] = (),
        schemas: tuple[tuple[str, str], ...] = (),
        serve_content: tuple[str, ...] = (),
        max_patch_bytes: int = 16 * 1024,
    ):
        self.config_dir = Path(config_dir)
        self.debounce = debounce
        # A file written continuously still reports, at least this often.
        self.max_delay = max_delay if max_delay is not None else max(1.0, 20 * debounce)
        self.force_polling = polling
        self.canary = canary  # seconds of silence before the worker checks its watcher (0: never)
        self.fallback = fallback  # when the kernel allows too few watches: "poll" or "error"
        self.validate = validate  # the validation gate (tornado_cfgpush.gate): globs that must parse
        self.schemas = schemas  # and (glob, JSON Schema file) pairs
        self.serve_content = serve_content  # files whose events carry patches (content.served)
        self.max_patch_bytes = max_patch_bytes
        self._polling_because = ""  # why it polls though it was not asked to (degraded)
        self.observer_kind = ""
        self.root = ""
        # What the server was told, by the worker's key: (tenant, path, checksum); and by tenant.
        self._files: dict[str, tuple[str, str, str]] = {}
        self._by_tenant: dict[str, dict[str, str]] = {}
        # Events read from the worker and not yet surely published when a run ended (it was
        # cancelled, or emit raised): the next run publishes them first. They are in _files
        # already, so the next worker does not report them again.
        self._unsent: deque[list[Any]] = deque()  # [key, payload, old key, version, taken at]
        # The version (see settle.Read) of each file of the start-up scan, for what it reports
        # as changed while no one watched.
        self._versions: dict[str, int | None] = {}
        # tenant -> path -> what the validation gate refused there (the newest version), and since when
        self._invalid: dict[str, dict[str, dict[str, Any]]] = {}
        self._ran_before = False
        # Set once watching and the initial scan are done: changes from then on are reported.
        self.started = asyncio.Event()

    # -- the source contract --------------------------------------------------------------------

    async def run(self, emit: Emit) -> None:
        root = self.config_dir.resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"config folder {str(self.config_dir)!r} does not exist or is not a folder")
        self.root = str(root)
        self.started.clear()
        first_run = not self._ran_before
        self._ran_before = True
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            WORKER_MODULE,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=LINE_LIMIT,
            # Its own session: a Ctrl-C in a terminal goes to the server, which stops it.
            start_new_session=True,
        )
        try:
            assert proc.stdin is not None and proc.stdout is not None
            known = None if first_run else [[k, t, r, c] for k, (t, r, c) in self._files.items()]
            config = {
                "root": self.root,
                "debounce": self.debounce,
                "max_delay": self.max_delay,
                "polling": self.force_polling,
                "watch_limit": inotify_watch_limit(),
                "known": known,
                "canary": self.canary,
                "fallback": self.fallback,
                "validate": list(self.validate),
                "schemas": [list(rule) for rule in self.schemas],
                "serve_content": list(self.serve_content),
                "max_patch_bytes": self.max_patch_bytes,
                "log_level": logging.getLogger("cfgpush").getEffectiveLevel(),
            }
            proc.stdin.write(json.dumps(config).encode() + b"\n")
            await proc.stdin.drain()  # stdin stays open: its end tells the worker to stop
            if first_run:
                self._files.clear()
                self._by_tenant.clear()
            await self._serve(proc, emit, first_run)
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()

    async def _serve(self, proc: asyncio.subprocess.Process, emit: Emit, first_run: bool) -> None:
        reader = proc.stdout
        assert reader is not None
        unsent = self._unsent  # published first; whatever is left when this run ends stays
        gaps: set[str] = set()
        lines: asyncio.Queue[dict[str, Any] | BaseException] = asyncio.Queue(READ_AHEAD)
        reading = asyncio.ensure_future(self._read_lines(proc, reader, lines))
        try:
            while True:
                if unsent:
                    await self._publish_all(emit, unsent, gaps)
                if gaps:  # one Resync per tenant for the skipped changes of a line
                    tenants = sorted(gaps)
                    gaps.clear()
                    await emit.gap(tenants)
                await self._handle(await self._next(lines), emit, first_run, gaps)
                # What was read meanwhile (saves settled while a publish waited) joins this batch.
                while not lines.empty() and len(unsent) < PUBLISH_BATCH:
                    await self._handle(await self._next(lines), emit, first_run, gaps)
        finally:
            reading.cancel()

    async def _handle(self, message: dict[str, Any], emit: Emit, first_run: bool, gaps: set[str]) -> None:
        """One line of the worker's."""
        kind = message.get("t")
        if kind == "events":
            for item in message["items"]:
                self._record(item)
                self._unsent.append(item)
        elif kind == "refused":
            await self._refused(emit, message, gaps)
        elif kind == "invalid":
            await self._gate_refused(emit, message)
        elif kind == "valid":
            files = self._invalid.get(message["tenant"])
            if files is not None:
                files.pop(message["path"], None)
                if not files:
                    del self._invalid[message["tenant"]]
        elif kind == "log":
            logging.getLogger(message["name"]).log(message["level"], "%s", message["msg"])
        elif kind == "known":
            if first_run:
                for key, tenant_id, rel, checksum, version in message["files"]:
                    self._set(key, tenant_id, rel, checksum)
                    self._versions[key] = version
        elif kind == "ready":
            self.observer_kind = message["observer"]
            self._polling_because = (
                "the kernel allows too few inotify watches for the config folder "
                "(fs.inotify.max_user_watches): polling it every second"
                if self.observer_kind == "polling" and not message.get("forced")
                else ""
            )
            if first_run:
                # A shared broker remembers what was published before this process started:
                # report what changed on disk while no source was watching.
                await self._reconcile_with_published(emit)
                self._versions.clear()  # needed for that comparison only
            log.info(
                "watching %s (%s, %d files, debounce %.0f ms)",
                self.root,
                self.observer_kind,
                len(self._files),
                self.debounce * 1000,
            )
            self.started.set()
        elif kind == "gap":
            tenants = message["tenants"]
            await emit.gap(self.tenants() if tenants is None else tenants)
        elif kind == "fatal":
            raise WorkerFailed("the filesystem watcher failed:\n" + message["error"])

    @staticmethod
    async def _next(lines: asyncio.Queue[dict[str, Any] | BaseException]) -> dict[str, Any]:
        message = await lines.get()
        if isinstance(message, BaseException):
            raise message
        return message

    @staticmethod
    async def _read_lines(
        proc: asyncio.subprocess.Process,
        reader: asyncio.StreamReader,
        lines: asyncio.Queue[dict[str, Any] | BaseException],
    ) -> None:
        """The worker's lines, parsed, into ``lines``; the end (its exit, or its silence) as a
        WorkerFailed, last."""
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11, wait_for returns the line when it
            # arrives together with a cancellation and so swallows the cancellation.
            try:
                async with asyncio.timeout(WORKER_SILENCE):
                    line = await reader.readline()
            except TimeoutError:
                await lines.put(WorkerFailed(f"the filesystem watcher said nothing for {WORKER_SILENCE:g} s"))
                return
            if not line:
                code = await proc.wait()
                await lines.put(WorkerFailed(f"the filesystem watcher exited (status {code})"))
                return
            try:
                message = json.loads(line)
            except ValueError as exc:
                await lines.put(WorkerFailed(f"the filesystem watcher wrote a line that is not JSON: {exc}"))
                return
            await lines.put(message)

    async def _publish_all(self, emit: Emit, unsent: deque[list[Any]], gaps: set[str]) -> None:
        """Everything read and not yet published, in order, ``PUBLISH_BATCH`` at a time (one
        round trip each with a shared broker). An item leaves ``unsent`` once its batch is
        out: a batch cut short (a broker outage past emit's patience, a cancel) is published
        again by the next run, which the broker takes as the same changes (checksums and
        versions), not new ones."""
        many = getattr(emit, "many", None)
        while unsent:
            batch = [unsent[i] for i in range(min(PUBLISH_BATCH, len(unsent)))]
            if many is None:  # an emit without it (a test's): one by one
                results: list[Any] = []
                for item in batch:
                    try:
                        results.append(await emit(item[1]))
                    except ValidationError as exc:
                        results.append(exc)
            else:
                results = await many([item[1] for item in batch], versions=[item[3] for item in batch])
            for item, result in zip(batch, results, strict=True):
                if isinstance(result, ValidationError):
                    await self._refused_by_schema(emit, item, result, gaps)
            for _ in batch:
                unsent.popleft()

    async def _refused_by_schema(self, emit: Emit, item: list[Any], refused: ValidationError, gaps: set[str]) -> None:
        """An event the schema refuses is skipped (its tenant resyncs), never fatal; one with a
        diff the wire cannot carry goes out without it."""
        payload, version = item[1], item[3]
        if "diff" in payload:
            trimmed = {k: v for k, v in payload.items() if k not in ("diff", *CONTENT_FIELDS)}
            trimmed["meta"] = {**payload.get("meta", {}), "diff_skipped": NOT_REPRESENTABLE}
            try:
                await (emit(trimmed, version=version) if hasattr(emit, "many") else emit(trimmed))
                return
            except ValidationError as exc:
                refused = exc
        skipped = getattr(emit, "skipped", None)
        if skipped is not None:
            await skipped(
                payload["tenant_id"],
                str(payload.get("path")),
                "refused by the schema: " + flatten_messages(refused.messages),
                "invalid",
                resync=False,
            )
        gaps.add(payload["tenant_id"])

    def publish_lag(self) -> float:
        """Seconds the oldest change read from the worker has waited to be published."""
        if not self._unsent:
            return 0.0
        return max(0.0, time.monotonic() - self._unsent[0][4])

    async def _gate_refused(self, emit: Emit, message: dict[str, Any]) -> None:
        """A version the validation gate refused: not announced (clients keep the last good one,
        so nothing to resync); logged once, counted, and listed for the status API."""
        tenant_id, path = message["tenant"], message["path"]
        where = f" at {message['pointer']}" if message["pointer"] else ""
        self._invalid.setdefault(tenant_id, {})[path] = {
            "path": path,
            "since": message["since"],
            "pointer": message["pointer"],
            "reason": message["reason"],
        }
        skipped = getattr(emit, "skipped", None)
        if skipped is not None:
            await skipped(
                tenant_id,
                path,
                f"refused by the validation gate{where}: {message['reason']}",
                INVALID_CONTENT,
                resync=False,
            )

    def invalid(self, tenant_id: str) -> list[dict[str, Any]]:
        """The files of ``tenant_id`` whose newest version the validation gate refused:
        ``{"path", "since" (Unix time), "pointer", "reason"}``, by path."""
        return [dict(v) for _, v in sorted(self._invalid.get(tenant_id, {}).items())]

    async def _refused(self, emit: Emit, message: dict[str, Any], gaps: set[str]) -> None:
        skipped = getattr(emit, "skipped", None)
        if skipped is not None:
            await skipped(message["tenant"], message["path"], message["reason"], REFUSED, resync=False)
        gaps.add(message["tenant"])

    async def _reconcile_with_published(self, emit: Emit) -> None:
        lookup = getattr(emit, "published_states", None)
        if lookup is None:  # an emit without it (a test's, say): nothing to compare with
            return
        keys = {(t, r): k for k, (t, r, _) in self._files.items()}
        for tenant_id in sorted(self._by_tenant):
            published = await lookup(tenant_id)
            previous = published.states
            if not previous:
                continue  # never published (or a fresh embedded broker): nothing to compare
            files = self._by_tenant.get(tenant_id, {})
            refused = self._invalid.get(tenant_id, {})  # what the gate refused stays as recorded
            for rel in sorted((set(files) | set(previous)) - set(refused)):
                now, before = files.get(rel), previous.get(rel)
                if now == before:
                    continue
                key = keys.get((tenant_id, rel))
                version = self._versions.get(key) if key is not None else None
                if before is None and rel not in previous and _unchanged_since(version, published.since):
                    # Never published, and its content older than the tenant's record: it was
                    # there before anything was announced for the tenant, and clients have it.
                    continue
                change = "deleted" if now is None else "created" if before is None else "modified"
                self._unsent.append(
                    [
                        key,
                        {"tenant_id": tenant_id, "change_type": change, "path": rel, "checksum": now},
                        None,
                        version,
                        time.monotonic(),
                    ]
                )

    def degraded(self) -> str | None:
        """Why this source serves worse than it should, or None (``/readyz`` says it)."""
        return self._polling_because or None

    def manifest(self, tenant_id: str) -> dict[str, str] | None:
        """``{path: checksum}`` of every file of ``tenant_id`` as last reported."""
        if not self.root:
            return None
        return dict(self._by_tenant.get(tenant_id, {}))

    async def content(self, tenant_id: str, path: str) -> bytes | None:
        """The bytes of ``tenant_id``'s file ``path`` as they are on disk now (None: no such
        file here), read off the event loop by the worker's own safe-open rule
        (``tree.Tree.open``: below its tenant's folder, links resolved by hand, never out of
        it). The caller compares their checksum with the announced one. ``ContentTooLarge``
        past ``content.MAX_SERVED_BYTES``."""
        key = self._key(tenant_id, path)
        if key is None or not self.root:
            return None
        return await asyncio.get_running_loop().run_in_executor(None, _read_file, self.root, key)

    def _key(self, tenant_id: str, path: str) -> str | None:
        """The worker's key of a file the server was told about (a folder tenant's
        ``tenant/path``, or a single-file tenant's ``tenant.ext``)."""
        for key in (f"{tenant_id}/{path}", path):
            found = self._files.get(key)
            if found is not None and found[:2] == (tenant_id, path):
                return key
        return None

    def tenants(self) -> list[str]:
        """The tenants with files here: whose clients resync when this source restarts."""
        return sorted(self._by_tenant)

    # -- the record of what the server was told ------------------------------------------------------

    def _record(self, item: list[Any]) -> None:
        key, payload, old_key = item[:3]
        if old_key is not None:
            self._drop(old_key)
        if payload["checksum"] is None:
            self._drop(key)
        else:
            self._set(key, payload["tenant_id"], payload["path"], payload["checksum"])

    def _set(self, key: str, tenant_id: str, rel: str, checksum: str) -> None:
        self._drop(key)
        self._files[key] = (tenant_id, rel, checksum)
        self._by_tenant.setdefault(tenant_id, {})[rel] = checksum

    def _drop(self, key: str) -> None:
        found = self._files.pop(key, None)
        if found is None:
            return
        tenant_id, rel, _ = found
        files = self._by_tenant.get(tenant_id)
        if files is not None:
            files.pop(rel, None)
            if not files:
                del self._by_tenant[tenant_id]


class ContentTooLarge(Exception):
    """A served file over ``content.MAX_SERVED_BYTES``: not read."""


def _read_file(root: str, key: str) -> bytes | None:
    """``key``'s bytes (in an executor's thread), or None: gone, not a regular file, or refused
    by the link rules (the same answer: nothing from outside its tenant)."""
    tree = Tree(root)
    try:
        try:
            opened = tree.open(key)
        except Refused:
            return None
        if opened is None:
            return None
        with open(opened.fd, "rb", closefd=True) as f:
            if opened.info.st_size > MAX_SERVED_BYTES:
                raise ContentTooLarge(key)
            data = f.read(MAX_SERVED_BYTES + 1)
        if len(data) > MAX_SERVED_BYTES:
            raise ContentTooLarge(key)
        return data
    finally:
        tree.close()


def _unchanged_since(version: int | None, since: int | None) -> bool:
    """Whether a file whose content changed at ``version`` (its ctime, in microseconds: set by
    the kernel, so an unpacked archive's or a copy's new file has a new one) was unchanged
    since ``since``. Unknown either way: no (it is announced: a duplicate at worst)."""
    return version is not None and since is not None and version < since

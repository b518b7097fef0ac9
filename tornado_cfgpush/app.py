"""The service and its lifecycle: ``CfgPush`` (hub, broker, sources), ``make_app``, ``serve``.

``CfgPush`` knows nothing of the HTTP server that serves it, so tests run it under
pytest-tornado's ``http_server`` and the CLI under its own ``HTTPServer``.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import gc
import logging
import os
import signal
import socket
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from marshmallow import ValidationError
from pluggy import PluginManager
from tornado import httpserver, netutil, web
from tornado.httputil import HTTPServerRequest

from . import structured
from .auth import Decision, decide
from .broker import SOURCE_GAP, Broker, BrokerUnavailable
from .broker.link import FollowerBroker, LeaderLink
from .broker.memory import MemoryBroker
from .content import (
    CONTENT_FIELDS,
    MAX_SERVED_BYTES,
    ContentChanging,
    ContentRefused,
    EmittedStore,
    NoDocument,
    Version,
    VersionCache,
    checksum_of,
    document_form,
    document_key,
    keep_served,
    served,
)
from .events import Event
from .gate import Gate, parse_schema_rule
from .handlers import default_handlers
from .handlers.health import NotFoundHandler
from .hub import Hub
from .limits import ConnectionLimits
from .loop_health import LoopLag
from .metrics import BROKER_UNAVAILABLE, INVALID, INVALID_CONTENT, Metrics
from .patching import patch_between
from .plugins import get_plugin_manager
from .proxies import TrustedProxies
from .proxy_server import ProxyProtocolServer
from .schemas import config_changed_schema
from .settings import Settings
from .signals import install as install_signal_handlers
from .sources.runner import SourceRunner
from .summary import is_observer, refused_files, summarize
from .tls import CertificateReloader, TLSError
from .worker_peers import Peers
from .workerinfo import Worker

log = logging.getLogger("cfgpush")

# A source whose oldest change has waited this long to be published makes the node "degraded"
# (/readyz): clients are served, but changes reach them late.
PUBLISH_LAG_DEGRADED = 10.0
# publish_many checks this many events against the schema (about 50 µs each), then lets the
# loop run: a source's batch of 500 in one go held every delivery and heartbeat for 50 ms (the
# burst bench's loop-lag probe, distinct files: p99 82 to 120 ms; 24.5 ms in slices of 32,
# 15.5 ms in slices of 16, and the burst delivered sooner, 2.8 -> 0.5 s).
VALIDATE_SLICE = 16


# A served file read from disk whose bytes are not the announced version (saved again since):
# read again this many times, a little later each time, before answering 503 (its event, with
# the new checksum, is on the way; what was read was never announced: it may be half-written,
# or refused by the validation gate, so it is never served).
CONTENT_READS = 4
CONTENT_RETRY_DELAY = 0.05
# Versions of served files remembered as having no document form (?form=document answers 422
# for them without parsing again).
NO_DOCUMENT_KEPT = 1024


class StartupError(Exception):
    """The service could not start (a plugin's hook raised, say); the message says why."""


class CfgPush:
    """One node's service: validate -> publish -> deliver, for every source."""

    def __init__(
        self,
        settings: Settings,
        plugin_manager: PluginManager | None = None,
        broker: Broker | None = None,
        worker: Worker | None = None,
    ):
        self.settings = settings
        self.pm = plugin_manager if plugin_manager is not None else get_plugin_manager(settings.disabled_plugins)
        self.hub = Hub(heartbeat_interval=settings.heartbeat_interval, heartbeat_timeout=settings.heartbeat_timeout)
        # Under --workers without a shared broker (broker/link.py): the leader's link to the
        # other workers, or this follower's broker (which then runs no source).
        self.link: LeaderLink | None = None
        self.follower: FollowerBroker | None = None
        self.broker = broker if broker is not None else self._make_broker(worker)
        self.metrics = Metrics(self)  # /metrics; counts per event, reads the hub's counters
        self.limits = ConnectionLimits.from_settings(settings)  # /ws + /events slots (limits.py)
        self.loop_lag = LoopLag(self.metrics.loop_lag.observe)
        self.runner: SourceRunner | None = None
        self._background: set[asyncio.Task] = set()
        self.peers: Peers | None = None  # under --workers: the other workers (app.serve sets it)
        self.versions = VersionCache()  # served files' versions, prepared once (content.py)
        # Content sources handed with their events: kept here with the embedded broker; a
        # shared one (Redis) keeps it for every node (Broker.store_content).
        self.emitted = EmittedStore()
        self.gate = Gate(settings.validate, [parse_schema_rule(rule) for rule in settings.json_schemas])
        self._reading: dict[tuple[str, str, str], asyncio.Future[Version | None]] = {}
        self._documents: dict[tuple[str, str, str], asyncio.Future[Version]] = {}  # being parsed
        # Versions with no document form, and why (NoDocument's reason): the newest few.
        self._no_document: OrderedDict[tuple[str, str, str], str] = OrderedDict()

    def _make_broker(self, worker: Worker | None = None) -> Broker:
        settings = self.settings
        if not settings.broker and worker is not None and worker.index > 0:
            self.follower = FollowerBroker(
                self.hub.deliver, str(worker.broker_socket()), on_gap=self._gap_from_leader, on_lost=_stop_this_process
            )
            return self.follower
        if not settings.broker:
            deliver = self.hub.deliver
            if worker is not None:  # the leader: what it delivers, its followers deliver too
                self.link = LeaderLink(
                    str(worker.broker_socket()), self.manifest, self._file_for_follower, self._content_for_follower
                )
                deliver = self._deliver_and_share
            return MemoryBroker(
                deliver,
                history_size=settings.history_size,
                history_ttl=settings.history_ttl,
                history_max_bytes=settings.history_max_bytes,
            )
        from .broker.redis import RedisBroker  # redis-py is an optional dependency

        return RedisBroker(
            self.hub.deliver,
            settings.broker,
            history_size=settings.history_size,
            history_ttl=settings.history_ttl,
            tenants=self.hub.tenants,
            on_gap=self._history_lost,
        )

    @property
    def _content_shared(self) -> bool:
        """Whether content handed with events is kept by the broker for every node (Redis, or
        the leader of --workers for a follower) rather than by this process."""
        return bool(self.settings.broker) or self.follower is not None

    def _deliver_and_share(self, event: Event) -> None:
        self.hub.deliver(event)
        assert self.link is not None
        self.link.event(event)
        # The leader keeps the content handed on every worker (a follower's before its event):
        # what an event of another checksum replaced is no longer the announced version.
        path = event.body.get("path")
        if self.emitted and isinstance(path, str):
            kept = self.emitted.get(event.tenant_id, path)
            if kept is not None and kept.checksum != event.body.get("checksum"):
                self._forget_emitted(event.body)

    async def _content_for_follower(self, op: str, request: dict[str, Any]) -> Any:
        """The leader's side of a follower's Broker.store_content / stored_* (broker/link.py)."""
        tenant_id, path = request["t"], str(request.get("p", ""))
        if op == "store":
            data = base64.b64decode(request["d"])
            version = await asyncio.get_running_loop().run_in_executor(None, Version.prepare, path, data)
            if version.checksum == request["c"]:
                self.emitted.put(tenant_id, path, version)
            return None
        if op == "files":
            return self.emitted.files(tenant_id)
        kept = self.emitted.get(tenant_id, path)
        if kept is None:
            return None
        return kept.checksum if op == "checksum" else base64.b64encode(kept.body).decode()

    def _gap_from_leader(self, tenant_ids: list[str] | None, source: str, reason: str) -> None:
        """A source gap on the leader: this follower's clients of those tenants resync too."""
        task = asyncio.ensure_future(self.source_gap(tenant_ids, source, reason))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _history_lost(self, tenant_id: str, reason: str, newest: str) -> None:
        """The shared history dropped events before this node delivered them (an outage
        longer than the history), or was emptied or replaced (``unknown_epoch``): its clients
        of that tenant must reload, up to ``newest``. Sent at once, within the broker's
        delivery: the events after ``newest`` that follow reach them after this Resync."""
        self._resync(tenant_id, newest, reason, "broker")

    @property
    def sources(self) -> list:
        return self.runner.sources if self.runner else []

    async def start(self) -> None:
        await self.broker.start()
        if self.link is not None:
            await self.link.start(self.broker)
        sources = [s for found in self.pm.hook.cfgpush_register_sources(settings=self.settings) for s in found or ()]
        if self.follower is not None:
            sources = []  # the leader runs them; this worker delivers what it publishes
        names = [s.name for s in sources]
        duplicates = {n for n in names if names.count(n) > 1}
        if duplicates:
            raise ValueError(f"two event sources share the name(s): {', '.join(sorted(duplicates))}")
        self.runner = SourceRunner(
            sources,
            self.publish,
            publish_many=self.publish_many,
            gap=self.source_gap,
            published_states=self.broker.published_states,
            count_rejected=self.metrics.rejected,
        )
        self.runner.start()
        self.hub.start()
        self.loop_lag.start()
        log.info("sources running: %s", ", ".join(names) or "none")

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        self.limits.close()  # from now on /ws and /events answer 503
        self.loop_lag.stop()
        self.hub.stop()
        # 1001 to every client; half the drain time for what they still have to read.
        await self.hub.drain(self.settings.drain_timeout / 2)
        closed = loop.time()
        if self.runner is not None:
            await self.runner.stop()
        sources = loop.time()
        if self.link is not None:
            await self.link.stop()
        await self.broker.stop()
        log.info(
            "stopped: clients closed in %.2f s, sources in %.2f s, broker in %.2f s",
            closed - started,
            sources - closed,
            loop.time() - sources,
        )

    async def publish(
        self,
        payload: dict[str, Any],
        source: str | None = None,
        *,
        version: int | None = None,
        content: bytes | None = None,
    ) -> str:
        """The one path of every event: schema, then broker (which delivers).

        Raises ``marshmallow.ValidationError`` for a bad payload; nothing is published then.
        ``version`` orders observations of one path by several nodes (the broker drops a
        change older than the one it recorded; sources/filesystem/settle.py says what it is).
        ``content``: the new bytes of the path (a source that is not the filesystem): checked
        by the validation gate (``ContentRefused`` when it refuses: nothing is published,
        counted as ``invalid_content``), and for a served path kept (the files API answers
        them) and the event given its patch from the previous kept version.
        """
        counted = source or "unknown"  # the publisher, not a payload field: bounded label values
        fields = self._validated(payload, source, counted)
        kept: Version | None = None
        if content is not None:
            kept = await self._with_content(fields, content, counted)
        try:
            event_id = await self.broker.publish(fields, version=version)
        except BrokerUnavailable:
            self.metrics.rejected(counted, BROKER_UNAVAILABLE)
            raise
        if kept is not None and not self._content_shared:
            self.emitted.put(fields["tenant_id"], fields["path"], kept)
        elif self.emitted:
            self._forget_emitted(fields)
        self.metrics.published(counted, fields["tenant_id"])
        return event_id

    def _forget_emitted(self, fields: dict[str, Any]) -> None:
        """An event without content: what was kept of its path (and a moved file's old path)
        is no longer the announced version."""
        if isinstance(fields.get("path"), str):
            self.emitted.drop(fields["tenant_id"], fields["path"])
        old_path = (fields.get("meta") or {}).get("old_path")
        if fields["change_type"] == "moved" and isinstance(old_path, str):
            self.emitted.drop(fields["tenant_id"], old_path)

    async def _with_content(self, fields: dict[str, Any], content: bytes, counted: str) -> Version | None:
        """Check ``content`` (checksum, gate) off the loop; for a served path, prepare its
        version and put the patch from the previous kept one into ``fields``."""
        path = fields.get("path")
        if not isinstance(content, bytes) or not isinstance(path, str) or fields.get("checksum") is None:
            raise ContentRefused("", "content goes with an event of a path that has a checksum (not deleted)")
        if len(content) > MAX_SERVED_BYTES:
            raise ContentRefused("", f"content is over {MAX_SERVED_BYTES} bytes")
        for problem in self.gate.reload():  # a JSON Schema file that changed (one stat per file)
            log.warning("validation gate: %s", problem)
        serve = self.settings.serve_content if served(path, self.settings.serve_content) else ()
        previous = self.emitted.get(fields["tenant_id"], path) if serve and not self._content_shared else None
        if serve and self._content_shared:  # a shared broker keeps what any node was handed
            previous = await self._read_stored(fields["tenant_id"], path)
        loop = asyncio.get_running_loop()
        try:
            kept, extra = await loop.run_in_executor(
                None,
                _check_content,
                path,
                content,
                fields["checksum"],
                self.gate,
                bool(serve),
                previous,
                self.settings.max_patch_bytes,
            )
        except ContentRefused:
            self.metrics.rejected(counted, INVALID_CONTENT)
            raise
        for name in CONTENT_FIELDS:  # a patch here is one made from the kept content, or none
            fields.pop(name, None)
        if fields["change_type"] == "modified":
            meta = extra.pop("meta", None)
            if meta:
                fields["meta"] = {**fields.get("meta", {}), **meta}
            fields.update(extra)
        if kept is not None:  # before the event: a client of any node that hears of it finds it
            await self.broker.store_content(fields["tenant_id"], path, kept.checksum, content)
        return kept

    async def publish_many(
        self, payloads: list[dict[str, Any]], source: str, versions: list[int | None] | None = None
    ) -> list[str | ValidationError]:
        """``publish`` for many events at once, in order: with a shared broker one round trip
        for all of them (the time a batch takes does not depend on the link's latency). Each
        result is the event id, or the ``ValidationError`` of a payload the schema refused."""
        results: list[str | ValidationError] = []
        batch: list[tuple[int, dict[str, Any], int | None]] = []
        for i, payload in enumerate(payloads):
            if i and not i % VALIDATE_SLICE:
                await asyncio.sleep(0)  # let the loop run between slices of the schema's work
            try:
                fields = self._validated(payload, source, source)
            except ValidationError as exc:
                results.append(exc)
                continue
            results.append("")
            batch.append((i, fields, versions[i] if versions else None))
        try:
            ids = await self.broker.publish_many([(fields, version) for _, fields, version in batch])
        except BrokerUnavailable:
            self.metrics.rejected(source, BROKER_UNAVAILABLE)
            raise
        for (i, fields, _), event_id in zip(batch, ids, strict=True):
            results[i] = event_id
            self.metrics.published(source, fields["tenant_id"])
        return results

    def _validated(self, payload: dict[str, Any], source: str | None, counted: str) -> dict[str, Any]:
        try:
            fields = config_changed_schema.load(payload)
        except ValidationError:
            self.metrics.rejected(counted, INVALID)
            raise
        if source is not None:
            fields.setdefault("source", source)
        return keep_served(fields, self.settings.serve_content)

    async def source_gap(self, tenant_ids: Iterable[str] | None, source: str, reason: str = SOURCE_GAP) -> None:
        """``Resync`` (``source_gap`` by default) to the clients of ``tenant_ids`` (None: every tenant)."""
        if self.link is not None:
            tenant_ids = None if tenant_ids is None else list(tenant_ids)
            self.link.gap(tenant_ids, source, reason)  # the followers' clients too
        targets = list(self.hub.tenants()) if tenant_ids is None else sorted(set(tenant_ids))
        for n, tenant_id in enumerate(targets):
            if n:
                await asyncio.sleep(0)  # one tenant per loop turn: a Resync to thousands never holds it
            if not self.hub.connection_count(tenant_id):
                continue
            try:
                newest = (await self.broker.catch_up(tenant_id, None)).last_event_id
            except BrokerUnavailable:
                newest = None  # still tell them: a reload is what they need either way
            self._resync(tenant_id, newest, reason, source)

    def _resync(self, tenant_id: str, newest: str | None, reason: str, source: str) -> None:
        """``Resync`` naming ``newest`` to every client of ``tenant_id`` here, now."""
        try:
            manifest = self.manifest(tenant_id)
            prepared: dict[object, bytes] = {}  # the Resync is the same for every client: encoded once per framing
            for conn in self.hub.connections(tenant_id):
                conn.notify_gap(newest, manifest, reason, prepared)
        except Exception:  # one tenant's failure must not keep the others from their Resync
            log.exception("sending Resync to the clients of tenant %s failed", tenant_id)
            return
        log.info(
            "sent Resync (%s from %s) to %d clients of tenant %s",
            reason,
            source,
            self.hub.connection_count(tenant_id),
            tenant_id,
        )

    def degraded_reasons(self) -> list[str]:
        """Why this node serves worse than it should, while still serving (empty: fine)."""
        reasons = []
        lag = self.loop_lag.degraded_reason()
        if lag:
            reasons.append(lag)
        if self.runner is not None:
            for source in self.runner.sources:
                own = getattr(source, "degraded", None)
                why = own() if callable(own) else None
                if why:
                    reasons.append(f"source {source.name}: {why}")
                behind = self.runner.publish_lag(source)
                if behind > PUBLISH_LAG_DEGRADED:
                    reasons.append(
                        f"source {source.name} is {behind:.1f} s behind publishing (a slow or unreachable broker)"
                    )
        return reasons

    def not_ready_reasons(self) -> list[str]:
        """Why this node should not get traffic yet (empty: ready)."""
        reasons = []
        broker = self.broker.readiness()
        if broker:
            reasons.append(broker)
        if self.runner is None:
            reasons.append("not started")
            return reasons
        for source in self.runner.sources:
            started = getattr(source, "started", None)
            if source.name not in self.runner.running:
                if source.name not in self.runner.finished:
                    reasons.append(f"source {source.name} is not running (restarting after a crash)")
            elif isinstance(started, asyncio.Event) and not started.is_set():
                reasons.append(f"source {source.name} is starting")
        return reasons

    async def wait_started(self, timeout: float = 10.0) -> None:
        """Wait until every source that exposes ``started`` has set it."""
        events = [s.started for s in self.sources if isinstance(getattr(s, "started", None), asyncio.Event)]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in events)), timeout)

    def authorize(self, request: Any, tenant_id: str, token: str | None) -> Decision:
        """Whether a subscriber may receive ``tenant_id``'s events: the ``cfgpush_authorize``
        hook's answer (``auth.decide``)."""
        return decide(self.pm.hook.cfgpush_authorize, self.settings, request, tenant_id, token)

    def local_summary(self, tenant_id: str, last_event_id: str | None) -> dict[str, Any]:
        """The tenant's connections on this process (the status API's answer)."""
        return summarize(
            tenant_id, self.hub.connections(tenant_id), last_event_id, refused_files(self.sources, tenant_id)
        ).as_json()

    def local_tenants(self, with_clients: bool) -> list[str]:
        """The tenants this process knows: connected (by a client, not only an observer, with
        ``with_clients``), or named by a source that can list its tenants (``tenants()``)."""
        hub = self.hub
        if with_clients:  # only the hub knows who is connected: the sources need not be asked
            return sorted(t for t in hub.tenants() if any(not is_observer(s) for s in hub.connections(t)))
        names = set(hub.tenants())
        for source in self.sources:
            lister = getattr(source, "tenants", None)
            if callable(lister):
                try:
                    names.update(lister() or ())
                except Exception:  # a plugin's listing must not take the API down
                    continue
        return sorted(names)

    async def known_tenants(self, with_clients: bool) -> list[str]:
        """``GET /api/v1/tenants``' tenants: this process's, or every worker's under ``--workers``."""
        own = self.local_tenants(with_clients)
        return own if self.peers is None else await self.peers.known_tenants(own, with_clients)

    async def page_summaries(self, tenants: list[str], last: list[str | None]) -> tuple[list[dict[str, Any]], int]:
        """The summaries of a page of tenants (their newest ids ``last``) and the open
        connections: this process's, or every worker's under ``--workers``."""
        own = [self.local_summary(t, newest) for t, newest in zip(tenants, last, strict=True)]
        connections = self.hub.connection_count()
        return (own, connections) if self.peers is None else await self.peers.page(own, tenants, last, connections)

    async def tenant_summary(self, tenant_id: str) -> dict[str, Any]:
        """``GET /api/v1/tenants/<id>``: the tenant's connections and convergence, over every
        worker under ``--workers`` (worker_peers.py)."""
        last_event_id = (await self.broker.catch_up(tenant_id, None)).last_event_id
        own = self.local_summary(tenant_id, last_event_id)
        return own if self.peers is None else await self.peers.tenant_summary(own)

    def manifest(self, tenant_id: str) -> dict[str, str] | None:
        """``{path: checksum}`` of the tenant's files, from every source that can list them
        (the filesystem and a database may both hold some); None when none can."""
        if self.follower is not None:
            return self.follower.manifest(tenant_id)
        manifest: dict[str, str] | None = None
        for source in self.sources:
            lister = getattr(source, "manifest", None)
            found = lister(tenant_id) if lister is not None else None
            if found is not None:
                manifest = {**(manifest or {}), **found}
        return manifest

    # -- served content (--serve-content; content.py) ------------------------------------------------

    async def served_files(self, tenant_id: str) -> dict[str, str]:
        """``{path: checksum}`` of the tenant's files whose content may be served (the manifest,
        and the content handed with events on any node, filtered by ``--serve-content``)."""
        patterns = self.settings.serve_content
        if not patterns:
            return {}
        files = {
            **(await self.broker.stored_files(tenant_id)),
            **(self.emitted.files(tenant_id) if self.emitted else {}),
            **(self.manifest(tenant_id) or {}),
        }
        return {path: c for path, c in sorted(files.items()) if served(path, patterns)}

    async def file_content(self, tenant_id: str, path: str) -> Version | None:
        """The announced version of a served file, or None (no such file, or not served: the
        caller answers both alike). Many requests for one new version share one read.
        ``ContentChanging`` when the disk keeps holding bytes that were not announced."""
        if not self.settings.serve_content or not served(path, self.settings.serve_content):
            return None
        if self.emitted:  # the embedded broker's node keeps what its publishers handed
            emitted = self.emitted.get(tenant_id, path)
            if emitted is not None:
                return emitted  # handed with its event: the announced version itself
        if (self.manifest(tenant_id) or {}).get(path) is None:
            return await self._stored_version(tenant_id, path)  # handed on another node, or none
        for attempt in range(CONTENT_READS):
            checksum = (self.manifest(tenant_id) or {}).get(path)
            if checksum is None:
                return None
            version = self.versions.get(tenant_id, path, checksum)
            if version is not None:
                return version
            key = (tenant_id, path, checksum)
            reading = self._reading.get(key)
            if reading is None:
                reading = self._reading[key] = asyncio.ensure_future(self._read_version(tenant_id, path))
                reading.add_done_callback(functools.partial(self._read_ended, key))
            version = await asyncio.shield(reading)
            if version is None:
                return None
            if version.checksum == checksum:
                return version
            if version.checksum == (self.manifest(tenant_id) or {}).get(path):
                return version  # announced meanwhile
            await asyncio.sleep(CONTENT_RETRY_DELAY * (attempt + 1))
        raise ContentChanging(path)

    async def file_document(self, tenant_id: str, path: str) -> tuple[Version, Version] | None:
        """The announced version of a served file and its document form (``?form=document``):
        read by ``file_content`` (only the announced bytes are ever parsed), parsed off the
        loop with structured.py's bounds, and kept in the same cache, once per version.
        None as ``file_content``; ``NoDocument`` for a file with no JSON document."""
        raw = await self.file_content(tenant_id, path)
        if raw is None:
            return None
        key = (tenant_id, path, document_key(raw.checksum))
        found = self.versions.get(*key)
        if found is None:
            reason = self._no_document.get(key)
            if reason is not None:
                raise NoDocument(reason)  # parsed once per version, failures too
            preparing = self._documents.get(key)
            if preparing is None:
                loop = asyncio.get_running_loop()
                preparing = self._documents[key] = loop.run_in_executor(None, document_form, path, raw)
                preparing.add_done_callback(functools.partial(self._document_ended, key))
            found = await asyncio.shield(preparing)
            self.versions.put(tenant_id, path, found, key[2])
        return raw, found

    def _document_ended(self, key: tuple[str, str, str], done: asyncio.Future[Version]) -> None:
        self._documents.pop(key, None)
        failed = None if done.cancelled() else done.exception()
        if isinstance(failed, NoDocument):
            self._no_document[key] = failed.reason
            while len(self._no_document) > NO_DOCUMENT_KEPT:
                self._no_document.popitem(last=False)

    async def refresh_manifest(self, tenant_id: str) -> None:
        """On a follower of ``--workers`` (broker/link.py): the leader's manifest of the tenant,
        fetched now, for the files API to list and serve from; nothing elsewhere."""
        if self.follower is not None:
            await self.follower.refresh_manifest(tenant_id)

    async def _file_for_follower(self, tenant_id: str, path: str) -> dict[str, Any]:
        """The leader's answer to a follower's files API request (base64 of the bytes)."""
        try:
            version = await self.file_content(tenant_id, path)
        except ContentChanging:
            return {"changing": True}
        return {"body": base64.b64encode(version.body).decode()} if version is not None else {}

    async def _stored_version(self, tenant_id: str, path: str) -> Version | None:
        """Content another node's publisher handed (a shared broker keeps it), prepared once
        here; concurrent requests share one read of the broker."""
        key = (tenant_id, path, "")
        reading = self._reading.get(key)
        if reading is None:
            reading = self._reading[key] = asyncio.ensure_future(self._read_stored(tenant_id, path))
            reading.add_done_callback(functools.partial(self._read_ended, key))
        return await asyncio.shield(reading)

    async def _read_stored(self, tenant_id: str, path: str) -> Version | None:
        checksum = await self.broker.stored_checksum(tenant_id, path)
        if checksum is None:
            return None
        version = self.versions.get(tenant_id, path, checksum)
        if version is None:
            data = await self.broker.stored_content(tenant_id, path)
            if data is None:
                return None
            version = await asyncio.get_running_loop().run_in_executor(None, Version.prepare, path, data)
            if version.checksum != checksum:
                return None  # not what was announced (replaced meanwhile): never served
            self.versions.put(tenant_id, path, version)
        return version

    def _read_ended(self, key: tuple[str, str, str], _: object) -> None:
        self._reading.pop(key, None)

    async def _read_version(self, tenant_id: str, path: str) -> Version | None:
        """Read the file from the first source that has it, prepare it off the loop, and keep it
        when it is the announced version."""
        loop = asyncio.get_running_loop()
        if self.follower is not None:  # no source here: the leader reads it
            answer = await self.follower.file(tenant_id, path)
            if answer.get("changing"):
                raise ContentChanging(path)
            if "body" not in answer:
                return None
            version = await loop.run_in_executor(None, Version.prepare, path, base64.b64decode(answer["body"]))
            if version.checksum == (self.manifest(tenant_id) or {}).get(path):
                self.versions.put(tenant_id, path, version)
            return version
        for source in self.sources:
            reader = getattr(source, "content", None)
            if reader is None:
                continue
            try:
                data = await reader(tenant_id, path)
            except Exception as exc:  # too large, unreadable: not served; said in the log
                log.warning("not serving %s of tenant %s: %s", path, tenant_id, type(exc).__name__)
                return None
            if data is None:
                continue
            version = await loop.run_in_executor(None, Version.prepare, path, data)
            if version.checksum == (self.manifest(tenant_id) or {}).get(path):
                self.versions.put(tenant_id, path, version)
            return version
        return None


def _check_content(
    path: str,
    content: bytes,
    checksum: str,
    gate: Gate,
    serve: bool,
    previous: Version | None,
    max_patch_bytes: int,
) -> tuple[Version | None, dict[str, Any]]:
    """In an executor's thread: ``ContentRefused`` for content that is not the announced
    checksum's or that the gate refuses; else the version to keep (a served path) and the
    event's patch fields from ``previous``."""
    if checksum_of(content) != checksum:
        raise ContentRefused("", "checksum is not the sha256 of the content")
    refused = gate.check(path, content) if gate else None
    if refused is not None:
        raise ContentRefused(refused.pointer, refused.reason)
    if not serve:
        return None, {}
    kept = Version.prepare(path, content)
    extra: dict[str, Any] = {}
    if previous is not None and max_patch_bytes and structured.parser_for(path) is not None:
        old, new = structured.parse(path, previous.body), structured.parse(path, content)
        if not isinstance(old, structured.Unparsed) and not isinstance(new, structured.Unparsed):
            made = patch_between(old, new, max_patch_bytes)
            if isinstance(made, str):
                extra["meta"] = {"patch_skipped": made}
            else:
                extra = {"patch": made[0], "base_checksum": previous.checksum, "document_checksum": made[1]}
    return kept, extra


class ProxiedApplication(web.Application):
    """Behind a ``--trusted-proxy``: a request from one carries its client's address and scheme
    (proxies.py) before any handler, limit, hook or log line sees it."""

    trusted_proxies: TrustedProxies

    def find_handler(self, request: HTTPServerRequest, **kwargs: Any) -> Any:
        if request.remote_ip:
            request.remote_ip, scheme = self.trusted_proxies.client(request.remote_ip, request.headers)
            if scheme is not None:
                request.protocol = scheme
        return super().find_handler(request, **kwargs)


def _stop_this_process() -> None:
    """A follower without its leader: shut down as on SIGTERM (clients get 1001); the
    supervisor starts this worker again."""
    os.kill(os.getpid(), signal.SIGTERM)


def make_app(core: CfgPush, **tornado_settings: Any) -> web.Application:
    settings = {
        "default_handler_class": NotFoundHandler,
        # Exact --allowed-origin values; our handlers also match *.example.com patterns (auth.py).
        "trusted_origins": [o for o in core.settings.allowed_origins if "*" not in o],
        **tornado_settings,
    }
    # Plugins' routes come after the built-in ones: Tornado takes the first match, so a
    # plugin cannot take over /ws, /metrics, ...
    plugin_routes = [r for found in core.pm.hook.cfgpush_register_routes(settings=core.settings) for r in found or ()]
    app: web.Application
    if core.settings.trusted_proxies:
        app = ProxiedApplication(default_handlers(core) + plugin_routes, **settings)
        app.trusted_proxies = TrustedProxies(core.settings.trusted_proxies)
    else:  # no proxy to believe: not a step more per request
        app = web.Application(default_handlers(core) + plugin_routes, **settings)
    app.cfgpush = core  # type: ignore[attr-defined]  # where plugins' route handlers find the service
    return app


def log_request(handler: web.RequestHandler) -> None:
    """Access log without the query string: it may carry tokens."""
    status = handler.get_status()
    level = logging.INFO if status < 400 else logging.WARNING if status < 500 else logging.ERROR
    request = handler.request
    logging.getLogger("tornado.access").log(
        level,
        "%d %s %s (%s) %.2fms",
        status,
        request.method,
        request.path,
        request.remote_ip,
        1000.0 * request.request_time(),
    )


# Pending connections the kernel queues for us (capped by net.core.somaxconn). Tornado's
# default of 128 overflows when thousands of clients reconnect at once after a restart, and
# each overflow costs a client a SYN retry (1 s, then 3 s, ...).
LISTEN_BACKLOG = 4096


def bind(settings: Settings, port: int | None = None, reuse_port: bool = False) -> list[socket.socket]:
    """Bind before anything starts, so a taken port fails fast and cleanly. ``reuse_port``:
    one of ``--workers``, on the port they share (tornado_cfgpush.workers)."""
    return netutil.bind_sockets(
        settings.port if port is None else port,
        settings.host,
        family=socket.AF_UNSPEC,
        backlog=LISTEN_BACKLOG,
        reuse_port=reuse_port,
    )


def server_options(settings: Settings) -> dict[str, Any]:
    """``HTTPServer`` limits (SECURITY.md): a connection must send its whole request head
    within ``handshake_timeout`` (idle before the upgrade too) and within ``max_header_size``
    bytes, else Tornado closes it; bodies (the publish API's) are bounded in size and time."""
    return {
        "idle_connection_timeout": settings.handshake_timeout,
        "body_timeout": settings.handshake_timeout,
        "max_header_size": settings.max_header_size,
        "max_body_size": 1024 * 1024,  # the publish API answers 413 past 64 KiB (and its content) itself
    }


async def serve(
    settings: Settings,
    plugin_manager: PluginManager | None = None,
    stop: asyncio.Event | None = None,
    sockets: list[socket.socket] | None = None,
    worker: Worker | None = None,
) -> None:
    """Run until SIGTERM/SIGINT (or ``stop`` is set); then close clients with 1001 and return."""
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    uninstall_signal_handlers = install_signal_handlers(loop, stop.set)
    sockets = sockets if sockets is not None else bind(settings)
    certificates = None
    if settings.certfile is not None:
        try:
            certificates = CertificateReloader(
                settings.certfile, settings.keyfile, settings.keyfile_password, settings.tls_reload_interval
            )
        except TLSError as exc:
            for sock in sockets:
                sock.close()
            uninstall_signal_handlers()
            raise StartupError(f"--certfile/--keyfile: {exc}") from None
    core = CfgPush(settings, plugin_manager, worker=worker)
    try:
        await core.start()
        app = make_app(core, log_function=log_request)  # plugins' routes are asked for here
    except Exception as exc:
        # A plugin refusing its own settings in cfgpush_register_sources or in
        # cfgpush_register_routes (or two sources sharing a name) is a start-up error like a
        # bad flag, not a traceback from asyncio.run: undo what started; the CLI reports it
        # in one line.
        try:
            await core.stop()
        except Exception:
            log.exception("while stopping after a failed start")
        for sock in sockets:
            sock.close()
        uninstall_signal_handlers()
        raise StartupError(f"start-up failed: {type(exc).__name__}: {exc}") from exc
    try:
        # Listen once the sources report changes: "listening" then means "nothing is missed".
        await core.wait_started(timeout=settings.drain_timeout * 6)
    except TimeoutError:
        log.warning("some sources have not started yet; listening anyway")
    peers = None
    if worker is not None:
        peers = core.peers = Peers(
            worker, core.metrics, core.local_summary, core.local_tenants, core.hub.connection_count
        )
        await peers.start()
    tls: dict[str, Any] = {}
    if certificates is not None:
        tls["ssl_options"] = certificates.context  # one context; new pairs reach it by SNI (tls.py)
        certificates.start()
        core.metrics.tls = certificates
    server: httpserver.HTTPServer
    if settings.proxy_protocol:  # TLS, if on, after the PROXY header (proxy_server.py)
        server = ProxyProtocolServer(app, **server_options(settings))
        server.trusted_proxies = TrustedProxies(settings.trusted_proxies)
        server.header_timeout = settings.handshake_timeout
        server.tls_context = tls.get("ssl_options")
    else:
        server = httpserver.HTTPServer(app, **server_options(settings), **tls)
    server.add_sockets(sockets)
    http, ws = ("https", "wss") if certificates is not None else ("http", "ws")
    which = f", worker {worker.index} of {worker.count}" if worker is not None else ""
    for sock in sockets:
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        log.info(
            "listening on %s://%s:%d (WebSocket %s://%s:%d/ws?tenant_id=...%s)",
            http,
            shown,
            port,
            ws,
            shown,
            port,
            which,
        )
    # Everything allocated so far lives as long as the process: keep it out of the
    # collector's generations, so collections do not rescan it during broadcasts.
    gc.collect()
    gc.freeze()
    try:
        await stop.wait()
    finally:
        log.info("shutting down: closing clients (1001), stopping sources")
        server.stop()
        if certificates is not None:
            await certificates.stop()
        if peers is not None:
            peers.close()
        drain = settings.drain_timeout
        try:
            await asyncio.wait_for(core.stop(), drain)
            await asyncio.wait_for(server.close_all_connections(), drain)
        except TimeoutError:
            log.warning("shutdown took longer than %.1f s; exiting anyway", drain)
        uninstall_signal_handlers()

"""The embedded broker under ``--workers N``: worker 0 holds it, the others follow it.

Without a shared broker the event log lives in one process. So worker 0 (the leader) runs the
embedded broker and every source, as a single server does, and serves the other workers (the
followers) on a unix socket in the workers' private folder; a follower runs no source and no
broker of its own, and its ``FollowerBroker`` asks the leader for what a broker answers. Event
ids, history, resume and idempotence are therefore the leader's, whichever worker a client
reaches.

The link is newline-delimited JSON, one stream per follower:

* leader to follower: every event the leader's broker delivers (``{"e": id, "b": body}``),
  source gaps to pass on to the follower's own clients (``{"g": ...}``), and the answers to the
  follower's requests (``{"id": n, "ok": result}``, ``"unavailable"`` or ``"error"``);
* follower to leader: ``catch_up`` (the answer carries the tenant's manifest, which only the
  leader's sources know; the follower keeps the latest per tenant for its ``Welcome`` and
  ``Resync``), ``publish`` and ``publish_many`` (the publish API on a follower), ``manifest``
  and ``file`` (the files API on a follower: the leader's list, and the bytes of a served file),
  ``content`` (content handed with an event on a follower, kept by the leader for every worker
  as Redis keeps it for every node: ``Broker.store_content`` and ``stored_*``).

One stream carries both events and answers, in the order the leader wrote them, so a
subscriber's catch-up and the live events around it are ordered as within one process.

A follower that loses its leader (the leader died or is restarting) cannot serve events: it
shuts down gracefully (its clients get 1001, reconnect and resume) and its supervisor starts it
again, to follow the next leader.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from ..events import Event, encode_json
from . import Broker, BrokerUnavailable, Catchup, Deliver

log = logging.getLogger("cfgpush.broker.link")

LINE_LIMIT = 64 * 1024 * 1024  # one catch-up answer: a whole history at most
# A follower that does not read (stuck) is dropped past this backlog: it restarts and resumes.
MAX_BACKLOG = 64 * 1024 * 1024
CALL_TIMEOUT = 30.0
CONNECT_TIMEOUT = 120.0  # the leader starts its sources before it serves anyone
MANIFEST_TTL = 1.0
MANIFESTS_KEPT = 1024  # tenants whose manifest the leader keeps ready, or a follower keeps


class LeaderLink:
    """The leader's side: events and gaps out to every follower, their requests answered."""

    def __init__(
        self,
        path: str,
        manifest: Callable[[str], dict[str, str] | None],
        files: Callable[[str, str], Awaitable[dict[str, Any]]] | None = None,
        content: Callable[[str, dict[str, Any]], Awaitable[Any]] | None = None,
    ):
        self.path = path
        self.manifest = manifest
        self.content = content  # (store | checksum | body | files, request): handed content, kept here
        self.files = files  # (tenant, path) -> {"body": base64} | {"changing": True} | {}: the files API
        self.broker: Broker | None = None
        self.followers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.AbstractServer | None = None
        # A storm of subscribers on the followers asks for the same manifest thousands of times:
        # computed once per tenant and newest event, for at most MANIFEST_TTL seconds.
        self._manifests: OrderedDict[str, tuple[str | None, float, dict[str, str] | None]] = OrderedDict()

    def _manifest(self, tenant_id: str, newest: str | None) -> dict[str, str] | None:
        now = time.monotonic()
        cached = self._manifests.get(tenant_id)
        if cached is not None and cached[0] == newest and now - cached[1] < MANIFEST_TTL:
            return cached[2]
        manifest = self.manifest(tenant_id)
        self._manifests[tenant_id] = (newest, now, manifest)
        self._manifests.move_to_end(tenant_id)
        while len(self._manifests) > MANIFESTS_KEPT:
            self._manifests.popitem(last=False)
        return manifest

    async def start(self, broker: Broker) -> None:
        self.broker = broker
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # the previous leader's
        self._server = await asyncio.start_unix_server(self._serve, path=self.path, limit=LINE_LIMIT)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self.followers):
            writer.close()
        self.followers.clear()

    # -- out ------------------------------------------------------------------------------------

    def _send(self, line: bytes) -> None:
        for writer in list(self.followers):
            transport = writer.transport
            if transport.is_closing():
                continue
            if transport.get_write_buffer_size() > MAX_BACKLOG:
                log.warning("a follower worker stopped reading; dropping its link")
                transport.abort()
                continue
            writer.write(line)

    def event(self, event: Event) -> None:
        """Encoded once, written to every follower."""
        if self.followers:
            self._send((encode_json({"e": event.event_id, "b": event.body}) + "\n").encode())

    def gap(self, tenant_ids: Iterable[str] | None, source: str, reason: str) -> None:
        if self.followers:
            tenants = None if tenant_ids is None else sorted(set(tenant_ids))
            self._send((encode_json({"g": {"t": tenants, "s": source, "r": reason}}) + "\n").encode())

    # -- in -------------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.followers.add(writer)
        tasks: set[asyncio.Task] = set()
        try:
            while line := await reader.readline():
                task = asyncio.ensure_future(self._answer(json.loads(line), writer))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        except (OSError, ValueError) as exc:  # a broken link or line: the follower restarts
            log.warning("follower link failed: %s", exc)
        finally:
            self.followers.discard(writer)
            writer.close()

    async def _answer(self, request: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        broker = self.broker
        assert broker is not None
        answer: dict[str, Any] = {"id": request.get("id")}
        try:
            op = request["op"]
            if op == "catch_up":
                tenant_id = request["t"]
                catchup = await broker.catch_up(tenant_id, request.get("s"))
                answer["ok"] = {
                    "last": catchup.last_event_id,
                    "events": [[e.event_id, e.body] for e in catchup.events],
                    "resync": catchup.resync,
                    "manifest": self._manifest(tenant_id, catchup.last_event_id),
                }
            elif op == "manifest":
                answer["ok"] = self.manifest(request["t"])
            elif op == "file" and self.files is not None:
                answer["ok"] = await self.files(request["t"], request["p"])
            elif op == "content" and self.content is not None:
                answer["ok"] = await self.content(request["k"], request)
            elif op == "publish":
                answer["ok"] = await broker.publish(request["f"], version=request.get("v"))
            elif op == "publish_many":
                answer["ok"] = await broker.publish_many([(f, v) for f, v in request["i"]])
            else:
                answer["error"] = f"unknown request {op!r}"
        except BrokerUnavailable as exc:
            answer["unavailable"] = str(exc)
        except Exception as exc:
            log.exception("answering a follower worker's %s failed", request.get("op"))
            answer["error"] = f"{type(exc).__name__}: {exc}"
        if not writer.transport.is_closing():
            writer.write((encode_json(answer) + "\n").encode())


class FollowerBroker(Broker):
    """A follower's broker: the leader's, over the link."""

    def __init__(
        self,
        deliver: Deliver,
        path: str,
        on_gap: Callable[[list[str] | None, str, str], None],
        on_lost: Callable[[], None],
    ):
        super().__init__(deliver)
        self.path = path
        self.on_gap = on_gap
        self.on_lost = on_lost
        self._manifests: OrderedDict[str, dict[str, str] | None] = OrderedDict()  # the latest, LRU
        self._pending: dict[int, asyncio.Future] = {}
        self._ids = itertools.count(1)
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task | None = None
        self._stopping = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CONNECT_TIMEOUT
        while True:
            try:
                reader, self._writer = await asyncio.open_unix_connection(self.path, limit=LINE_LIMIT)
                break
            except OSError:
                if loop.time() > deadline:
                    raise BrokerUnavailable(f"no leader worker at {self.path}") from None
                await asyncio.sleep(0.1)
        self._reader_task = asyncio.ensure_future(self._read(reader))
        log.info("following the leader worker")

    async def stop(self) -> None:
        self._stopping = True
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    async def _read(self, reader: asyncio.StreamReader) -> None:
        try:
            while line := await reader.readline():
                message = json.loads(line)
                if "e" in message:
                    self.deliver(Event(message["e"], message["b"]))
                elif "g" in message:
                    gap = message["g"]
                    self.on_gap(gap["t"], gap["s"], gap["r"])
                else:
                    future = self._pending.pop(message.get("id"), None)
                    if future is not None and not future.done():
                        future.set_result(message)
        except (OSError, ValueError) as exc:
            log.error("the link to the leader worker failed: %s", exc)
        self._writer = None
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BrokerUnavailable("the leader worker is gone"))
        self._pending.clear()
        if not self._stopping:
            log.error("the leader worker is gone: this worker stops, to follow the next one")
            self.on_lost()

    async def _call(self, op: str, **args: Any) -> Any:
        writer = self._writer
        if writer is None:
            raise BrokerUnavailable("the leader worker is unreachable")
        call_id = next(self._ids)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        writer.write((encode_json({"id": call_id, "op": op, **args}) + "\n").encode())
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                answer = await future
        except TimeoutError:
            raise BrokerUnavailable(f"the leader worker did not answer {op} in {CALL_TIMEOUT:.0f} s") from None
        finally:
            self._pending.pop(call_id, None)
        if "ok" in answer:
            return answer["ok"]
        if "unavailable" in answer:
            raise BrokerUnavailable(answer["unavailable"])
        raise RuntimeError(f"the leader worker could not {op}: {answer.get('error')}")

    async def publish(self, fields: dict[str, Any], version: int | None = None) -> str:
        return await self._call("publish", f=fields, v=version)

    async def publish_many(self, items: list[tuple[dict[str, Any], int | None]]) -> list[str]:
        return await self._call("publish_many", i=[[f, v] for f, v in items])

    async def catch_up(self, tenant_id: str, since: str | None) -> Catchup:
        found = await self._call("catch_up", t=tenant_id, s=since)
        self._keep_manifest(tenant_id, found["manifest"])
        return Catchup(found["last"], [Event(i, body) for i, body in found["events"]], found["resync"])

    def manifest(self, tenant_id: str) -> dict[str, str] | None:
        """The tenant's manifest as of the last catch-up or refresh (the leader's sources know it)."""
        return self._manifests.get(tenant_id)

    async def refresh_manifest(self, tenant_id: str) -> None:
        self._keep_manifest(tenant_id, await self._call("manifest", t=tenant_id))

    def _keep_manifest(self, tenant_id: str, manifest: dict[str, str] | None) -> None:
        self._manifests[tenant_id] = manifest
        self._manifests.move_to_end(tenant_id)
        while len(self._manifests) > MANIFESTS_KEPT:
            self._manifests.popitem(last=False)

    # Content handed with events (emit(..., content=), the publish API's content): the leader
    # keeps it for every worker, as Redis does for every node.

    async def store_content(self, tenant_id: str, path: str, checksum: str, data: bytes) -> None:
        await self._call("content", k="store", t=tenant_id, p=path, c=checksum, d=base64.b64encode(data).decode())

    async def stored_checksum(self, tenant_id: str, path: str) -> str | None:
        return await self._call("content", k="checksum", t=tenant_id, p=path)

    async def stored_content(self, tenant_id: str, path: str) -> bytes | None:
        body = await self._call("content", k="body", t=tenant_id, p=path)
        return base64.b64decode(body) if body is not None else None

    async def stored_files(self, tenant_id: str) -> dict[str, str]:
        return await self._call("content", k="files", t=tenant_id)

    async def file(self, tenant_id: str, path: str) -> dict[str, Any]:
        """The leader's files API answer for a served file (see ``LeaderLink.files``)."""
        return await self._call("file", t=tenant_id, p=path)

    def readiness(self) -> str | None:
        return None if self._writer is not None else "the leader worker (worker 0) is unreachable"

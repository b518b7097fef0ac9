"""Runs every event source under supervision: a crash is logged and restarted with backoff.

A source never takes another source or the server down, and its supervisor never exits while
the server runs (whatever fails in it is logged, and it tries again). Each source gets its own
``emit``, bound to its name, so logs and counters say which source an event or a rejection
came from.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

from marshmallow import ValidationError

from .. import EventSource
from ..broker import BrokerUnavailable, Published
from ..content import ContentRefused
from ..logs import bind as bind_log_context
from ..schemas import flatten_messages

log = logging.getLogger("cfgpush.sources")

Publish = Callable[..., Awaitable[str]]  # (payload, source, *, version) -> event id
PublishMany = Callable[..., Awaitable[list]]  # (payloads, source, versions) -> ids or ValidationErrors
EMIT_RETRY_FIRST, EMIT_RETRY_MAX = 0.1, 5.0
Gap = Callable[[Iterable[str] | None, str], Awaitable[None]]
Count = Callable[[str, str], None]  # (source, reason): cfgpush_events_rejected_total
# Distinct skipped changes remembered so that each is logged once (a file saved again and again
# is one log line), however many times it is counted.
LOGGED_SKIPS = 4096


class SourceEmit:
    """What a source's ``run`` receives.

    ``await emit(payload)`` validates, publishes and returns the event id (or raises
    ``marshmallow.ValidationError``); ``await emit(payload, content=data)`` hands the path's new
    bytes too (checked by the validation gate: ``content.ContentRefused``, nothing published;
    served by the files API and patched when the path matches ``--serve-content``); ``await emit.gap(tenant_ids)`` says the source may have
    lost events of those tenants (None: of any tenant), and their clients get ``Resync``
    with reason ``source_gap``; ``await emit.skipped(tenant_id, what, reason)`` says it met a
    change it cannot publish (logged once, counted, and that tenant's clients get ``Resync``).

    Each ``emit`` lets the event loop run once before it publishes: a source that publishes
    thousands of events in a row (a burst of file changes) then never holds the loop for
    longer than one event takes, however fast it calls.
    """

    __slots__ = ("source_name", "_runner")

    def __init__(self, runner: SourceRunner, source_name: str):
        self._runner = runner
        self.source_name = source_name

    async def __call__(
        self, payload: dict[str, Any], *, version: int | None = None, content: bytes | None = None
    ) -> str:
        runner = self._runner
        await asyncio.sleep(0)
        with runner.emitting(self.source_name):
            if content is None:  # the publish of a source that hands no content stays as it was
                return await self._retrying(lambda: runner._publish(payload, self.source_name, version=version))
            return await self._retrying(
                lambda: runner._publish(payload, self.source_name, version=version, content=content)
            )

    async def many(
        self, payloads: list[dict[str, Any]], *, versions: list[int | None] | None = None
    ) -> list[str | ValidationError]:
        """Publish several events, in order, at once (with a shared broker, one round trip for
        all of them: throughput then does not depend on the link's latency). Returns, per
        payload, its event id or the ``ValidationError`` that refused it (logged and counted
        like ``emit``'s); raises ``BrokerUnavailable`` as ``emit`` does, after which any of
        them may have been published (publishing one again is harmless: see ``emit``)."""
        runner, name = self._runner, self.source_name
        await asyncio.sleep(0)
        with runner.emitting(name):
            results = await self._retrying(lambda: runner._publish_many(payloads, name, versions))
        for result in results:
            if isinstance(result, ValidationError):
                self._refused(result)
        return results

    def _refused(self, exc: ValidationError) -> None:
        runner, name = self._runner, self.source_name
        runner.rejected[name] = runner.rejected.get(name, 0) + 1
        runner.log_once(
            logging.WARNING,
            (name, "invalid", repr(exc.messages)),
            "source %s: invalid event refused: %s",
            name,
            flatten_messages(exc.messages),
        )

    async def _retrying(self, attempt: Callable[[], Awaitable[Any]]) -> Any:
        name = self.source_name
        delay = EMIT_RETRY_FIRST
        deadline = time.monotonic() + self._runner.emit_retry_limit
        while True:
            try:
                return await attempt()
            except ValidationError as exc:
                self._refused(exc)
                raise
            except ContentRefused as exc:
                self._runner.log_once(
                    logging.WARNING,
                    (name, "invalid_content", str(exc)),
                    "source %s: content refused by the validation gate: %s",
                    name,
                    exc,
                )
                raise
            except BrokerUnavailable as exc:
                # A shared broker's outage is usually short: wait it out (jittered, bounded)
                # rather than crash the source and resync every client. Past the bound the
                # error propagates: the source restarts and its clients resynchronise.
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("source %s: broker unavailable (%s); retrying in %.1f s", name, exc, delay)
                await asyncio.sleep(random.uniform(delay / 2, delay))
                delay = min(delay * 2, EMIT_RETRY_MAX)

    async def published_states(self, tenant_id: str) -> Published:
        """The tenant's paths as this source (by its name, on any node) last published them,
        and since when the tenant's record is kept: what a source compares with at start, to
        report what changed while it was down. Empty with the embedded broker after a restart."""
        return await self._runner._published_states(tenant_id, self.source_name)

    async def skipped(
        self, tenant_id: str, what: str, why: str, reason: str = "invalid", *, resync: bool = True
    ) -> None:
        """A change of ``what`` (a path, say) of ``tenant_id`` that cannot be published, ``why``
        in words; ``reason`` is the ``cfgpush_events_rejected_total`` label (a short constant).
        Its clients are told to reload (``Resync`` ``source_gap``) rather than hold what may be
        stale; nothing of it reaches another tenant. ``resync=False``: the source sends one
        ``gap`` for many skipped changes itself."""
        runner = self._runner
        runner._count(self.source_name, reason)
        runner.log_once(
            logging.WARNING,
            (self.source_name, tenant_id, what, why),
            "source %s: a change of tenant %s cannot be published (%s): %s%s",
            self.source_name,
            tenant_id,
            what,
            why,
            "; its clients resync" if resync else "",
        )
        if resync:
            await runner._gap([tenant_id], self.source_name)

    async def gap(self, tenant_ids: Iterable[str] | None = None) -> None:
        log.warning(
            "source %s reports lost events (tenants: %s)",
            self.source_name,
            "all" if tenant_ids is None else ", ".join(sorted(tenant_ids)) or "none",
        )
        await self._runner._gap(tenant_ids, self.source_name)


def tenants_of(source: EventSource) -> Iterable[str] | None:
    """The tenants a source serves, when it can say (optional ``tenants()``), else None."""
    lister = getattr(source, "tenants", None)
    return lister() if callable(lister) else None


class SourceRunner:
    def __init__(
        self,
        sources: list[EventSource],
        publish: Publish,
        *,
        publish_many: PublishMany | None = None,
        gap: Gap | None = None,
        published_states: Callable[[str, str], Awaitable[Published]] | None = None,
        count_rejected: Count | None = None,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        emit_retry_limit: float = 60.0,
    ):
        self.sources = sources
        self._publish = publish
        self._publish_many = publish_many if publish_many is not None else self._one_by_one
        # source -> when the oldest emit under way started (for its publish lag)
        self._emitting: dict[str, list[float]] = {}
        self._gap = gap if gap is not None else _no_gap
        self._published_states = published_states if published_states is not None else _no_states
        self._count = count_rejected if count_rejected is not None else _no_count
        self._logged: OrderedDict[tuple, None] = OrderedDict()
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.emit_retry_limit = emit_retry_limit  # seconds emit waits out a broker outage
        self._tasks: dict[str, asyncio.Task] = {}
        self.restarts: dict[str, int] = {s.name: 0 for s in sources}
        self.rejected: dict[str, int] = {s.name: 0 for s in sources}
        self.running: set[str] = set()
        self.finished: set[str] = set()  # sources whose run returned: done, not failing

    async def _one_by_one(
        self, payloads: list[dict[str, Any]], source: str, versions: list[int | None] | None = None
    ) -> list:
        results: list = []
        for i, payload in enumerate(payloads):
            try:
                results.append(await self._publish(payload, source, version=versions[i] if versions else None))
            except ValidationError as exc:
                results.append(exc)
        return results

    @contextlib.contextmanager
    def emitting(self, source: str) -> Iterator[None]:
        """Marks an emit under way, for ``publish_lag``."""
        started = self._emitting.setdefault(source, [])
        now = time.monotonic()
        started.append(now)
        try:
            yield
        finally:
            started.remove(now)

    def publish_lag(self, source: EventSource) -> float:
        """How long the oldest change of ``source`` has waited to be published, in seconds: the
        source's own figure when it keeps changes queued (``publish_lag()``), else the age of
        the oldest emit under way (a broker outage, a slow link)."""
        own = getattr(source, "publish_lag", None)
        lag = own() if callable(own) else 0.0
        started = self._emitting.get(source.name)
        if started:
            lag = max(lag, time.monotonic() - min(started))
        return lag

    def log_once(self, level: int, marker: tuple, message: str, *args: Any) -> None:
        """Log ``message`` the first time ``marker`` is seen (among the last LOGGED_SKIPS), at
        DEBUG after that: one broken file saved a thousand times is one warning."""
        if marker in self._logged:
            self._logged.move_to_end(marker)
            log.debug(message, *args)
            return
        self._logged[marker] = None
        if len(self._logged) > LOGGED_SKIPS:
            self._logged.popitem(last=False)
        log.log(level, message, *args)

    def emit_for(self, source: EventSource) -> SourceEmit:
        return SourceEmit(self, source.name)

    def start(self) -> None:
        for source in self.sources:
            self._tasks[source.name] = asyncio.create_task(self._supervise(source), name=f"source:{source.name}")

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    async def _supervise(self, source: EventSource) -> None:
        name = source.name
        bind_log_context(source=name)  # this task's records (the source's own too) name it
        emit = self.emit_for(source)
        # The delay reads backoff_initial/backoff_max at each failure, not when the task
        # starts, so changing them on a running runner (a test shortening the backoff after
        # start-up) applies from the next failure on.
        delay = 0.0  # no failure yet
        while True:
            started = time.monotonic()
            self.running.add(name)
            try:
                await source.run(emit)
            except asyncio.CancelledError:
                self.running.discard(name)
                raise
            except Exception:
                self.running.discard(name)
                # A source that ran for a while before failing starts again from the short delay.
                if time.monotonic() - started > self.backoff_max:
                    delay = 0.0
                delay = min(delay * 2 if delay else self.backoff_initial, self.backoff_max)
                wait = random.uniform(delay / 2, delay)
                self.restarts[name] = self.restarts.get(name, 0) + 1
                log.exception("source %s crashed; restarting in %.1f s", name, wait)
                await asyncio.sleep(wait)
                # What happened while it was down is unknown: its clients must resynchronise.
                # A failure here (a source whose tenants() raises, say) must not end the
                # supervisor: the source would never run again.
                try:
                    await self._gap(tenants_of(source), name)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("source %s: telling its clients to resync failed", name)
                continue
            self.running.discard(name)
            self.finished.add(name)
            log.info("source %s finished", name)
            return


async def _no_gap(tenant_ids: Iterable[str] | None, source_name: str) -> None:
    return None


async def _no_states(tenant_id: str, source: str) -> Published:
    return Published()


def _no_count(source: str, reason: str) -> None:
    return None

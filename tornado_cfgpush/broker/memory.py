"""The embedded broker: one process, history in memory, ids ``<epoch>-<seq>``.

``epoch`` is the start time in milliseconds, so ids of an earlier run of the server are
recognised as such (and answered with ``Resync``), and ids sort in publication order
within a tenant. Every bound is explicit: history by count and age per tenant, one entry
per file for de-duplication, and one memory bound (``history_max_bytes``) for everything
the broker keeps.

A tenant's record (its history and its idempotence record) lives until its newest event
is older than ``history_ttl``: a sweep, in slices that never hold the loop for more than
about a millisecond, drops expired events and records on time, whatever the tenant does.
What stays of a dropped record is its newest id (``_forgotten``, about 150 bytes, for
``FORGOTTEN_TTL``): configuration is quiet most of the time, and a client that reconnects
holding that id missed nothing, so it resumes without a reload; when the tenant publishes
again, a client at that id gets exactly what followed.
Past the memory bound, the oldest events of all tenants go first (the bound then acts as a
shorter TTL for everyone), each record with its last event, so that no record is left without
history to answer for; records without history (``history_size`` 0) go least recently
published first. Ids are never handed out twice: a record created after another was dropped
numbers its events above every seq of the dropped ones (``_floor``), so an id a client still
holds from before can only be answered with ``Resync``, or, when it was its tenant's very
last, with exactly what followed.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from time import perf_counter
from typing import Any

from ..events import Event
from ..rules import parse_event_id
from . import (
    HISTORY_EXPIRED,
    UNKNOWN_EPOCH,
    UNKNOWN_EVENT_ID,
    Broker,
    BrokerState,
    Catchup,
    Deliver,
    Published,
)

log = logging.getLogger("cfgpush.broker.memory")

# What the memory bound counts: what each kept event, record and path costs the process,
# fitted with tracemalloc on CPython 3.11 over varied events (1 to 1 000 per tenant, diffs of
# 0 to 20 pointers, paths of 5 to 70 characters: within 1 %). An event costs its JSON text,
# STRING_OVERHEAD per string in it (each decoded value is an object of its own, each key a
# slot), less EVENT_SHARED (what the envelope's keys share); a tenant's record costs
# TENANT_OVERHEAD, and each path of its idempotence record PATH_OVERHEAD and its length.
STRING_OVERHEAD = 70
EVENT_SHARED = 145
TENANT_OVERHEAD = 525
PATH_OVERHEAD = 125  # 85 fitted with tracemalloc, plus the version (an int and its slot)
FORGOTTEN_OVERHEAD = 150  # a dropped tenant's newest id: its name, an int, a dict slot
# How long a dropped tenant's newest id is kept (the Redis broker keeps its record as long).
FORGOTTEN_TTL = 7 * 24 * 3600.0
# The sweep: at most this long on the loop at a time, then it lets others run.
SWEEP_BUDGET = 0.001
SWEEP_INTERVAL_MAX = 1.0

# Why a tenant's record was dropped (BrokerState.dropped, /metrics).
EXPIRED = "expired"
OVER_MEMORY = "memory"

_last_epoch = 0


def _new_epoch(clock: Callable[[], float]) -> int:
    """Milliseconds since 1970, and never the same twice in one process (two brokers
    started within a millisecond, as tests do, must not accept each other's ids)."""
    global _last_epoch
    _last_epoch = max(int(clock() * 1000), _last_epoch + 1)
    return _last_epoch


def event_cost(event: Event) -> int:
    """The bytes one kept event counts for in the memory bound."""
    text = event.text
    return len(text) + STRING_OVERHEAD * (text.count('"') // 2) - EVENT_SHARED


def path_cost(path: str) -> int:
    return PATH_OVERHEAD + len(path)


def forgotten_cost(tenant_id: str) -> int:
    return FORGOTTEN_OVERHEAD + len(tenant_id)


class _TenantLog:
    __slots__ = ("tenant_id", "seq", "first", "before", "history", "last_by_path", "last_time", "bytes", "queued")

    def __init__(self, tenant_id: str, seq: int, before: int = 0) -> None:
        self.tenant_id = tenant_id
        self.seq = seq  # the newest event's seq; the next event gets seq + 1
        self.first = seq + 1  # this record's first seq
        self.before = before  # the tenant's newest seq before this record (0: none known)
        # (publication time, event, its cost), oldest first: a contiguous run of seqs ending
        # at ``seq``. A list, not a deque: an empty deque alone costs 760 bytes per tenant.
        self.history: list[tuple[float, Event, int]] = []
        # path -> (state: "deleted", the checksum, or "" when not comparable; event id; source;
        # version or None): the idempotence record, and the order of observations.
        self.last_by_path: dict[str, tuple[str, str, str, int | None]] = {}
        self.last_time = 0.0  # when the newest event was published
        self.bytes = TENANT_OVERHEAD  # what this record counts for in the memory bound
        self.queued = False  # whether the expiry heap holds an entry for this record


def _dedupe_key(fields: dict[str, Any]) -> str | None:
    """The state an event leaves its path in, or None when it is not comparable.

    Only ``created``/``modified`` with a checksum and ``deleted`` are compared: a ``moved``
    event says something (the old path is gone) even when the new content is the same.
    """
    change = fields["change_type"]
    if not fields.get("path"):
        return None
    if change == "deleted":
        return "deleted"
    if change in ("created", "modified") and fields.get("checksum"):
        return fields["checksum"]
    return None


class MemoryBroker(Broker):
    def __init__(
        self,
        deliver: Deliver,
        *,
        history_size: int = 1000,
        history_ttl: float = 600.0,
        history_max_bytes: int = 256 * 1024 * 1024,
        clock: Callable[[], float] = time.time,
    ):
        super().__init__(deliver)
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.history_max_bytes = history_max_bytes
        self._clock = clock
        self.epoch = _new_epoch(clock)
        # Least recently published first: the order of expiry and of eviction past the bound.
        self._tenants: OrderedDict[str, _TenantLog] = OrderedDict()
        # (oldest event's time, tiebreak, record): the records whose history holds events,
        # each at most once (``queued``), so that the sweep finds expired events, and the
        # memory bound the oldest events, without a walk. An entry's time may be older than
        # its record's oldest event (trimmed by count since): it is then pushed again.
        self._expiry: list[tuple[float, int, _TenantLog]] = []
        self._tiebreak = itertools.count()
        self._floor = 0  # the highest seq of any dropped record: new records number above it
        # tenant -> (its newest seq, when its record was dropped), oldest first.
        self._forgotten: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._high = 0  # the highest seq handed out
        self.bytes = 0  # what every record counts for together
        self.dropped = {EXPIRED: 0, OVER_MEMORY: 0}  # tenants' records
        self.evicted_events = 0  # events dropped before their time by the memory bound
        self._sweeper: asyncio.Task | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.ensure_future(self._sweep_forever())

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            try:
                await self._sweeper
            except asyncio.CancelledError:
                pass
            self._sweeper = None

    def state(self) -> BrokerState:
        return BrokerState(
            tenants=len(self._tenants),
            history_bytes=self.bytes,
            dropped=dict(self.dropped),
            evicted_events=self.evicted_events,
            forgotten=len(self._forgotten),
        )

    # -- publish --------------------------------------------------------------------------------

    async def publish(self, fields: dict[str, Any], version: int | None = None) -> str:
        tenant_id = fields["tenant_id"]
        now = self._clock()
        log = self._live_log(tenant_id, now)
        if log is None:
            before = self._forgotten.pop(tenant_id, None)
            if before is not None:
                self.bytes -= forgotten_cost(tenant_id)
            log = self._tenants[tenant_id] = _TenantLog(tenant_id, self._floor, before[0] if before else 0)
            self.bytes += log.bytes
        key = _dedupe_key(fields)
        path = fields.get("path")
        previous = log.last_by_path.get(path) if path else None
        if path and previous is not None:
            state, previous_id, by, recorded = previous
            if version is not None and recorded is not None and version < recorded:
                return previous_id  # another node published a newer observation of this path
            if key is not None and state == key:
                if version is not None and (recorded is None or version > recorded):
                    log.last_by_path[path] = (state, previous_id, by, version)
                return previous_id
        log.seq += 1
        self._high = max(self._high, log.seq)
        event = Event(f"{self.epoch}-{log.seq}", fields)
        if path:
            source = fields.get("source") or ""
            self._record_path(log, path, (key or "", event.event_id, source, version))
            old_path = (fields.get("meta") or {}).get("old_path")
            if fields["change_type"] == "moved" and isinstance(old_path, str):
                self._record_path(log, old_path, ("deleted", event.event_id, source, version))
        cost = event_cost(event)
        log.history.append((now, event, cost))
        log.bytes += cost
        self.bytes += cost
        log.last_time = now
        self._tenants.move_to_end(tenant_id)
        self._trim(log, now)
        if log.history and not log.queued:
            self._queue(log)
        self._bound_memory(log)
        self.deliver(event)
        return event.event_id

    def _record_path(self, log: _TenantLog, path: str, entry: tuple[str, str, str, int | None] | None) -> None:
        """Set (or, with None, forget) a path's idempotence record, keeping the counts."""
        had = path in log.last_by_path
        if entry is None:
            if had:
                del log.last_by_path[path]
                self._count(log, -path_cost(path))
            return
        log.last_by_path[path] = entry
        if not had:
            self._count(log, path_cost(path))

    def _count(self, log: _TenantLog, delta: int) -> None:
        log.bytes += delta
        self.bytes += delta

    def _trim(self, log: _TenantLog, now: float) -> None:
        """Keep the newest ``history_size`` events younger than ``history_ttl``."""
        history = log.history
        cutoff = now - self.history_ttl
        drop = max(len(history) - self.history_size, 0)
        while drop < len(history) and history[drop][0] < cutoff:
            drop += 1
        self._drop_oldest(log, drop)

    def _drop_oldest(self, log: _TenantLog, count: int) -> None:
        if count > 0:
            freed = sum(cost for _, _, cost in log.history[:count])
            del log.history[:count]
            self._count(log, -freed)

    def _bound_memory(self, current: _TenantLog) -> None:
        """Past ``history_max_bytes``: drop the oldest events of all tenants first (their
        resuming clients get ``Resync``), a record with its last event; then records without
        history, least recently published first; then the publishing tenant's own idempotence
        record. Never the event just published."""
        if self.bytes <= self.history_max_bytes:
            return
        forgotten = self._forgotten
        while self.bytes > self.history_max_bytes and forgotten:  # the least valuable first
            tenant_id, _ = forgotten.popitem(last=False)
            self.bytes -= forgotten_cost(tenant_id)
        expiry, tenants = self._expiry, self._tenants
        held = None
        while self.bytes > self.history_max_bytes and expiry:
            queued_at, _, log = heapq.heappop(expiry)
            if tenants.get(log.tenant_id) is not log:
                continue  # the record was dropped since
            log.queued = False
            if not log.history:
                continue  # emptied by the TTL since (a catch-up's trim): nothing to take
            if log is current and len(log.history) == 1:
                held = log  # its newest event stays; it goes back into the heap below
            elif queued_at < log.history[0][0]:
                self._queue(log)  # its oldest went by count since: in its place, then
            else:
                self._drop_oldest(log, 1)
                self.evicted_events += 1
                if log.history:
                    self._queue(log)
                else:
                    self._drop(log.tenant_id, log, OVER_MEMORY)
        if held is not None:
            self._queue(held)
        while self.bytes > self.history_max_bytes and len(tenants) > 1:
            tenant_id, log = next(iter(tenants.items()))  # not ``current``: it is the newest
            self._drop(tenant_id, log, OVER_MEMORY)
        if self.bytes > self.history_max_bytes:
            newest = current.history[-1][1].body if current.history else {}
            keep = {p for p in (newest.get("path"), (newest.get("meta") or {}).get("old_path")) if isinstance(p, str)}
            for path in [p for p in current.last_by_path if p not in keep]:
                self._record_path(current, path, None)

    # -- expiry ---------------------------------------------------------------------------------

    def _live_log(self, tenant_id: str, now: float) -> _TenantLog | None:
        """The tenant's record, or None when it has none or it has just expired (dropped here
        rather than at the next sweep, so that the answer never depends on the sweep's timing)."""
        log = self._tenants.get(tenant_id)
        if log is not None and log.last_time < now - self.history_ttl:
            self._drop(tenant_id, log, EXPIRED)
            return None
        return log

    def _drop(self, tenant_id: str, log: _TenantLog, reason: str) -> None:
        del self._tenants[tenant_id]
        self.bytes -= log.bytes
        self._floor = max(self._floor, log.seq)
        if log.seq:
            self._forgotten[tenant_id] = (log.seq, self._clock())
            self.bytes += forgotten_cost(tenant_id)
        self.dropped[reason] += 1
        # An expiry-heap entry of it, if any, is recognised as stale when it comes up: its
        # time is past (a record is dropped with history only when that has expired, or by
        # the memory bound, which took the entry out), and it holds an empty shell until then.
        log.history = []
        log.last_by_path = {}

    def _queue(self, log: _TenantLog) -> None:
        log.queued = True
        heapq.heappush(self._expiry, (log.history[0][0], next(self._tiebreak), log))

    def sweep(self, budget: float = SWEEP_BUDGET) -> bool:
        """Drop what is older than ``history_ttl``: whole records first (the least recently
        published are at the front), then the expired events of the others. Returns False
        when the budget ran out with work left (call again after letting the loop run)."""
        now = self._clock()
        cutoff = now - self.history_ttl
        deadline = perf_counter() + budget
        tenants = self._tenants
        while tenants:
            tenant_id, log = next(iter(tenants.items()))
            if log.last_time >= cutoff:
                break
            self._drop(tenant_id, log, EXPIRED)
            if perf_counter() > deadline:
                return False
        forgotten = self._forgotten
        while forgotten:
            tenant_id, (_, dropped_at) = next(iter(forgotten.items()))
            if dropped_at >= now - FORGOTTEN_TTL:
                break
            del forgotten[tenant_id]
            self.bytes -= forgotten_cost(tenant_id)
            if perf_counter() > deadline:
                return False
        expiry = self._expiry
        while expiry and expiry[0][0] < cutoff:
            _, _, log = heapq.heappop(expiry)
            if tenants.get(log.tenant_id) is log:  # else the record was dropped since
                log.queued = False
                self._trim(log, now)
                if log.history:
                    self._queue(log)  # at the time its oldest event expires
            if perf_counter() > deadline:
                return False
        if not self._tenants and not expiry:
            # Dicts and lists keep their peak size: start afresh once nothing is left.
            self._tenants, self._expiry = OrderedDict(), []
        if not forgotten:
            self._forgotten = OrderedDict()
        return True

    @property
    def sweep_interval(self) -> float:
        return min(SWEEP_INTERVAL_MAX, max(self.history_ttl / 4, 0.01))

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(self.sweep_interval)
            try:
                while not self.sweep():  # noqa: ASYNC110  (slices of work, not a wait for a condition)
                    await asyncio.sleep(0)  # let the loop run between slices
            except Exception:  # a bug here must not stop expiry for good
                log.exception("history sweep failed")

    # -- reading --------------------------------------------------------------------------------

    def newest_event_id(self, tenant_id: str) -> str | None:
        log = self._live_log(tenant_id, self._clock())
        if log is not None:
            return f"{self.epoch}-{log.seq}"
        forgotten = self._forgotten.get(tenant_id)
        return f"{self.epoch}-{forgotten[0]}" if forgotten else None

    async def published_states(self, tenant_id: str, source: str) -> Published:
        log = self._live_log(tenant_id, self._clock())
        if log is None:
            return Published()
        return Published(
            {
                path: None if state == "deleted" else state
                for path, (state, _, by, _) in log.last_by_path.items()
                if by == source and state
            }
        )

    async def catch_up(self, tenant_id: str, since: str | None) -> Catchup:
        newest = self.newest_event_id(tenant_id)
        if since is None or since == newest:
            return Catchup(newest)
        try:
            epoch, seq = parse_event_id(since)
        except ValueError:
            return Catchup(newest, resync=UNKNOWN_EVENT_ID)
        if epoch != self.epoch:
            return Catchup(newest, resync=UNKNOWN_EPOCH)
        log = self._tenants.get(tenant_id)
        if log is None:
            # Forgotten (its newest id, answered above, is all that is left) or never seen:
            # an id we handed out may have been this tenant's, and what followed it is gone;
            # a higher one was never handed out.
            return Catchup(newest, resync=HISTORY_EXPIRED if seq <= self._high else UNKNOWN_EVENT_ID)
        if seq > log.seq:
            return Catchup(newest, resync=UNKNOWN_EVENT_ID)
        self._trim(log, self._clock())
        history = log.history
        # History holds a contiguous run ending at seq. A record created after the tenant's
        # previous one was dropped starts above ``_floor``: its events follow the tenant's
        # newest id before it (``before``) directly, so a client at that id gets them all,
        # while the first of them is still kept. Any other id below ``first`` is of events gone.
        oldest_seq = log.seq - len(history) + 1
        if seq < log.first:  # an id of before this record
            if log.before and seq == log.before and oldest_seq == log.first:
                return Catchup(newest, [event for _, event, _ in history])
            return Catchup(newest, resync=HISTORY_EXPIRED)
        if seq + 1 < oldest_seq:
            return Catchup(newest, resync=HISTORY_EXPIRED)
        skip = seq + 1 - oldest_seq
        return Catchup(newest, [event for _, event, _ in history[skip:]])

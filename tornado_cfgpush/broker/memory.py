"""The embedded broker: one process, history in memory, ids ``<epoch>-<seq>``.

``epoch`` is the start time in milliseconds, so ids of an earlier run of the server are
recognised as such (and answered with ``Resync``), and ids sort in publication order
within a tenant. Every bound is explicit: history by count and age, one entry per file
for de-duplication.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Any, Callable

from ..events import Event
from ..rules import parse_event_id
from . import (
    HISTORY_EXPIRED,
    UNKNOWN_EPOCH,
    UNKNOWN_EVENT_ID,
    Broker,
    Catchup,
    Deliver,
)


_last_epoch = 0


def _new_epoch(clock: Callable[[], float]) -> int:
    """Milliseconds since 1970, and never the same twice in one process (two brokers
    started within a millisecond, as tests do, must not accept each other's ids)."""
    global _last_epoch
    _last_epoch = max(int(clock() * 1000), _last_epoch + 1)
    return _last_epoch


class _TenantLog:
    __slots__ = ("seq", "history", "last_by_path")

    def __init__(self) -> None:
        self.seq = 0
        self.history: deque[tuple[float, Event]] = deque()
        # path -> (change_type is deleted or checksum, event_id): the idempotence record.
        self.last_by_path: dict[str, tuple[str | None, str, str]] = {}  # path -> (state, id, source)


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
        clock: Callable[[], float] = time.time,
    ):
        super().__init__(deliver)
        self.history_size = history_size
        self.history_ttl = history_ttl
        self._clock = clock
        self.epoch = _new_epoch(clock)
        self._tenants: dict[str, _TenantLog] = {}

    async def publish(self, fields: dict[str, Any]) -> str:
        tenant_id = fields["tenant_id"]
        log = self._tenants.get(tenant_id)
        if log is None:
            log = self._tenants[tenant_id] = _TenantLog()
        key = _dedupe_key(fields)
        path = fields.get("path")
        if key is not None:
            previous = log.last_by_path.get(path)
            if previous is not None and previous[0] == key:
                return previous[1]
        log.seq += 1
        event = Event(f"{self.epoch}-{log.seq}", fields)
        if path:
            if key is None:
                log.last_by_path.pop(path, None)
            else:
                log.last_by_path[path] = (key, event.event_id, fields.get("source") or "")
            old_path = (fields.get("meta") or {}).get("old_path")
            if fields["change_type"] == "moved" and isinstance(old_path, str):
                log.last_by_path[old_path] = ("deleted", event.event_id, fields.get("source") or "")
        now = self._clock()
        log.history.append((now, event))
        self._trim(log, now)
        self.deliver(event)
        return event.event_id

    def _trim(self, log: _TenantLog, now: float) -> None:
        history = log.history
        while len(history) > self.history_size:
            history.popleft()
        cutoff = now - self.history_ttl
        while history and history[0][0] < cutoff:
            history.popleft()

    def newest_event_id(self, tenant_id: str) -> str | None:
        log = self._tenants.get(tenant_id)
        if log is None or log.seq == 0:
            return None
        return f"{self.epoch}-{log.seq}"

    async def published_states(self, tenant_id: str, source: str) -> dict[str, str | None]:
        log = self._tenants.get(tenant_id)
        if log is None:
            return {}
        return {path: None if state == "deleted" else state
                for path, (state, _, by) in log.last_by_path.items() if by == source}

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
        if log is None or seq > log.seq:
            return Catchup(newest, resync=UNKNOWN_EVENT_ID)
        self._trim(log, self._clock())
        history = log.history
        oldest_seq = log.seq - len(history) + 1  # history holds a contiguous run ending at seq
        if seq + 1 < oldest_seq:
            return Catchup(newest, resync=HISTORY_EXPIRED)
        skip = seq + 1 - oldest_seq
        return Catchup(newest, [event for _, event in list(history)[skip:]])

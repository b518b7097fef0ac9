"""The scale-out broker: history in Redis Streams, fan-out over Redis pub/sub.

Per tenant, the stream ``<prefix>{<tenant>}:history`` holds the events; its entry ids
(``<ms>-<seq>``) are the event ids, the same on every node. Each entry also records the id
of the entry before it (``p``), so a reader can tell "nothing is missing between my id and
the oldest entry left" from "something was trimmed" or "this id never existed". The hash
``<prefix>{<tenant>}:paths`` is the idempotence record (path -> state and id), and every
event is announced on the channel ``<prefix>events``, to every node.

The keys expire with the tenant's silence (refreshed by each publish): the stream
``--history-ttl`` after the newest event, when nothing in it may be replayed any more; the
hash, which also records the tenant's newest id (field ``/newest``, never a path), much
later (``RECORD_TTL``). While the hash lives, a quiet tenant's clients resume without a
reload, a new stream continues the old one's chain (its first entry's predecessor is the
recorded newest id, its ids above it), and a restarting node can tell what changed on disk
while it was down. Once the hash is gone too, the tenant is forgotten: ids its clients hold
are answered with ``Resync``, and a restarting node reports nothing for it (its clients
reload anyway, their ids being unknown).

One delivery path: a node's clients get events from pub/sub (its own publications too),
in stream order. ``_cursor`` holds, per tenant with local clients, the newest id this node
has delivered, so whatever overlaps (a stream read after a reconnect, pub/sub messages in
flight) is delivered once. A tenant without local clients has no cursor: its events are not
delivered here, and a first subscriber's catch-up starts it at the newest id. A pub/sub
outage loses messages; after each (re)subscription the listener reads the streams from the
cursors.

A flushed or restarted Redis (without persistence) forgets the streams: ids clients hold
are then answered as ``unknown_event_id`` (or ``history_expired`` once the new streams
are trimmed). There is no epoch. Tested on Redis 7.0; uses nothing newer than 6.2
(exclusive ranges, ``MINID``).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..events import Event, encode_json
from ..rules import parse_event_id
from . import (
    HISTORY_EXPIRED,
    UNKNOWN_EPOCH,
    UNKNOWN_EVENT_ID,
    Broker,
    BrokerState,
    BrokerUnavailable,
    Catchup,
    Deliver,
    Published,
)
from .memory import _dedupe_key

log = logging.getLogger("cfgpush.broker.redis")

# Order, dedupe, append, trim, refresh the keys' expiry and announce in one atomic step: a
# publish is all or nothing, and stream order is pub/sub order. Returns the new id, or the
# recorded id of the path when the event is not published: equal to the path's recorded
# state, or older than its recorded version (another node published a newer observation of
# the same file: publishing this one would roll the file back for every client).
# KEYS: history stream, paths hash. ARGV: body (JSON), path, state ("" = not comparable), old
# path of a move, history size, history ttl (ms), channel, source, record ttl (ms), the newest
# id's field, version ("" = none: digits, microseconds), the epoch's field, a new epoch (used
# when the record has none), the since field, and when the record began (the version, else
# Redis's clock; microseconds), kept with a new epoch. The paths hash holds "<state> <id> <version> <source>" per path
# ("-" for a state that is not comparable and for no version; records written before versions
# were "<state> <id> <source>"), the newest id, and the tenant's epoch: a token made with the
# record, announced with each event, so that a node sees an emptied or replaced Redis, and
# when the record began (published_states).
PUBLISH = """
local path, state, version = ARGV[2], ARGV[3], ARGV[11]
if path ~= '' then
  local previous = redis.call('HGET', KEYS[2], path)
  if previous then
    local pstate, pid, rest = string.match(previous, '^(%S+) (%S+) ?(.*)$')
    local pversion, psource = string.match(rest, '^(%d+) (.*)$')
    if not pversion then
      psource = string.match(rest, '^%- (.*)$') or rest
    end
    if version ~= '' and pversion and tonumber(version) < tonumber(pversion) then
      return pid
    end
    if state ~= '' and pstate == state then
      if version ~= '' and (not pversion or tonumber(version) > tonumber(pversion)) then
        redis.call('HSET', KEYS[2], path, pstate .. ' ' .. pid .. ' ' .. version .. ' ' .. psource)
      end
      return pid
    end
  end
end
local epoch = redis.call('HGET', KEYS[2], ARGV[12])
if not epoch then
  epoch = ARGV[13]
  redis.call('HSET', KEYS[2], ARGV[12], epoch)
  local since = version
  if since == '' then
    local t = redis.call('TIME')
    since = t[1] .. string.format('%06d', tonumber(t[2]))
  end
  redis.call('HSET', KEYS[2], ARGV[14], since)
end
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
local prev = last and last[1] or redis.call('HGET', KEYS[2], ARGV[10]) or '0-0'
local next_id = '*'
if not last and prev ~= '0-0' then
  -- The stream expired, the record did not: continue above the recorded newest id, whatever
  -- Redis's clock says, so that no id is ever handed out twice.
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local ms, seq = string.match(prev, '^(%d+)-(%d+)$')
  if tonumber(ms) >= now then next_id = ms .. '-' .. string.format('%d', tonumber(seq) + 1) end
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[5], next_id, 'p', prev, 'e', ARGV[1])
local ms = tonumber(string.match(id, '^%d+'))
redis.call('XTRIM', KEYS[1], 'MINID', '~', string.format('%d', math.max(ms - tonumber(ARGV[6]), 0)))
if path ~= '' then
  local v = version ~= '' and version or '-'
  local s = state ~= '' and state or '-'
  redis.call('HSET', KEYS[2], path, s .. ' ' .. id .. ' ' .. v .. ' ' .. ARGV[8])
  if ARGV[4] ~= '' then redis.call('HSET', KEYS[2], ARGV[4], 'deleted ' .. id .. ' ' .. v .. ' ' .. ARGV[8]) end
end
redis.call('HSET', KEYS[2], ARGV[10], id)
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('PEXPIRE', KEYS[2], ARGV[9])
redis.call('PUBLISH', ARGV[7], id .. ' ' .. epoch .. ' ' .. ARGV[1])
return id
"""

# A consistent view of one tenant: newest id (the stream's, or the record's once the stream
# expired), oldest entry, the entries after ARGV[1] (at most ARGV[2] of them, "" = all),
# Redis's clock in ms (the stream ids' clock) and the tenant's epoch. KEYS: history stream,
# paths hash; ARGV[3]: the newest id's field; ARGV[4]: the epoch's field.
READ = """
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
newest = newest and newest[1] or redis.call('HGET', KEYS[2], ARGV[3])
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)[1]
local after = {}
if ARGV[1] ~= '' then
  local range = {'XRANGE', KEYS[1], '(' .. ARGV[1], '+'}
  if ARGV[2] ~= '' then range[5], range[6] = 'COUNT', ARGV[2] end
  after = redis.call(unpack(range))
end
local t = redis.call('TIME')
return {newest or false, first or false, after, t[1] .. string.format('%03d', math.floor(t[2] / 1000)),
        redis.call('HGET', KEYS[2], ARGV[4]) or false}
"""

ZERO = (0, 0)  # "before the first entry": the predecessor recorded in a stream's first entry
MAX_ID = 2**64 - 1  # Redis stream ids are two unsigned 64-bit numbers
# Decoded events kept by id, so a replay to many clients (or a live delivery, then its replay)
# parses and encodes each event once: a few MB at most.
RECENT_EVENTS = 4096
IDLE_PING = 5.0  # seconds of pub/sub silence before we ask whether the connection lives
# How long a tenant's record (newest id, idempotence record) outlives its last event, at least
# the history's TTL: long enough that clients of a tenant quiet for days still resume across
# deploys and restarts without a reload, and that a node down over a weekend still reports
# what changed on disk meanwhile; about 100 bytes per file in Redis.
RECORD_TTL = 7 * 24 * 3600.0
NEWEST_FIELD = "/newest"  # the record's newest id: never a path (paths are relative)
EPOCH_FIELD = "/epoch"  # the record's epoch
SINCE_FIELD = "/since"  # when the record began (Published.since)
# The cursors of tenants without local clients are dropped this often (in slices).
CURSOR_SWEEP_INTERVAL = 10.0
CURSOR_SWEEP_SLICE = 1000
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 5.0


def _ms(seconds: float) -> int:
    """A TTL in whole milliseconds for Redis, never 0 (PEXPIRE 0 deletes at once)."""
    return max(int(seconds * 1000), 1)


def _fmt(event_id: tuple[int, int]) -> str:
    return f"{event_id[0]}-{event_id[1]}"


def _state_and_source(value: str) -> tuple[str, str]:
    """A path's record "<state> <id> <version or -> <source>" (or, written before versions,
    "<state> <id> <source>") as (state, source)."""
    state, _, rest = (value.split(" ", 2) + ["", ""])[:3]
    version, _, source = rest.partition(" ")
    if version == "-" or version.isdigit():
        return state, source
    return state, rest


def _entry(raw: list) -> tuple[tuple[int, int], tuple[int, int], str]:
    """A stream entry ``[id, [field, value, ...]]`` as (id, predecessor's id, body JSON)."""
    entry_id, flat = raw
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    return parse_event_id(entry_id), parse_event_id(fields["p"]), fields["e"]


class RedisBroker(Broker):
    def __init__(
        self,
        deliver: Deliver,
        url: str,
        *,
        history_size: int = 1000,
        history_ttl: float = 600.0,
        key_prefix: str = "cfgpush:",
        tenants: Callable[[], Iterable[str]] | None = None,
        on_gap: Callable[[str, str, str], Any] | None = None,
        socket_timeout: float = 2.0,
        record_ttl: float = RECORD_TTL,
    ):
        """``tenants()``: the tenants this node has clients for (the hub's, registered before
        their catch-up; ``in`` on it should be cheap: a set or a dict's keys); only they have
        events delivered here and a cursor kept. None: every tenant published anywhere.
        ``on_gap(tenant_id, reason, newest)`` is called when events this node's clients needed
        were trimmed before it could deliver them (an outage longer than the history: reason
        ``history_expired``) or the history was emptied or replaced (``unknown_epoch``): tell
        them to resync, now (before anything after ``newest``, the id the reload covers, is
        delivered to them). ``record_ttl``: how long a tenant's record outlives its last event (at least
        ``history_ttl``)."""
        super().__init__(deliver)
        if history_size < 1:
            raise ValueError("history_size must be at least 1")
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.record_ttl = max(record_ttl, history_ttl)
        self.key_prefix = key_prefix
        self.channel = f"{key_prefix}events"
        self._tenants = tenants
        self._on_gap = on_gap
        # Short timeouts and no retries: redis-py's Redis(...) retries 10 times (about a
        # minute against a stalled server), and a retried publish could append twice.
        # Callers get BrokerUnavailable within seconds instead.
        self._timeout = socket_timeout
        options: dict[str, Any] = {
            "decode_responses": True,
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": socket_timeout,
            "retry": Retry(NoBackoff(), 0),
        }
        self._redis = aioredis.from_url(url, **options)
        # The listener's own pool: its reconnects never disturb (or borrow) command connections.
        self._listener_redis = aioredis.from_url(url, **options)
        self._publish = self._redis.register_script(PUBLISH)
        self._read = self._redis.register_script(READ)
        self._cursor: dict[str, tuple[int, int]] = {}
        # The epoch of each cursor's tenant (PUBLISH): another one means the history was
        # emptied or replaced, and positions from before it mean nothing.
        self._epochs: dict[str, str] = {}
        self._last_epoch: str | None = None  # the epoch of the last read (for _sync)
        # Catch-ups of the same (tenant, since) asked for in one loop iteration share one read
        # (a reconnect storm: thousands of clients resuming from the same id).
        self._batches: dict[tuple[str, str | None], asyncio.Future] = {}
        self._batch_tasks: set[asyncio.Task] = set()
        # Recent events by id, decoded and encoded once, whoever replays or delivers them.
        self._recent: OrderedDict[tuple[str, tuple[int, int]], Event] = OrderedDict()
        self._unready: str | None = "redis: not connected yet"
        self._listener: asyncio.Task | None = None
        self._sweeper: asyncio.Task | None = None
        self._first_attempt = asyncio.Event()
        self._stopped = False

    def _key(self, tenant_id: str, kind: str) -> str:
        # The tenant in braces: both keys of a script hash to one Redis Cluster slot.
        return f"{self.key_prefix}{{{tenant_id}}}:{kind}"

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Subscribe; when Redis is down, log it, report not ready and keep trying."""
        self._listener = asyncio.ensure_future(self._listen())
        if self._tenants is not None:
            self._sweeper = asyncio.ensure_future(self._sweep_cursors_forever())
        await self._first_attempt.wait()
        if self._unready:
            log.warning("starting without Redis (%s); retrying in the background", self._unready)

    async def stop(self) -> None:
        self._stopped = True
        for task in (self._listener, self._sweeper):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
        self._listener = self._sweeper = None
        for task in list(self._batch_tasks):
            task.cancel()
        await asyncio.gather(*self._batch_tasks, return_exceptions=True)
        await self._listener_redis.aclose()
        await self._redis.aclose()

    def readiness(self) -> str | None:
        return self._unready

    def state(self) -> BrokerState:
        return BrokerState(tenants=len(self._cursor))

    # -- publish and catch-up -------------------------------------------------------------------

    async def publish(self, fields: dict[str, Any], version: int | None = None) -> str:
        return (await self.publish_many([(fields, version)]))[0]

    async def publish_many(self, items: list[tuple[dict[str, Any], int | None]]) -> list[str]:
        """Every ``(fields, version)`` in one round trip (a pipeline of the PUBLISH script, in
        order; each one atomic): a source's throughput then does not depend on the link's
        latency."""
        if not items:
            return []
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for fields, version in items:
                    await self._publish(
                        keys=[self._key(fields["tenant_id"], "history"), self._key(fields["tenant_id"], "paths")],
                        args=self._publish_args(fields, version),
                        client=pipe,
                    )
                return await pipe.execute()
        except RedisError as exc:
            # Timeouts are ambiguous (the scripts may have run): a retry of a checksummed event
            # is then deduplicated; nothing is ever half-published, each script being atomic.
            raise BrokerUnavailable(f"redis unavailable: {exc}") from exc

    def _publish_args(self, fields: dict[str, Any], version: int | None) -> list[Any]:
        old_path = (fields.get("meta") or {}).get("old_path")
        moved_from = old_path if fields["change_type"] == "moved" and isinstance(old_path, str) else ""
        return [
            encode_json(fields),
            fields.get("path") or "",
            _dedupe_key(fields) or "",
            moved_from,
            self.history_size,
            _ms(self.history_ttl),
            self.channel,
            fields.get("source") or "",
            _ms(self.record_ttl),
            NEWEST_FIELD,
            "" if version is None else str(int(version)),
            EPOCH_FIELD,
            uuid.uuid4().hex,
            SINCE_FIELD,
        ]

    async def _read_stream(self, tenant_id: str, after: str, count: int | None):
        try:
            newest, first, entries, now_ms, epoch = await self._read(
                keys=[self._key(tenant_id, "history"), self._key(tenant_id, "paths")],
                args=[after, "" if count is None else count, NEWEST_FIELD, EPOCH_FIELD],
            )
        except RedisError as exc:
            raise BrokerUnavailable(f"redis unavailable: {exc}") from exc
        self._last_epoch = epoch or None
        if self._check_epoch(tenant_id, self._last_epoch, parse_event_id(newest) if newest else ZERO):
            entries = []  # read after a position of the old history: the Resync covers the new one
        return newest, _entry(first) if first else None, [_entry(e) for e in entries], int(now_ms)

    # -- content (--serve-content) -----------------------------------------------------------------

    async def store_content(self, tenant_id: str, path: str, checksum: str, data: bytes) -> None:
        """The newest content of each path in two hashes of the tenant (``…:content``: path ->
        base64, ``…:content_sums``: path -> checksum), expiring with the tenant's record
        (``record_ttl`` after the last content handed): bounded by one version per path, each
        bounded by the server's size caps. Written before the event is published, so a client
        of any node that hears of it finds it."""
        body, sums = self._key(tenant_id, "content"), self._key(tenant_id, "content_sums")
        ttl = _ms(self.record_ttl)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.hset(body, path, base64.b64encode(data).decode("ascii"))
                pipe.hset(sums, path, checksum)
                pipe.pexpire(body, ttl)
                pipe.pexpire(sums, ttl)
                await pipe.execute()
        except RedisError as exc:
            raise BrokerUnavailable(f"redis unavailable: {exc}") from exc

    async def stored_checksum(self, tenant_id: str, path: str) -> str | None:
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.hget(self._key(tenant_id, "content_sums"), path)
                pipe.hget(self._key(tenant_id, "paths"), path)
                checksum, record = await pipe.execute()
        except RedisError as exc:
            raise BrokerUnavailable(f"redis unavailable: {exc}") from exc
        if checksum is None or record is None or _state_and_source(record)[0] != checksum:
            return None  # none kept, or the path's newest event came without content
        return str(checksum)

    async def stored_content(self, tenant_id: str, path: str) -> bytes | None:
        try:
            encoded = await self._redis.hget(self._key(tenant_id, "content"), path)
        except RedisError as exc:
            raise BrokerUnavailable(f"redis unavailable: {exc}") from exc
        return None if encoded is None else base64.b64decode(encoded)

    async def stored_files(self, tenant_id: str) -> dict[str, str]:
        try:
            found: dict[str, str] = await self._redis.hgetall(self._key(tenant_id, "content_sums"))  # type: ignore[assignment]
            return found
        except RedisError as exc:
            raise BrokerUnavailable(f"redis unavailable: {exc}") from exc

    async def published_states(self, tenant_id: str, source: str) -> Published:
        try:
            record: dict[str, str] = await self._redis.hgetall(self._key(tenant_id, "paths"))  # type: ignore[assignment]
        except RedisError as exc:
            raise BrokerUnavailable(f"redis unavailable: {exc}") from exc
        states = {}
        record.pop(NEWEST_FIELD, None)
        record.pop(EPOCH_FIELD, None)
        since = record.pop(SINCE_FIELD, None)  # None: a record from before it was kept
        for path, value in record.items():
            state, by = _state_and_source(value)
            if by == source and state != "-":
                states[path] = None if state == "deleted" else state
        return Published(states, int(since) if since is not None and since.isdigit() else None)

    async def catch_up(self, tenant_id: str, since: str | None) -> Catchup:
        """One read of the stream for every subscriber of ``tenant_id`` resuming from ``since``
        that asks within this loop iteration.

        Sharing is safe only with subscribers registered (in the hub) before the read is
        issued, so that what the read misses reaches them live: the batch closes, and its read
        starts, at the next iteration; later callers start a new batch.
        """
        key = (tenant_id, since)
        batch = self._batches.get(key)
        if batch is None:
            batch = self._batches[key] = asyncio.get_running_loop().create_future()
            task = asyncio.ensure_future(self._read_batch(key, batch))
            self._batch_tasks.add(task)
            task.add_done_callback(self._batch_tasks.discard)
        return await asyncio.shield(batch)

    async def _read_batch(self, key: tuple[str, str | None], batch: asyncio.Future) -> None:
        await asyncio.sleep(0)  # whoever registers in this iteration joins the batch
        del self._batches[key]
        try:
            batch.set_result(await self._catch_up(*key))
        except asyncio.CancelledError:  # the broker stops
            batch.cancel()
            raise
        except Exception as exc:  # BrokerUnavailable, for every subscriber of the batch
            batch.set_exception(exc)
            batch.exception()  # retrieved: a batch nobody awaits any more is not an error

    async def _catch_up(self, tenant_id: str, since: str | None) -> Catchup:
        try:
            since_id = parse_event_id(since) if since is not None else None
        except ValueError:
            since_id = None
        valid = since_id is not None and since_id[0] < MAX_ID and since_id[1] <= MAX_ID
        after = _fmt(since_id) if since_id is not None and valid else ""
        for attempt in (1, 2):
            newest, first, entries, now_ms = await self._read_stream(tenant_id, after, self.history_size + 1)
            newest_id = parse_event_id(newest) if newest else None
            cursor = self._cursor.get(tenant_id)
            # The cursor is ahead of what we read when another subscriber's answer, read later,
            # set it: events up to it are then never delivered here, held back for us or not.
            # Read again, so this answer covers them too.
            if cursor is None or newest_id is None or cursor <= newest_id or attempt == 2:
                break
        await self._sync(tenant_id, newest_id)
        if since is None or (valid and since_id == newest_id):
            return Catchup(newest)
        if not valid or since_id is None or newest_id is None or since_id > newest_id:
            return Catchup(newest, resync=UNKNOWN_EVENT_ID)
        if not entries:
            # since_id < newest_id, and the stream holds nothing after it: the stream expired
            # (only the record's newest id is left), and whatever followed since_id with it.
            return Catchup(newest, resync=HISTORY_EXPIRED)
        next_id, prev_id, _ = entries[0]
        if prev_id != since_id:
            # ``since`` is not the entry before the next one: it never existed, or what
            # followed it was trimmed (or expired with an earlier stream). Only below the
            # oldest entry's predecessor can it have been an entry: nothing lies between the
            # two.
            _, first_prev, _ = first
            trimmed_before = since_id < first_prev
            return Catchup(newest, resync=HISTORY_EXPIRED if trimmed_before else UNKNOWN_EVENT_ID)
        # The exact bounds of the embedded broker; the stream's own trimming is approximate.
        if len(entries) > self.history_size or next_id[0] < now_ms - self.history_ttl * 1000:
            return Catchup(newest, resync=HISTORY_EXPIRED)
        return Catchup(newest, [self._event(tenant_id, i, body) for i, _, body in entries])

    def _event(self, tenant_id: str, event_id: tuple[int, int], body: str | dict[str, Any]) -> Event:
        """The ``Event`` of a stream entry, built (decoded, encoded) once while it is recent.
        Keyed by tenant too: each tenant's stream has its own ids, and two may be equal."""
        key = (tenant_id, event_id)
        event = self._recent.get(key)
        if event is None:
            event = Event(_fmt(event_id), json.loads(body) if isinstance(body, str) else body)
            if event.tenant_id != tenant_id:  # an entry must belong to its tenant's stream
                raise ValueError(f"stream of tenant {tenant_id!r} holds an event of {event.tenant_id!r}")
            self._recent[key] = event
            if len(self._recent) > RECENT_EVENTS:
                self._recent.popitem(last=False)
        return event

    async def _sync(self, tenant_id: str, newest_id: tuple[int, int] | None) -> None:
        """Make this node's deliveries reach what a subscriber was just told is the newest,
        so nothing up to it can reach that subscriber later, live, a second time."""
        if not self._has_local_clients(tenant_id):
            return  # no subscriber to protect (the tenants API asking, or it left meanwhile)
        cursor = self._cursor.get(tenant_id)
        if cursor is None:
            # Nothing delivered here yet: every connection of the tenant is subscribing now,
            # each filtering its held events by its own newest id.
            self._cursor[tenant_id] = newest_id or ZERO
            if self._last_epoch is not None:
                self._epochs[tenant_id] = self._last_epoch
        elif newest_id is not None and cursor < newest_id:
            await self._fill(tenant_id)

    async def _fill(self, tenant_id: str) -> None:
        """Deliver what the stream holds after this node's cursor, in order."""
        cursor = self._cursor.get(tenant_id)
        if cursor is None:
            return  # dropped meanwhile: the tenant has no local client any more
        newest, _, entries, _ = await self._read_stream(tenant_id, _fmt(cursor), None)
        self._deliver_entries(tenant_id, cursor, entries, parse_event_id(newest) if newest else None)

    def _deliver_entries(
        self, tenant_id: str, cursor: tuple[int, int], entries: list, newest_id: tuple[int, int] | None = None
    ) -> None:
        # A gap: the first entry after the cursor does not follow it, or there is none though
        # the tenant's newest id is past the cursor (the stream expired with what followed it).
        gap = entries[0][1] != cursor if entries else newest_id is not None and newest_id > cursor
        if not gap:
            for event_id, _, body in entries:
                if event_id > self._cursor.get(tenant_id, ZERO):  # parse only what is new here
                    self._deliver(event_id, json.loads(body))
            return
        log.warning("tenant %s: events after %s were trimmed before this node delivered them", tenant_id, _fmt(cursor))
        # The clients reload: that covers what was read after the gap too, so it is not
        # delivered; the cursor moves past it, and the Resync goes out first, naming it.
        last = entries[-1][0] if entries else newest_id
        if tenant_id in self._cursor and last is not None and self._cursor[tenant_id] < last:
            self._cursor[tenant_id] = last
        if self._on_gap is not None and tenant_id in self._cursor:
            self._on_gap(tenant_id, HISTORY_EXPIRED, _fmt(self._cursor[tenant_id]))

    def _check_epoch(self, tenant_id: str, epoch: str | None, newest: tuple[int, int]) -> bool:
        """Note the epoch of ``tenant_id``'s history; True when it differs from the one its
        cursor was set in: the Redis behind was emptied or replaced (its clock perhaps behind
        the old one's), so this node's position means nothing any more. The tenant's clients
        here are told to reload (``Resync``, which names the newest id of the new history, so
        nothing of it is missed), and the cursor moves to ``newest``: delivery never drops an
        event only because its id is not after a position of another epoch."""
        if epoch is None or tenant_id not in self._cursor:
            return False
        known = self._epochs.get(tenant_id)
        self._epochs[tenant_id] = epoch
        if known == epoch:
            return False
        if known is None and newest > self._cursor[tenant_id]:
            # The cursor was set from a record written before epochs: an id after it goes on
            # from there. One at or before it is a new history's (the old one's ids only grow).
            return False
        log.warning("tenant %s: its history in Redis was emptied or replaced; its clients here resync", tenant_id)
        self._cursor[tenant_id] = newest
        if self._on_gap is not None:
            self._on_gap(tenant_id, UNKNOWN_EPOCH, _fmt(newest))
        return True

    def _deliver(self, event_id: tuple[int, int], fields: dict[str, Any], epoch: str | None = None) -> None:
        """The one way into ``deliver``: in order, once per node."""
        tenant_id = fields["tenant_id"]
        if not self._has_local_clients(tenant_id):
            self._cursor.pop(tenant_id, None)  # no one here to deliver to, nothing to keep
            self._epochs.pop(tenant_id, None)
            return
        if self._check_epoch(tenant_id, epoch, event_id):
            return  # the Resync it caused covers this event
        if self._stopped or event_id <= self._cursor.get(tenant_id, ZERO):
            return
        self._cursor[tenant_id] = event_id
        try:
            self.deliver(self._event(tenant_id, event_id, fields))
        except Exception:  # a delivery bug must not stop the listener
            log.exception("tenant %s: delivering %s failed", tenant_id, _fmt(event_id))

    # -- per-tenant state ----------------------------------------------------------------------------

    def _has_local_clients(self, tenant_id: str) -> bool:
        return self._tenants is None or tenant_id in self._tenants()

    def forget_idle_cursors(self, tenant_ids: Iterable[str] | None = None) -> int:
        """Drop the cursors of the tenants (of ``tenant_ids``, default all) that have no local
        client: nothing can be delivered to them here, and a first subscriber's catch-up
        starts a new cursor at the newest id. Returns how many were dropped."""
        if self._tenants is None:
            return 0
        clients = self._tenants()
        candidates = list(self._cursor) if tenant_ids is None else tenant_ids
        idle = [t for t in candidates if t in self._cursor and t not in clients]
        for tenant_id in idle:
            self._cursor.pop(tenant_id, None)
            self._epochs.pop(tenant_id, None)
        return len(idle)

    async def _sweep_cursors_forever(self) -> None:
        """Every ``CURSOR_SWEEP_INTERVAL``, the cursors of tenants whose clients left (and that
        had no event since, which drops a cursor at once) go, a slice at a time."""
        while True:
            await asyncio.sleep(CURSOR_SWEEP_INTERVAL)
            tenant_ids = list(self._cursor)
            for start in range(0, len(tenant_ids), CURSOR_SWEEP_SLICE):
                self.forget_idle_cursors(tenant_ids[start : start + CURSOR_SWEEP_SLICE])
                await asyncio.sleep(0)

    # -- the pub/sub listener ---------------------------------------------------------------------

    async def _listen(self) -> None:
        """Subscribe, catch up from the streams, read; on any failure start over, backing off."""
        delay = BACKOFF_FIRST
        while True:
            pubsub = self._listener_redis.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                # After the confirmation every publication reaches us; what came before is
                # read from the streams, and the overlap is dropped by the cursors.
                confirmation = await pubsub.get_message(timeout=self._timeout)
                if not confirmation or confirmation["type"] != "subscribe":
                    raise RedisTimeoutError(f"no confirmation of SUBSCRIBE: {confirmation!r}")
                if self._unready:
                    # Back from an outage: idle command connections may predate a Redis restart,
                    # and redis-py would only find out by failing a command on each.
                    await self._redis.connection_pool.disconnect(inuse_connections=False)
                await self._catch_up_all()
                if self._unready:
                    log.info("subscribed to %s", self.channel)
                self._unready = None
                delay = BACKOFF_FIRST
                self._first_attempt.set()
                await self._read_messages(pubsub)
            except (RedisError, OSError, BrokerUnavailable) as exc:
                if self._unready is None:
                    log.warning("redis pub/sub lost: %s; reconnecting", exc)
                else:
                    log.debug("redis still unreachable: %s", exc)
                self._unready = f"redis unreachable: {exc}"
            except Exception as exc:  # a bug (a malformed entry, say): log it, but keep serving
                log.exception("redis listener failed; restarting it")
                self._unready = f"redis listener failed: {exc!r}"
            finally:
                await pubsub.aclose()
            self._first_attempt.set()
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, BACKOFF_MAX)

    async def _catch_up_all(self) -> None:
        """Deliver what was published while we were not subscribed."""
        self.forget_idle_cursors()  # no clients here: nothing to catch up, nothing to keep
        for tenant_id in list(self._cursor):
            await self._fill(tenant_id)

    async def _read_messages(self, pubsub) -> None:
        loop = asyncio.get_running_loop()
        heard = loop.time()
        pinged = False
        while True:
            # Bounded reads: a silent connection (a partition, a stalled server) is noticed
            # by an unanswered PING, not after TCP keepalive gives up.
            message = await pubsub.get_message(timeout=1.0)
            if message is None:
                silent = loop.time() - heard
                if pinged and silent > IDLE_PING + self._timeout:
                    raise RedisTimeoutError(f"no answer to PING for {silent:.1f} s")
                if not pinged and silent > IDLE_PING:
                    await pubsub.ping()
                    pinged = True
                continue
            heard, pinged = loop.time(), False
            if message["type"] == "message":
                self._on_message(message["data"])
            elif message["type"] == "subscribe":
                # redis-py reconnected and re-subscribed by itself (a client built with retries
                # does so silently): messages may have been lost in between.
                raise RedisConnectionError("re-subscribed after a reconnect; catching up")

    def _on_message(self, data: str) -> None:
        try:
            event_id, rest = data.split(" ", 1)
            epoch = None
            if not rest.startswith("{"):  # "<id> <epoch> <body>"; a node before epochs sent "<id> <body>"
                epoch, rest = rest.split(" ", 1)
            self._deliver(parse_event_id(event_id), json.loads(rest), epoch)
        except (ValueError, KeyError, TypeError):
            log.warning("ignoring a malformed message on %s: %.200r", self.channel, data)

"""Did every client get exactly what the config folder went through? The soak's verdict.

Input, gathered by whoever ran the load (``scripts/soak.py``; the fault suite of issue #19
reuses it):

* the writer's log (``writer.py --log``): every write and deletion of the folder, in order,
  with the content's SHA-256: ``Write``;
* every client's received stream, across its connections: ``ClientStream`` of ``Welcome``,
  ``ConfigChanged``, ``Resync`` and closes, in the order received;
* optionally what the broker holds (the Redis streams read at the end): ``published``.

The rules (docs/protocol.md):

1. **One stream per tenant.** The tenant's events, from every client and the broker, by event
   id, are its canonical stream; one id with two bodies is a violation.
2. **Each event is a real state, never an old one.** A ``ConfigChanged`` names a path and the
   checksum of its new content: that content must be one the writer wrote to that path of that
   tenant (``unknown_content``), and along the tenant's stream each path's versions only move
   forward: the same version announced again is a ``duplicate_event``, an earlier one a
   ``rollback``. Versions written in between that never got their own event were coalesced
   by the debounce: allowed. A file caught half-written (empty) is counted, not a violation.
3. **Nothing is lost.** Each path's final write is the last version its tenant's stream
   announces (``lost_change``), unless it is the state the folder had when the servers started.
4. **Each client, exactly once and in order.** From its first ``Welcome`` (its
   ``last_event_id`` is where a fresh client starts) every event of its tenant after its
   position arrives once, in order: an event at or before its position is a
   ``duplicate_delivery``, canonical events skipped are ``missed``. A resumed connection keeps
   the position it resumed from. ``Resync`` (a reason the protocol names) moves the position to
   its ``last_event_id``: the events in between are covered by the reload, counted. A client
   connected at the end must have reached its tenant's newest event (``behind_at_end``).
5. **No event crosses tenants** (``crossed_tenant``): a client only gets its own tenant's.

**Epochs.** An emptied or replaced Redis starts a tenant's history again (docs/protocol.md,
``unknown_epoch``), its ids perhaps below the old ones (a clock behind). ``epoch_of(tenant,
event_id)`` says which history an id belongs to (0, 1, ... in the order they followed each
other); ids are ordered by epoch first. In a new epoch the first event of a path may restate
the version the path is at (a node publishing what it saw just before the flush, now into an
empty record): counted (``restated_in_new_epoch``), not a duplicate; its clients were told to
reload by then. An older version is still a rollback.

``check(...)`` returns a ``Verdict``: counts, violations by kind with a few examples each.
Nothing here does I/O except ``read_writer_log``.
"""

from __future__ import annotations

import bisect
import hashlib
import json
from array import array
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESYNC_REASONS = {"history_expired", "unknown_event_id", "unknown_epoch", "source_gap"}
EMPTY = "sha256:" + hashlib.sha256(b"").hexdigest()
EXAMPLES = 5

# Violation kinds, in the order the summary lists them.
KINDS = (
    "crossed_tenant",
    "missed",
    "duplicate_delivery",
    "behind_at_end",
    "duplicate_event",
    "rollback",
    "unknown_content",
    "lost_change",
    "conflicting_id",
    "bad_resync",
)


@dataclass(frozen=True)
class Write:
    """One write (``checksum`` ``sha256:<hex>``) or deletion (``checksum`` None) of a file."""

    seq: int
    tenant: str
    path: str  # relative to the tenant, "/"-separated, as in events
    checksum: str | None
    t: float | None = None  # when it was complete (the writer's time.monotonic()), when logged


@dataclass(frozen=True)
class Event:
    event_id: str
    tenant: str
    change_type: str
    path: str | None
    checksum: str | None
    old_path: str | None = None  # of a "moved"

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> Event:
        """From the inside of ``{"ConfigChanged": {...}}``."""
        meta = body.get("meta") or {}
        return cls(
            body["event_id"],
            body["tenant_id"],
            body["change_type"],
            body.get("path"),
            body.get("checksum"),
            meta.get("old_path") if isinstance(meta, dict) else None,
        )


@dataclass
class ClientStream:
    """What one (virtual) client received, across its connections, in order. Items:
    ``("welcome", last_event_id, resumed_from)`` (``resumed_from``: the ``last_event_id`` the
    connection asked for, None for a fresh one), ``("event", Event)``,
    ``("resync", last_event_id, reason)``, ``("closed", code or None)``. ``times``: when each
    item arrived (``time.perf_counter()``), when the runner records them (``record``); the
    checks here do not use them (``timeline.py`` does)."""

    name: str
    tenant: str
    items: list[tuple] = field(default_factory=list)
    connected_at_end: bool = False
    times: array = field(default_factory=lambda: array("d"))

    def record(self, item: tuple, at: float) -> None:
        self.items.append(item)
        self.times.append(at)


def read_writer_log(path: Path | str, root_tenants: Iterable[str] | None = None) -> list[Write]:
    """The writer's JSON lines as ``Write``s; paths are ``<tenant>/<path in the tenant>``."""
    writes = []
    with open(path) as f:
        for line in f:
            record = json.loads(line)
            tenant, _, rel = record["path"].partition("/")
            sha = record["sha256"]
            writes.append(Write(record["seq"], tenant, rel, None if sha is None else f"sha256:{sha}", record.get("t")))
    return writes


def event_key(event_id: str) -> tuple[int, int]:
    ms, _, seq = event_id.partition("-")
    return int(ms), int(seq)


EpochOf = Callable[[str, str], int]  # (tenant, event id) -> its history's rank


def ordering(epoch_of: EpochOf | None = None) -> Callable[[str, str], tuple[int, int, int]]:
    """``key(tenant, event_id)``: the position of an id in its tenant's stream, epoch first."""
    if epoch_of is None:
        return lambda tenant, event_id: (0, *event_key(event_id))
    return lambda tenant, event_id: (epoch_of(tenant, event_id), *event_key(event_id))


class Verdict:
    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.violations: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self.resyncs: Counter[str] = Counter()
        self.extra: dict[str, Any] = {}
        # For timeline.py, not reported: the ordering used (``ordering``), and per tenant, in
        # stream order, each event that brought a path to a newer version:
        # (key, event id, path, version index in the writer's log).
        self.key: Callable[[str, str], tuple[int, int, int]] = ordering()
        self.announced: dict[str, list[tuple[tuple[int, int, int], str, str, int]]] = {}

    def add(self, kind: str, example: str, n: int = 1) -> None:
        self.violations[kind] += n
        shown = self.examples.setdefault(kind, [])
        if len(shown) < EXAMPLES:
            shown.append(example)

    @property
    def ok(self) -> bool:
        return not self.violations

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "counts": dict(self.counts),
            "resyncs": dict(self.resyncs),
            "violations": dict(self.violations),
            "examples": self.examples,
            **self.extra,
        }

    def summary(self) -> str:
        c = self.counts
        lines = [
            f"clients {c['clients']} ({c['clients_connected_at_end']} connected at the end) over "
            f"{c['tenants']} tenants; writes {c['writes']} ({c['coalesced_writes']} coalesced by the debounce, "
            f"{c['transient_states']} half-written states seen); events {c['events']}; deliveries "
            f"{c['deliveries']}; resyncs {sum(self.resyncs.values())} "
            f"({', '.join(f'{k} {v}' for k, v in sorted(self.resyncs.items())) or 'none'}) covering "
            f"{c['covered_by_resync']} events"
            + (f"; {c['restated_in_new_epoch']} restated in a new epoch" if c["restated_in_new_epoch"] else "")
        ]
        if self.ok:
            lines.append("violations: none")
        else:
            lines.append(f"violations: {sum(self.violations.values())}")
            for kind in [*KINDS, *sorted(set(self.violations) - set(KINDS))]:
                if self.violations[kind]:
                    lines.append(f"  {kind}: {self.violations[kind]}")
                    lines += [f"    e.g. {example}" for example in self.examples.get(kind, [])]
        return "\n".join(lines)


class _Versions:
    """A path's writes in order: which one an announced checksum is."""

    def __init__(self) -> None:
        self.checksums: list[str | None] = []
        self.baseline = -1  # index of the version the folder had when the servers started

    def find(self, checksum: str | None, after: int) -> tuple[int, str]:
        """``(index, how)``: the first version after ``after`` with this content ("new"),
        else the newest one at or before it ("old"), else (-1, "unknown")."""
        for i in range(after + 1, len(self.checksums)):
            if self.checksums[i] == checksum:
                return i, "new"
        for i in range(min(after, len(self.checksums) - 1), -1, -1):
            if self.checksums[i] == checksum:
                return i, "old"
        return -1, "unknown"


class _PathWalk:
    """One tenant's stream, event by event: the version each path is at (rules 2 and 3)."""

    def __init__(self, tenant: str, versions: dict[tuple[str, str], _Versions], verdict: Verdict):
        self.tenant, self.versions, self.verdict = tenant, versions, verdict
        self.current: dict[str, int] = {}
        self.last_event: dict[str, Event] = {}
        self.epoch: dict[str, int] = {}  # the epoch of each path's last announcement
        self.announced = 0
        self.record = verdict.announced.setdefault(tenant, [])

    def at(self, path: str) -> int:
        v = self.versions[(self.tenant, path)]
        return self.current.get(path, v.baseline)

    def step(self, path: str, checksum: str | None, event: Event, key: tuple[int, int, int]) -> None:
        tenant, verdict = self.tenant, self.verdict
        v = self.versions.get((tenant, path))
        if v is None:
            verdict.add("unknown_content", f"tenant {tenant}: {event.event_id} names {path!r}, never written")
            return
        if checksum == EMPTY and EMPTY not in v.checksums:
            verdict.counts["transient_states"] += 1
            return
        now = self.at(path)
        index, how = v.find(checksum, now)
        if how == "unknown":
            verdict.add(
                "unknown_content",
                f"tenant {tenant}: {event.event_id} {path} {event.change_type} "
                f"{checksum}: no write of that path had this content",
            )
            return
        if how == "old":
            before = self.last_event.get(path)
            if index == now and key[0] > self.epoch.get(path, 0):
                verdict.counts["restated_in_new_epoch"] += 1
                self.epoch[path] = key[0]
                return
            kind = "duplicate_event" if index == now else "rollback"
            verdict.add(
                kind,
                f"tenant {tenant} {path}: {event.event_id} announces version {index + 1} of "
                f"{len(v.checksums)} after {before.event_id if before else 'the start'} "
                f"announced version {now + 1}",
            )
            return
        self.announced += 1
        self.current[path] = index
        self.last_event[path] = event
        self.epoch[path] = key[0]
        self.record.append((key, event.event_id, path, index))


def check(
    writes: list[Write],
    clients: list[ClientStream],
    *,
    published: dict[str, list[Event]] | None = None,
    baseline_seq: int = 0,
    epoch_of: EpochOf | None = None,
) -> Verdict:
    """The verdict; ``baseline_seq``: writes up to it made the folder the servers started on;
    ``epoch_of``: which history each id belongs to, when Redis was emptied (see Epochs)."""
    verdict = Verdict()
    key = verdict.key = ordering(epoch_of)
    counts = verdict.counts
    versions: dict[tuple[str, str], _Versions] = {}
    for w in writes:
        v = versions.setdefault((w.tenant, w.path), _Versions())
        v.checksums.append(w.checksum)
        if w.seq <= baseline_seq:
            v.baseline = len(v.checksums) - 1
    counts["writes"] = sum(1 for w in writes if w.seq > baseline_seq)
    counts["clients"] = len(clients)
    counts["tenants"] = len({c.tenant for c in clients})

    # 1. The canonical stream of each tenant.
    streams: dict[str, dict[str, Event]] = {}

    def gather(tenant: str, event: Event, where: str) -> None:
        known = streams.setdefault(tenant, {})
        seen = known.get(event.event_id)
        if seen is None:
            known[event.event_id] = event
        elif seen != event:
            verdict.add("conflicting_id", f"tenant {tenant} id {event.event_id}: {seen} and {event} ({where})")

    for tenant, events in (published or {}).items():
        for event in events:
            gather(tenant, event, "broker")
    for client in clients:
        for item in client.items:
            if item[0] == "event":
                event = item[1]
                counts["deliveries"] += 1
                if event.tenant != client.tenant:
                    verdict.add("crossed_tenant", f"client {client.name} of {client.tenant} got {event}")
                    continue
                gather(client.tenant, event, f"client {client.name}")
    canon: dict[str, list[Event]] = {
        t: sorted(s.values(), key=lambda e, t=t: key(t, e.event_id)) for t, s in streams.items()
    }
    canon_keys = {t: [key(t, e.event_id) for e in events] for t, events in canon.items()}
    counts["events"] = sum(len(events) for events in canon.values())

    # 2. and 3. Each path's versions along its tenant's stream.
    announced = 0
    for tenant, events in canon.items():
        walk = _PathWalk(tenant, versions, verdict)
        for event in events:
            if event.path is None:
                continue
            at = key(tenant, event.event_id)
            if event.change_type == "moved" and event.old_path:
                walk.step(event.old_path, None, event, at)
            walk.step(event.path, None if event.change_type == "deleted" else event.checksum, event, at)
        announced += walk.announced
        for (t, path), v in versions.items():
            if t == tenant and walk.at(path) != len(v.checksums) - 1:
                verdict.add(
                    "lost_change",
                    f"tenant {tenant} {path}: written {len(v.checksums)} times, the last "
                    f"announced is version {walk.at(path) + 1}",
                )
    for (tenant, path), v in versions.items():  # tenants whose stream is empty
        if tenant not in canon and v.baseline != len(v.checksums) - 1:
            verdict.add("lost_change", f"tenant {tenant} {path}: written {len(v.checksums)} times, never announced")
    counts["coalesced_writes"] = max(0, counts["writes"] - announced)

    # 4. Each client against its tenant's stream.
    for client in clients:
        keys = canon_keys.get(client.tenant, [])
        events = canon.get(client.tenant, [])
        position: tuple[int, int, int] | None = None
        for item in client.items:
            kind = item[0]
            if kind == "welcome":
                # A fresh connection starts at the newest event (a reload); a resumed one at
                # the id it asked for.
                last_event_id, resumed_from = item[1], item[2]
                target = resumed_from if resumed_from is not None else last_event_id
                position = key(client.tenant, target) if target else None
            elif kind == "event":
                event = item[1]
                if event.tenant != client.tenant:
                    continue
                at = key(client.tenant, event.event_id)
                expected = bisect.bisect_right(keys, position) if position is not None else 0
                index = bisect.bisect_left(keys, at)
                if position is not None and at <= position:
                    verdict.add(
                        "duplicate_delivery",
                        f"client {client.name} ({client.tenant}) got {event.event_id} at position {_fmt(position)}",
                    )
                    continue
                if index > expected:
                    skipped = events[expected:index]
                    verdict.add(
                        "missed",
                        f"client {client.name} ({client.tenant}) skipped {len(skipped)} event(s) "
                        f"{', '.join(e.event_id for e in skipped[:3])} before {event.event_id}",
                        n=len(skipped),
                    )
                position = at
            elif kind == "resync":
                last_event_id, reason = item[1], item[2]
                verdict.resyncs[reason] += 1
                if reason not in RESYNC_REASONS:
                    verdict.add("bad_resync", f"client {client.name}: Resync reason {reason!r}")
                target = key(client.tenant, last_event_id) if last_event_id else None
                if target is not None:
                    low = bisect.bisect_right(keys, position) if position is not None else 0
                    counts["covered_by_resync"] += max(0, bisect.bisect_right(keys, target) - low)
                position = target
        if client.connected_at_end:
            counts["clients_connected_at_end"] += 1
            behind = len(keys) - (bisect.bisect_right(keys, position) if position is not None else 0)
            if behind > 0:
                verdict.add(
                    "behind_at_end",
                    f"client {client.name} ({client.tenant}) ends {behind} event(s) behind: "
                    f"at {_fmt(position)}, newest {events[-1].event_id}",
                    n=behind,
                )
    return verdict


def _fmt(key: tuple[int, ...] | None) -> str:
    """An id from its key (the epoch, when there is one, as a prefix: ``e1:<id>``)."""
    if key is None:
        return "the start"
    *epoch, ms, seq = key
    return (f"e{epoch[0]}:" if epoch and epoch[0] else "") + f"{ms}-{seq}"

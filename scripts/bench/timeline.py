"""When each client had each save: save-to-client latency and the catch-up after a fault.

Pure data, like ``checker.py``, whose verdict it reads: the writer's log (every ``Write`` with
its time), every client's ``ClientStream`` with the time of each item, and the verdict's
``announced`` (per tenant, in stream order, each event that brought a path to a newer
version) and ``key`` (the stream's ordering, epochs first).

A client *has* a save of a path once it knows that version of the path or a newer one:

* an event announcing it (or a newer version of the path) arrived;
* a ``Resync``, or a fresh ``Welcome`` (a reload), arrived whose ``last_event_id`` is at or
  after the event that announced it: the client reloaded its configuration then;
* saves coalesced by the debounce are had when the save that followed them is.

Only saves made after the servers started count (``baseline_seq``), and only for clients of
the save's tenant. ``reach`` gives, for each (client, save), when the client had it, or None.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass

from .checker import ClientStream, Verdict, Write


@dataclass(frozen=True)
class Reach:
    client: str
    write: Write
    at: float | None  # when the client had this save (or a newer one of the path); None: never

    @property
    def latency(self) -> float | None:
        return None if self.at is None or self.write.t is None else self.at - self.write.t


class _TenantState:
    """A tenant's paths' versions after each announcing event, for ``state_at(key)``."""

    def __init__(self, announced: list[tuple[tuple[int, int, int], str, str, int]]):
        self.keys = [k for k, _, _, _ in announced]
        self.changes = [(path, index) for _, _, path, index in announced]
        self.by_event = {event_id: (path, index) for _, event_id, path, index in announced}

    def state_at(self, key: tuple[int, int, int]) -> dict[str, int]:
        state: dict[str, int] = {}
        for path, index in self.changes[: bisect.bisect_right(self.keys, key)]:
            state[path] = max(index, state.get(path, -1))
        return state


class _ClientWalk:
    """One client's stream, item by item: which version of each path it has had, and when."""

    def __init__(self, client: ClientStream, state: _TenantState, paths: dict[str, list[Write]], verdict: Verdict):
        self.client, self.state, self.paths, self.verdict = client, state, paths, verdict
        self.had: dict[tuple[str, int], float] = {}  # (path, version index) -> when
        self.next_index = dict.fromkeys(paths, 0)  # per path: the first version not had yet

    def mark(self, path: str, index: int, at: float) -> None:
        start = self.next_index.get(path)
        if start is None or index < start:
            return
        for i in range(start, min(index, len(self.paths[path]) - 1) + 1):
            self.had[(path, i)] = at
        self.next_index[path] = index + 1

    def reload(self, last_event_id: str | None, at: float) -> None:
        if last_event_id:
            key = self.verdict.key(self.client.tenant, last_event_id)
            for path, index in self.state.state_at(key).items():
                self.mark(path, index, at)

    def walk(self) -> None:
        for item, at in zip(self.client.items, self.client.times, strict=True):
            kind = item[0]
            if kind == "welcome" and item[2] is None:  # a fresh connection: a (re)load
                self.reload(item[1], at)
            elif kind == "resync":
                self.reload(item[1], at)
            elif kind == "event" and item[1].tenant == self.client.tenant:
                announced = self.state.by_event.get(item[1].event_id)
                if announced is not None:
                    self.mark(*announced, at)


def reach(writes: list[Write], clients: list[ClientStream], verdict: Verdict, baseline_seq: int = 0) -> list[Reach]:
    """For every client and every save of its tenant after ``baseline_seq``: when it had it."""
    # Each path's writes in order: index i is the i-th write of the path, as in the verdict.
    by_path: dict[tuple[str, str], list[Write]] = {}
    for w in writes:
        by_path.setdefault((w.tenant, w.path), []).append(w)
    tenants = {t: _TenantState(a) for t, a in verdict.announced.items()}
    empty = _TenantState([])
    found: list[Reach] = []
    for client in clients:
        paths = {p: ws for (t, p), ws in by_path.items() if t == client.tenant}
        walk = _ClientWalk(client, tenants.get(client.tenant, empty), paths, verdict)
        walk.walk()
        for path, ws in paths.items():
            for i, w in enumerate(ws):
                if w.seq > baseline_seq:
                    found.append(Reach(client.name, w, walk.had.get((path, i))))
    return found


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-quantile (0..1) by the nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered), max(1, math.ceil(q * len(ordered)))) - 1]


def latency_figures(reaches: list[Reach]) -> dict[str, float | int | None]:
    """Save to client, in seconds: p50, p99, max over every (client, save); and how many
    pairs were never had."""
    latencies = [r.latency for r in reaches if r.latency is not None]
    return {
        "pairs": len(reaches),
        "never": sum(1 for r in reaches if r.at is None),
        "p50_s": percentile(latencies, 0.50),
        "p99_s": percentile(latencies, 0.99),
        "max_s": max(latencies) if latencies else None,
    }


def catch_up(reaches: list[Reach], fault_end: float) -> float | None:
    """Seconds from ``fault_end`` until every client had every save made before it (0 when
    they all had them by then); None when some client never had one."""
    before = [r for r in reaches if r.write.t is not None and r.write.t <= fault_end]
    if any(r.at is None for r in before):
        return None
    return max([0.0] + [r.at - fault_end for r in before])

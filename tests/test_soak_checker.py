"""The soak's checker (scripts/bench/checker.py) catches each kind of violation it claims to.

A checker that never failed proves nothing: each rule gets a stream that breaks it and one
that keeps it. Pure data, no server: the soak smoke (tests/test_soak_smoke.py) runs it on a
real cluster.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from bench.checker import ClientStream, Event, Write, check, event_key


def sha(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


# The folder: acme/a.json and globex/g.json written before the servers start (v0, g0), then
# a.json twice (v1, v2); BOTH also has globex's g1.
WRITES = [
    Write(1, "acme", "a.json", sha("v0")),
    Write(2, "globex", "g.json", sha("g0")),
    Write(3, "acme", "a.json", sha("v1")),
    Write(4, "acme", "a.json", sha("v2")),
]
BOTH = WRITES + [Write(5, "globex", "g.json", sha("g1"))]
E1 = Event("100-1", "acme", "modified", "a.json", sha("v1"))
E2 = Event("100-2", "acme", "modified", "a.json", sha("v2"))
G1 = Event("100-1", "globex", "modified", "g.json", sha("g1"))


def client(name: str, tenant: str, *items, at_end: bool = True) -> ClientStream:
    return ClientStream(name, tenant, list(items), connected_at_end=at_end)


def verdict(*clients: ClientStream, writes=WRITES, published=None):
    return check(writes, list(clients), published=published, baseline_seq=2)


def test_a_clean_run_passes_and_counts():
    v = verdict(
        client("c1", "acme", ("welcome", None, None), ("event", E1), ("event", E2)),
        client("c2", "globex", ("welcome", None, None), ("event", G1)),
        writes=BOTH,
    )
    assert v.ok, v.summary()
    assert (v.counts["events"], v.counts["deliveries"], v.counts["coalesced_writes"]) == (3, 3, 0)


def test_a_skipped_event_is_missed():
    v = verdict(
        client("c1", "acme", ("welcome", None, None), ("event", E1), ("event", E2)),
        client("c2", "acme", ("welcome", None, None), ("event", E2)),
    )
    assert v.violations == {"missed": 1}, v.summary()
    assert "c2" in v.examples["missed"][0] and "100-1" in v.examples["missed"][0]


def test_an_event_twice_is_a_duplicate_delivery():
    v = verdict(
        client(
            "c1",
            "acme",
            ("welcome", None, None),
            ("event", E1),
            ("closed", 1001),
            ("welcome", "100-1", "100-1"),
            ("event", E1),
            ("event", E2),
        )
    )
    assert v.violations == {"duplicate_delivery": 1}, v.summary()


def test_resume_owes_what_came_after_the_asked_id_and_a_fresh_start_does_not():
    resumed = client(
        "c1",
        "acme",
        ("welcome", None, None),
        ("event", E1),
        ("closed", None),
        ("welcome", "100-2", "100-1"),
        ("event", E2),
    )
    fresh = client(
        "c2", "acme", ("welcome", None, None), ("event", E1), ("closed", None), ("welcome", "100-2", None)
    )  # a reload: starts at the newest
    assert verdict(resumed, fresh).ok
    lost = client(
        "c3", "acme", ("welcome", None, None), ("event", E1), ("closed", None), ("welcome", "100-2", "100-1")
    )  # resumed, and never got 100-2
    assert verdict(resumed, lost).violations == {"behind_at_end": 1}


def test_a_resync_covers_the_events_it_skips():
    v = verdict(
        client("c1", "acme", ("welcome", None, None), ("event", E1), ("event", E2)),
        client("c2", "acme", ("welcome", None, None), ("resync", "100-2", "source_gap")),
    )
    assert v.ok, v.summary()
    assert v.counts["covered_by_resync"] == 2 and v.resyncs == {"source_gap": 1}
    bad = verdict(
        client("c1", "acme", ("welcome", None, None), ("resync", "100-2", "because")), published={"acme": [E1, E2]}
    )
    assert bad.violations == {"bad_resync": 1}


def test_an_older_version_after_a_newer_one_is_a_rollback_and_the_same_one_again_a_duplicate():
    rollback = Event("100-3", "acme", "modified", "a.json", sha("v1"))
    again = Event("100-3", "acme", "modified", "a.json", sha("v2"))
    stream = ("welcome", None, None), ("event", E1), ("event", E2)
    assert verdict(client("c1", "acme", *stream, ("event", rollback))).violations == {"rollback": 1}
    assert verdict(client("c1", "acme", *stream, ("event", again))).violations == {"duplicate_event": 1}


def test_an_event_of_another_tenant_is_crossed():
    v = verdict(
        client("c1", "acme", ("welcome", None, None), ("event", E1), ("event", G1), ("event", E2)),
        client("c2", "globex", ("welcome", None, None), ("event", G1)),
        writes=BOTH,
    )
    assert v.violations == {"crossed_tenant": 1}, v.summary()


def test_a_final_write_never_announced_is_lost():
    v = verdict(
        client("c1", "acme", ("welcome", None, None), ("event", E1)),
        client("c2", "globex", ("welcome", None, None), ("event", G1)),
        writes=BOTH,
    )
    assert v.violations == {"lost_change": 1}, v.summary()  # acme's v2
    assert "a.json" in v.examples["lost_change"][0]


def test_content_no_write_had_is_unknown_and_one_id_with_two_bodies_conflicts():
    forged = Event("100-3", "acme", "modified", "a.json", sha("never written"))
    v = verdict(client("c1", "acme", ("welcome", None, None), ("event", E1), ("event", E2), ("event", forged)))
    assert v.violations == {"unknown_content": 1}, v.summary()
    twin = Event("100-2", "acme", "modified", "a.json", sha("v1"))
    v = verdict(
        client("c1", "acme", ("welcome", None, None), ("event", E1), ("event", E2)),
        client("c2", "acme", ("welcome", None, None), ("event", E1), ("event", twin)),
    )
    assert v.violations["conflicting_id"] == 1, v.summary()


def test_the_broker_s_stream_shows_an_event_no_client_got():
    v = verdict(client("c1", "acme", ("welcome", None, None), ("event", E2)), published={"acme": [E1, E2]})
    assert v.violations == {"missed": 1}, v.summary()


# An emptied Redis with its clock behind (issue #19.3): the old history's ids far ahead, the new one's below.
OLD = Event("9000000-1", "acme", "modified", "a.json", sha("v1"))
NEW = Event("100-1", "acme", "modified", "a.json", sha("v2"))


def old_then_new(tenant: str, event_id: str) -> int:
    return 0 if event_key(event_id)[0] >= 9000000 else 1


def test_a_new_epoch_is_ordered_after_the_old_one_whatever_its_ids():
    stream = client("c1", "acme", ("welcome", None, None), ("event", OLD), ("resync", "100-1", "unknown_epoch"))
    fresh = client("c2", "acme", ("welcome", "100-1", None))  # connected after the flush
    v = check(WRITES, [stream, fresh], published={"acme": [NEW]}, baseline_seq=2, epoch_of=old_then_new)
    assert v.ok, v.summary()
    assert v.counts["covered_by_resync"] == 1
    assert [(e, p, i) for _, e, p, i in v.announced["acme"]] == [("9000000-1", "a.json", 1), ("100-1", "a.json", 2)]
    # Without the epochs, the same streams read as a rollback (the new history's ids sort first).
    assert not verdict(stream, fresh, published={"acme": [NEW]}).ok


def test_a_path_restated_in_a_new_epoch_is_counted_and_an_older_version_is_still_a_rollback():
    restated = Event("100-1", "acme", "modified", "a.json", sha("v1"))
    newer = Event("100-2", "acme", "modified", "a.json", sha("v2"))
    stream = ("welcome", None, None), ("event", OLD), ("resync", "100-1", "unknown_epoch"), ("event", newer)
    v = check(
        WRITES, [client("c1", "acme", *stream)], published={"acme": [restated]}, baseline_seq=2, epoch_of=old_then_new
    )
    assert v.ok and v.counts["restated_in_new_epoch"] == 1, v.summary()
    older = Event("100-3", "acme", "modified", "a.json", sha("v1"))
    v = check(
        WRITES,
        [client("c1", "acme", *stream, ("event", older))],
        published={"acme": [restated]},
        baseline_seq=2,
        epoch_of=old_then_new,
    )
    assert v.violations == {"rollback": 1}, v.summary()


def test_the_timeline_says_when_each_client_had_each_save():
    """scripts/bench/timeline.py: a save is had when its event (or a newer one of the path)
    arrives, or a Resync reloads past it; the catch-up is when the last save before a time was had."""
    from bench.timeline import catch_up, latency_figures, reach

    writes = [
        Write(1, "acme", "a.json", sha("v0"), 0.0),
        Write(2, "globex", "g.json", sha("g0"), 0.0),
        Write(3, "acme", "a.json", sha("v1"), 10.0),
        Write(4, "acme", "a.json", sha("v2"), 10.5),
        Write(5, "globex", "g.json", sha("g1"), 10.0),
        Write(6, "globex", "g.json", sha("g2"), 10.5),
    ]
    on_time = client("c1", "acme", ("welcome", None, None), ("event", E1), ("event", E2))
    on_time.times.extend([1.0, 10.1, 10.6])
    resynced = client("c2", "acme", ("welcome", None, None), ("resync", "100-2", "source_gap"))
    resynced.times.extend([1.0, 12.5])
    coalesced = client(
        "c3",
        "globex",
        ("welcome", None, None),  # g1 and g2 in one event
        ("event", Event("100-1", "globex", "modified", "g.json", sha("g2"))),
    )
    coalesced.times.extend([1.0, 10.7])
    streams = [on_time, resynced, coalesced]
    v = check(writes, streams, baseline_seq=2)
    assert v.ok, v.summary()
    reaches = reach(writes, streams, v, baseline_seq=2)
    had = {(r.client, r.write.seq): r.at for r in reaches}
    assert had == {("c1", 3): 10.1, ("c1", 4): 10.6, ("c2", 3): 12.5, ("c2", 4): 12.5, ("c3", 5): 10.7, ("c3", 6): 10.7}
    figures = latency_figures(reaches)
    assert (figures["pairs"], figures["never"], figures["max_s"]) == (6, 0, 2.5)
    assert catch_up(reaches, 10.2) == pytest.approx(2.3) and catch_up(reaches, 20.0) == 0.0
    behind = client("c4", "acme", ("welcome", None, None), ("event", E1))  # never had v2
    behind.times.extend([1.0, 10.1])
    reaches = reach(writes, [on_time, behind], check(writes, [on_time, behind], baseline_seq=2), baseline_seq=2)
    assert latency_figures(reaches)["never"] == 1 and catch_up(reaches, 11.0) is None

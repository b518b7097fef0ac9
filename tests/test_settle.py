"""The settle state machine (sources/filesystem/settle.py) without a disk: observations in,
events out. The real-disk behaviour is in tests/test_filesystem_source.py."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tornado_cfgpush.sources.filesystem.settle import GONE, MEMORY_CAP, TWIN_GRACE, Read, Settler

DEBOUNCE, MAX_DELAY = 0.05, 1.0


def target(key: str) -> tuple[str, str]:
    tenant, _, rel = key.partition("/")
    return tenant, rel


class Disk:
    """A model of the config folder and of the worker around the settle machine."""

    def __init__(self, settler: Settler | None = None):
        self.files: dict[str, str] = {}
        self.settler = settler or Settler(DEBOUNCE, MAX_DELAY)
        self.now = 0.0
        self.events: list[dict] = []

    def write(self, key: str, content: str) -> None:
        self.files[key] = content
        self.settler.touched(key, target(key), self.now)

    def delete(self, key: str) -> None:
        self.files.pop(key, None)
        self.settler.touched(key, target(key), self.now)

    def rename(self, src: str, dest: str) -> None:
        self.files[dest] = self.files.pop(src)
        self.settler.renamed(src, target(src), dest, target(dest), self.now)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        for key, _, _ in self.settler.due(self.now):
            content = self.files.get(key)
            self.settler.read_done(key, Read(content) if content is not None else GONE, self.now)

    def take(self, limit: int | None = None) -> list[dict]:
        """Up to ``limit`` events (None: every one there is, batch after batch)."""
        taken: list[dict] = []
        while True:
            batch = [taken.payload for taken in self.settler.take(500 if limit is None else limit, self.now)]
            taken += batch
            if limit is not None or not batch:
                break
        self.events.extend(taken)
        return taken

    def settle(self) -> list[dict]:
        """Everything read and taken: past every debounce, and every grace (TWIN_GRACE)."""
        self.advance(MAX_DELAY + 1)
        taken = self.take()
        while self.settler.pending():
            self.advance(TWIN_GRACE)
            taken += self.take()
        return taken


def kinds(events: list[dict]) -> list[tuple]:
    return [(e["change_type"], e["path"], e["checksum"]) for e in events]


def test_writes_within_the_debounce_are_one_event():
    disk = Disk()
    disk.settler.baseline("acme/a.json", ("acme", "a.json"), "v0")
    disk.files["acme/a.json"] = "v0"
    for i in range(5):
        disk.write("acme/a.json", f"v{i + 1}")
        disk.advance(DEBOUNCE / 2)
    assert disk.take() == []  # still being written
    assert kinds(disk.settle()) == [("modified", "a.json", "v5")]


def test_a_continuous_writer_reports_within_max_delay():
    disk = Disk()
    reported = []
    for i in range(int(3 * MAX_DELAY / (DEBOUNCE / 2))):
        disk.write("acme/a.json", f"v{i}")
        disk.advance(DEBOUNCE / 2)
        reported += disk.take()
    assert len(reported) >= 2  # at least once per max_delay, though never quiet


def test_same_bytes_again_is_no_event():
    disk = Disk()
    disk.settler.baseline("acme/a.json", ("acme", "a.json"), "v0")
    disk.files["acme/a.json"] = "v0"
    disk.write("acme/a.json", "v0")
    assert disk.settle() == []


def test_created_and_deleted():
    disk = Disk()
    disk.write("acme/a.json", "x")
    assert kinds(disk.settle()) == [("created", "a.json", "x")]
    disk.delete("acme/a.json")
    assert kinds(disk.settle()) == [("deleted", "a.json", None)]
    disk.write("acme/b.json", "y")
    disk.delete("acme/b.json")
    assert disk.settle() == []  # never there as far as anyone was told


def test_a_rename_is_one_moved_event_whatever_the_order_of_reads():
    disk = Disk()
    disk.write("acme/a.json", "x")
    disk.settle()
    disk.rename("acme/a.json", "acme/b.json")
    (event,) = disk.settle()
    assert (event["change_type"], event["path"], event["meta"]) == ("moved", "b.json", {"old_path": "a.json"})
    assert event["checksum"] == "x"


def test_a_rename_chain_is_one_move_from_the_first_name():
    disk = Disk()
    disk.write("acme/a.json", "x")
    disk.settle()
    disk.rename("acme/a.json", "acme/b.json")
    disk.rename("acme/b.json", "acme/c.json")
    (event,) = disk.settle()
    assert (event["change_type"], event["path"], event["meta"]["old_path"]) == ("moved", "c.json", "a.json")


def test_renamed_then_deleted_is_the_original_deleted():
    disk = Disk()
    disk.write("acme/a.json", "x")
    disk.settle()
    disk.rename("acme/a.json", "acme/b.json")
    disk.delete("acme/b.json")
    assert kinds(disk.settle()) == [("deleted", "a.json", None)]


def test_a_rename_across_tenants_is_deleted_and_created():
    disk = Disk()
    disk.write("acme/a.json", "x")
    disk.settle()
    disk.rename("acme/a.json", "globex/a.json")
    events = disk.settle()
    assert sorted((e["tenant_id"], e["change_type"]) for e in events) == [("acme", "deleted"), ("globex", "created")]


def test_an_unpaired_rename_is_found_by_its_content():
    """``mkdir new && mv a.json new/``: the watcher reports a deletion and a creation."""
    disk = Disk()
    disk.write("acme/a.json", "x")
    disk.settle()
    disk.files["acme/new/a.json"] = disk.files.pop("acme/a.json")
    disk.settler.touched("acme/new/a.json", ("acme", "new/a.json"), disk.now)  # seen first
    disk.advance(DEBOUNCE * 0.6)
    disk.settler.touched("acme/a.json", ("acme", "a.json"), disk.now)  # the deletion, later
    disk.advance(DEBOUNCE * 0.6)
    assert disk.take() == []  # the creation waits: a file of that content is still to be read
    (event,) = disk.settle()
    assert (event["change_type"], event["path"], event["meta"]) == ("moved", "new/a.json", {"old_path": "a.json"})


def test_a_new_file_with_a_known_content_waits_for_the_other_half_of_a_rename():
    """The watcher reports an unpaired rename's source a little after its destination: a new
    file whose content a known file of the tenant has waits TWIN_GRACE for that report."""
    disk = Disk()
    disk.write("acme/a.json", "x")
    disk.settle()
    disk.files["acme/new/a.json"] = disk.files.pop("acme/a.json")
    disk.settler.touched("acme/new/a.json", ("acme", "new/a.json"), disk.now)  # reported first
    disk.advance(DEBOUNCE * 1.5)  # read: it is there, with a.json's content
    assert disk.take() == []  # waits, though nothing else is pending yet
    assert disk.settler.next_deadline() == pytest.approx(disk.now + TWIN_GRACE, abs=1e-6)
    disk.settler.touched("acme/a.json", ("acme", "a.json"), disk.now)  # the late report
    (event,) = disk.settle()
    assert (event["change_type"], event["meta"]) == ("moved", {"old_path": "a.json"})
    # Without the report, after the grace: created (the deletion, when it comes, follows).
    disk.files["acme/b.json"] = "y"
    disk.write("acme/b.json", "y")
    disk.settle()
    disk.files["acme/c.json"] = "y"
    disk.settler.touched("acme/c.json", ("acme", "c.json"), disk.now)
    disk.advance(DEBOUNCE * 1.5)
    assert disk.take() == []
    disk.advance(TWIN_GRACE)
    assert kinds(disk.take()) == [("created", "c.json", "y")]


def test_thousands_of_identical_new_files_cost_what_distinct_ones_cost():
    """Landed main compared each new file with every known file of the same content: 3 000
    files with '{}' took 10 s. Here the rename index makes each one constant work (20 000
    files would take minutes if it were still quadratic; the test's timeout catches that)."""
    disk = Disk()
    for i in range(20_000):
        disk.write(f"t{i % 100}/f{i}.json", "{}")
    events = disk.settle()
    assert len(events) == 20_000 and {e["change_type"] for e in events} == {"created"}
    for i in range(20_000):
        disk.delete(f"t{i % 100}/f{i}.json")
    assert len(disk.settle()) == 20_000


def test_changes_coalesce_while_the_server_takes_nothing():
    disk = Disk()
    disk.settler.baseline("acme/a.json", ("acme", "a.json"), "v0")
    for i in range(100):
        disk.write("acme/a.json", f"v{i}")
        disk.advance(MAX_DELAY)  # each version is read...
    assert disk.settler.pending() == 1  # ...but only the newest waits
    assert kinds(disk.take()) == [("modified", "a.json", "v99")]


def test_a_touch_during_a_read_reads_again():
    disk = Disk()
    disk.files["acme/a.json"] = "v1"
    disk.settler.touched("acme/a.json", ("acme", "a.json"), 0.0)
    disk.settler.due(1.0)
    disk.write("acme/a.json", "v2")  # while the first read is under way
    disk.settler.read_done("acme/a.json", Read("v1"), 1.0)
    assert disk.take() == []
    assert kinds(disk.settle()) == [("created", "a.json", "v2")]


def test_files_below_a_folder():
    disk = Disk()
    for key in ("acme/x/a.json", "acme/x/y/b.json", "acme/z.json", "globex/x/c.json"):
        disk.write(key, "1")
    disk.settle()
    assert sorted(disk.settler.below("acme/x")) == ["acme/x/a.json", "acme/x/y/b.json"]
    assert sorted(disk.settler.below("acme")) == ["acme/x/a.json", "acme/x/y/b.json", "acme/z.json"]
    disk.delete("acme/x/y/b.json")
    disk.settle()
    assert disk.settler.below("acme/x/y") == []


def test_diffs_and_why_there_is_none():
    settler = Settler(DEBOUNCE, MAX_DELAY, max_copy_bytes=10)
    settler.baseline("acme/a.json", ("acme", "a.json"), "v0", {"a": 1}, 5)
    settler.baseline("acme/b.json", ("acme", "b.json"), "w0", {"b": 1}, 8)  # past the bound
    disk = Disk(settler)
    settler.touched("acme/a.json", ("acme", "a.json"), 0.0)
    settler.touched("acme/b.json", ("acme", "b.json"), 0.0)
    due = {key: old for key, old, _ in settler.due(1.0)}
    assert due["acme/a.json"] == {"a": 1}
    assert getattr(due["acme/b.json"], "reason", None) == MEMORY_CAP
    settler.read_done("acme/a.json", Read("v1", {"a": 2}, 5, diff={"added": [], "removed": [], "changed": ["/a"]}), 1.0)
    settler.read_done("acme/b.json", Read("w1", {"b": 2}, 8, skip=MEMORY_CAP), 1.0)
    a, b = disk.take()
    assert a["diff"]["changed"] == ["/a"]
    assert b["meta"] == {"diff_skipped": MEMORY_CAP} and "diff" not in b


# -- a property: whatever happens, applying the events gives the disk -----------------------------

KEYS = [f"{t}/{n}.json" for t in ("acme", "globex") for n in ("a", "b", "c", "d")]
ops = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.sampled_from(KEYS), st.sampled_from(["x", "y", "z"])),
        st.tuples(st.just("delete"), st.sampled_from(KEYS)),
        st.tuples(st.just("rename"), st.sampled_from(KEYS), st.sampled_from(KEYS)),
        st.tuples(st.just("wait"), st.sampled_from([0.0, DEBOUNCE / 3, DEBOUNCE, MAX_DELAY])),
        st.tuples(st.just("take"), st.integers(0, 3)),
    ),
    max_size=60,
)


@settings(max_examples=400, deadline=None)
@given(ops)
def test_applying_the_events_gives_what_is_on_disk(operations):
    disk = Disk()
    for op in operations:
        if op[0] == "write":
            disk.write(op[1], op[2])
        elif op[0] == "delete" and op[1] in disk.files:
            disk.delete(op[1])
        elif op[0] == "rename" and op[1] in disk.files and op[1] != op[2]:
            disk.rename(op[1], op[2])
        elif op[0] == "wait":
            disk.advance(op[1])
        elif op[0] == "take":
            disk.take(op[1])
    disk.settle()
    client: dict[tuple[str, str], str] = {}
    for event in disk.events:
        where = (event["tenant_id"], event["path"])
        if event["change_type"] == "deleted":
            assert where in client, event  # never a deletion of something not announced
            del client[where]
        elif event["change_type"] == "created":
            assert where not in client, event
            client[where] = event["checksum"]
        elif event["change_type"] == "modified":
            assert client.get(where) not in (None, event["checksum"]), event
            client[where] = event["checksum"]
        else:
            old = (event["tenant_id"], event["meta"]["old_path"])
            assert old in client, event
            del client[old]
            client[where] = event["checksum"]
    assert client == {target(k): v for k, v in disk.files.items()}
    assert disk.settler.pending() == 0 and not disk.settler.busy()

"""The default event source (``sources/filesystem/``) through the real server.

Real files under ``tmp_path``, a real server (pytest-tornado's ``http_server``) and a real
WebSocket client. Every wait has a deadline: ``WebSocketClient.expect`` or ``expect_nothing``,
or ``wait_for`` (tornado_cfgpush.testing). The only sleeps are deliberate pauses that
*simulate* something (an editor between two writes, a continuous writer, a source that stays
down), marked ``wait-ok``.

Latencies are printed (``pytest -s``), never asserted: the machine is shared.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient

from tornado_cfgpush import hookimpl
from tornado_cfgpush.settings import Settings
from tornado_cfgpush.sources.filesystem import (
    POLL_INTERVAL,
    FilesystemSource,
    choose_observer_kind,
    is_ignored_name,
)
from tornado_cfgpush.sources.filesystem import source as filesystem_source
from tornado_cfgpush.testing import wait_for

from .fshelpers import EXPECT, QUIET, change, fs_source, nothing, sha, subscribe

TEST_TIMEOUT = 40  # whole test, seconds (pytest-tornado's default is 5)
POLL_EXPECT = 4 * POLL_INTERVAL + 4  # polling observer: one interval plus the debounce, with room

# watchdog 7.1 warns from its one shared inotify reader thread when a folder made with its
# subfolders at once (mkdir -p) gets its watch added twice (it reuses the watch; harmless).
# Under `filterwarnings = error` that warning would be raised in the thread and kill it, and
# with it every inotify observer of the process: setup.cfg filters exactly that warning.


def sha_file(path: Path) -> str:
    return sha(path.read_bytes())


def report_latency(label: str, started: float) -> None:
    print(f"\n[latency] {label}: {1000 * (time.perf_counter() - started):.1f} ms from save to receipt")


@pytest.fixture
def published(core, monkeypatch):
    """Every event the source got past validation into the broker, in order.

    The broker drops an event equal to the previous one for its path, so a test that only
    watched the client could not tell "no event" from "a duplicate the broker swallowed".
    """
    seen: list[dict] = []
    original = core.broker.publish

    async def spy(fields, version=None):
        seen.append(dict(fields))
        return await original(fields, version=version)

    monkeypatch.setattr(core.broker, "publish", spy)
    return seen


class Recorder:
    """An ``emit`` for a source run directly (no server): payloads on a queue."""

    def __init__(self, block_first: bool = False):
        self.queue: asyncio.Queue[dict] = asyncio.Queue()
        self.calls: list[dict] = []
        self.release = asyncio.Event()
        self._block_first = block_first
        self._n = 0

    async def emit(self, payload: dict) -> str:
        self.calls.append(payload)
        if self._block_first and len(self.calls) == 1:
            await self.release.wait()  # a broker that hangs: the source is stuck in emit
        self._n += 1
        await self.queue.put(payload)
        return f"1-{self._n}"

    async def next(self, timeout: float = EXPECT) -> dict:
        return await asyncio.wait_for(self.queue.get(), timeout)

    async def take(self, n: int, timeout: float = EXPECT) -> list[dict]:
        return [await self.next(timeout) for _ in range(n)]

    async def nothing(self, timeout: float = QUIET) -> None:
        try:
            payload = await asyncio.wait_for(self.queue.get(), timeout)
        except TimeoutError:
            return
        raise AssertionError(f"expected no payload, got {payload!r}")


@pytest.fixture
def start_direct(io_loop):
    """``await start_direct(source, recorder)``: run a source without the server, until it has
    scanned and watches; whatever still runs at teardown is cancelled."""
    tasks: list[asyncio.Task] = []

    async def start(source: FilesystemSource, recorder: Recorder) -> asyncio.Task:
        task = asyncio.create_task(source.run(recorder.emit))
        tasks.append(task)
        await asyncio.wait_for(source.started.wait(), 10)
        return task

    yield start

    async def stop_all() -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    io_loop.run_sync(stop_all)


async def stop_direct(task: asyncio.Task) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def summary(payloads) -> set[tuple]:
    return {(p["tenant_id"], p["change_type"], p["path"], p["checksum"]) for p in payloads}


# -- one save, one event, whatever the editor does ------------------------------------------------


def save_in_place(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:  # open('w'): truncates, then writes
        f.write(data)


def save_truncate_and_write(path: Path, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.truncate(0)
        f.flush()
        f.seek(0)
        f.write(data)


def _save_via(tmp_name: str):
    def save(path: Path, data: bytes) -> None:
        tmp = path.with_name(tmp_name)
        tmp.write_bytes(data)
        os.replace(tmp, path)

    return save


def save_vim_style(path: Path, data: bytes) -> None:
    probe = path.with_name("4913")  # vim checks it may create files in the folder
    probe.write_bytes(b"")
    probe.unlink()
    backup = path.with_name(path.name + "~")
    os.rename(path, backup)
    path.write_bytes(data)
    backup.unlink()


def save_jetbrains_style(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + "___jb_tmp___")
    old = path.with_name(path.name + "___jb_old___")
    tmp.write_bytes(data)
    os.rename(path, old)
    os.rename(tmp, path)
    old.unlink()


SAVES = {
    "in_place": save_in_place,
    "truncate_and_write": save_truncate_and_write,
    "replace_from_dot_tmp": _save_via(".app.json.4f2a9c"),  # atomicwrites, VS Code, most libraries
    "replace_from_tmp_suffix": _save_via("app.json.tmp"),
    "replace_from_sed_i_temp": _save_via("sedX1b2c3"),  # sed -i: a temp name nothing ignores
    "vim": save_vim_style,
    "jetbrains": save_jetbrains_style,
}


@pytest.mark.parametrize("style", list(SAVES))
@pytest.mark.gen_test(timeout=TEST_TIMEOUT)
async def test_one_save_is_one_modified_event(style, connect, config_dir, published):
    client = await subscribe(connect, "acme")
    target = config_dir / "acme" / "app.json"
    data = json.dumps({"a": 2, "saved_by": style}).encode()
    started = time.perf_counter()
    SAVES[style](target, data)
    event = await change(client)
    report_latency(style, started)
    assert event["tenant_id"] == "acme"
    assert event["change_type"] == "modified"
    assert event["path"] == "app.json"
    assert event["checksum"] == sha(data) == sha_file(target)
    assert "meta" not in event
    await nothing(client)
    assert [(p["change_type"], p["path"]) for p in published] == [("modified", "app.json")]


@pytest.mark.parametrize("existing", [True, False], ids=["over_a_file", "a_new_file"])
@pytest.mark.gen_test(timeout=TEST_TIMEOUT)
async def test_a_temporary_file_renamed_into_place_is_never_announced(existing, connect, config_dir, published):
    """The temporary file of an atomic save is closed, then renamed: read at its close (the fast
    path) it would be announced before the rename. Only a file the server knows is read at its
    close; a new one waits the debounce, by which time it is gone."""
    client = await subscribe(connect, "acme")
    target = config_dir / "acme" / ("app.json" if existing else "new.json")
    for n in range(20):  # the race was lost about one time in three
        data = json.dumps({"n": n}).encode()
        temp = config_dir / "acme" / f"sedX{n:05d}"
        temp.write_bytes(data)
        os.replace(temp, target)
        event = await change(client)
        expected = "modified" if existing or n else "created"
        assert (event["change_type"], event["path"], event["checksum"]) == (expected, target.name, sha(data))
    await nothing(client)
    assert {p["path"] for p in published} == {target.name}


@pytest.mark.gen_test(timeout=TEST_TIMEOUT)
async def test_a_file_still_open_for_writing_is_not_announced_half_written(connect, config_dir, published):
    """A file is read at once when its writer is done (closed, or renamed into place); while it
    is still open for writing, the debounce and max_delay apply as before: a writer that pauses
    mid-file for less than the debounce is never seen half way."""
    client = await subscribe(connect, "acme")
    target = config_dir / "acme" / "app.json"
    with open(target, "wb") as f:
        f.write(b'{"half": ')
        f.flush()
        await asyncio.sleep(0.01)  # wait-ok: a writer pausing mid-file, well within the debounce
        f.write(b'"done"}')
    started = time.perf_counter()
    event = await change(client)
    report_latency("in-place save, read at its close", started)
    assert event["checksum"] == sha(b'{"half": "done"}')
    await nothing(client)
    assert [p["checksum"] for p in published] == [sha(b'{"half": "done"}')]


@pytest.mark.parametrize("style", list(SAVES))
@pytest.mark.gen_test(timeout=TEST_TIMEOUT)
async def test_save_of_unchanged_bytes_gives_no_event(style, connect, config_dir, published):
    client = await subscribe(connect, "acme")
    target = config_dir / "acme" / "app.json"
    SAVES[style](target, target.read_bytes())
    await nothing(client, timeout=QUIET + 0.1)
    # The source is alive and past those events: a real change after them is reported alone.
    marker = config_dir / "acme" / "marker.json"
    marker.write_bytes(b"{}")
    event = await change(client)
    assert (event["change_type"], event["path"]) == ("created", "marker.json")
    await nothing(client)
    assert [p["path"] for p in published] == ["marker.json"]


@pytest.mark.gen_test(timeout=TEST_TIMEOUT)
async def test_touch_chmod_open_and_read_give_no_event(connect, config_dir, published):
    client = await subscribe(connect, "acme")
    target = config_dir / "acme" / "app.json"
    target.touch()
    os.utime(target, (1_000_000_000, 1_000_000_000))
    os.chmod(target, 0o600)
    os.chmod(target, 0o644)
    with open(target, "ab"):  # opened and closed for writing, nothing written
        pass
    target.read_bytes()
    await nothing(client, timeout=QUIET + 0.1)
    target.write_bytes(b'{"a": 3}')
    event = await change(client)
    assert (event["change_type"], event["checksum"]) == ("modified", sha(b'{"a": 3}'))
    await nothing(client)
    assert [p["path"] for p in published] == ["app.json"]


@pytest.mark.gen_test(timeout=TEST_TIMEOUT)
async def test_created_modified_deleted_with_checksums(connect, config_dir, published):
    client = await subscribe(connect, "acme")
    new = config_dir / "acme" / "new.json"
    started = time.perf_counter()
    new.write_bytes(b'{"n": 1}')
    event = await change(client)
    report_latency("create", started)
    assert (event["change_type"], event["path"], event["checksum"]) == ("created", "new.json", sha(b'{"n": 1}'))
    new.write_bytes(b'{"n": 2}')
    event = await change(client)
    assert (event["change_type"], event["path"], event["checksum"]) == ("modified", "new.json", sha(b'{"n": 2}'))
    started = time.perf_counter()
    new.unlink()
    event = await change(client)
    report_latency("delete", started)
    assert event["change_type"] == "deleted"
    assert event["path"] == "new.json"
    assert "checksum" in event and event["checksum"] is None
    await nothing(client)
    assert [p["change_type"] for p in published] == ["created", "modified", "deleted"]


@pytest.mark.gen_test(timeout=TEST_TIMEOUT)
async def test_nested_paths_are_relative_and_slash_separated(connect, config_dir):
    client = await subscribe(connect, "acme")
    deep = config_dir / "acme" / "billing" / "eu"
    deep.mkdir(parents=True)
    (deep / "limits.json").write_bytes(b'{"rate": 1}')  # right after mkdir
    event = await change(client)
    assert (event["change_type"], event["path"]) == ("created", "billing/eu/limits.json")
    (deep / "limits.json").write_bytes(b'{"rate": 2}')  # the new folder is watched
    event = await change(client)
    assert (event["change_type"], event["path"], event["checksum"]) == (
        "modified",
        "billing/eu/limits.json",
        sha(b'{"rate": 2}'),
    )
    await nothing(client)


@pytest.mark.gen_test(timeout=TEST_TIMEOUT)
async def test_deleting_a_folder_deletes_each_file(connect, config_dir):
    client = await subscribe(connect, "acme")
    sub = config_dir / "acme" / "sub"
    (sub / "inner").mkdir(parents=True)
    (sub / "a.json").write_bytes(b"a")
    (sub / "inner" / "b.json").write_bytes(b"b")
    created = [await change(client) for _ in range(2)]
    assert {(e["change_type"], e["path"]) for e in created} == {
        ("created", "sub/a.json"),
        ("created", "sub/inner/b.json"),
    }
    shutil.rmtree(sub)
    deleted = [await change(client) for _ in range(2)]
    assert {(e["change_type"], e["path"], e["checksum"]) for e in deleted} == {
        ("deleted", "sub/a.json", None),
        ("deleted", "sub/inner/b.json", None),
    }
    await nothing(client)


# -- debounce -------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=TEST_TIMEOUT)
async def test_continuous_writer_reports_before_it_stops(connect, config_dir, core):
    client = await subscribe(connect, "acme")
    source = fs_source(core)
    target = config_dir / "acme" / "app.json"
    loop = asyncio.get_running_loop()
    state = {"done": False, "last": b"", "writes": 0}

    async def writer() -> None:
        begin = loop.time()
        while loop.time() - begin < 2.0:
            data = json.dumps({"n": state["writes"]}).encode()
            target.write_bytes(data)
            state["last"] = data
            state["writes"] += 1
            await asyncio.sleep(0.01)  # wait-ok: a writer that writes every 10 ms for 2 s
        state["done"] = True

    begin = loop.time()
    task = asyncio.create_task(writer())
    received: list[tuple[float, dict, bool]] = []
    try:
        while True:
            try:
                event = await change(client)
            except TimeoutError:
                break
            received.append((loop.time() - begin, event, state["done"]))
            if state["done"] and event["checksum"] == sha(state["last"]):
                break
    finally:
        await task
    print(
        f"\n[continuous] {state['writes']} writes in 2 s -> {len(received)} events at "
        f"{[round(t, 2) for t, _, _ in received]} s (debounce {source.debounce * 1000:.0f} ms, "
        f"max delay {source.max_delay:.1f} s)"
    )
    assert received, "no event at all"
    assert received[0][2] is False, "the first event came only after the writer stopped"
    assert all(e["change_type"] == "modified" and e["path"] == "app.json" for _, e, _ in received)
    assert received[-1][1]["checksum"] == sha(state["last"]) == sha_file(target)
    assert len(received) < 100, "writes were not coalesced"
    await nothing(client)


class TestLongDebounce:
    """A debounce long enough that pauses between writes surely fall inside it."""

    @pytest.fixture
    def settings(self, config_dir):
        return Settings(config_dir=config_dir, debounce_ms=300)

    @pytest.mark.gen_test(timeout=TEST_TIMEOUT)
    async def test_saves_within_the_debounce_window_after_the_first_are_coalesced(self, connect, config_dir, published):
        """The first save is announced the moment its writer is done (closed, or renamed into
        place); saves that follow within the debounce are one event, the newest."""
        client = await subscribe(connect, "acme")
        target = config_dir / "acme" / "app.json"
        save_in_place(target, b'{"v": 1}')
        first = await change(client)
        assert first["checksum"] == sha(b'{"v": 1}')
        save_truncate_and_write(target, b'{"v": 2}')
        await asyncio.sleep(0.02)  # wait-ok: an editor pausing between two writes
        _save_via(".app.json.tmp")(target, b'{"v": 3}')
        event = await change(client)
        assert (event["change_type"], event["checksum"]) == ("modified", sha(b'{"v": 3}'))
        await nothing(client, timeout=0.6)
        assert len(published) == 2

    @pytest.mark.gen_test(timeout=TEST_TIMEOUT)
    async def test_vim_style_save_with_pauses_is_one_event(self, connect, config_dir, published):
        client = await subscribe(connect, "acme")
        target = config_dir / "acme" / "app.json"
        backup = target.with_name("app.json~")
        os.rename(target, backup)
        await asyncio.sleep(0.02)  # wait-ok: the editor between its steps
        target.write_bytes(b'{"vim": true}')
        await asyncio.sleep(0.02)  # wait-ok: same
        backup.unlink()
        event = await change(client)
        assert (event["change_type"], event["path"], event["checksum"]) == (
            "modified",
            "app.json",
            sha(b'{"vim": true}'),
        )
        await nothing(client, timeout=0.6)
        assert len(published) == 1


# -- renames ----------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=TEST_TIMEOUT)
async def test_rename_inside_a_tenant_is_moved(connect, config_dir, published):
    client = await subscribe(connect, "acme")
    acme = config_dir / "acme"
    content = (acme / "app.json").read_bytes()
    os.rename(acme / "app.json", acme / "renamed.json")
    event = await change(client)
    assert event["change_type"] == "moved"
    assert event["path"] == "renamed.json"
    assert event["meta"] == {"old_path": "app.json"}
    assert event["checksum"] == sha(content)
    await nothing(client)
    # into a subfolder
    (acme / "sub").mkdir()
    os.rename(acme / "renamed.json", acme / "sub" / "deeper.json")
    event = await change(client)
    assert (event["change_type"], event["path"], event["meta"]) == (
        "moved",
        "sub/deeper.json",
        {"old_path": "renamed.json"},
    )
    await nothing(client)
    assert [p["change_type"] for p in published] == ["moved", "moved"]


@pytest.mark.gen_test(timeout=TEST_TIMEOUT)
async def test_rename_into_a_folder_made_just_before_is_moved(connect, config_dir, published):
    """``mkdir d && mv app.json d/``: watchdog cannot pair this rename (the new folder's watch
    comes too late), it reports Created at once and Deleted a moment later. Still one `moved`."""
    client = await subscribe(connect, "acme")
    acme = config_dir / "acme"
    current = "app.json"
    content = (acme / current).read_bytes()
    for i in range(4):
        (acme / f"d{i}").mkdir()
        new = f"d{i}/app.json"
        os.rename(acme / current, acme / new)
        event = await change(client)
        assert (event["change_type"], event["path"], event.get("meta"), event["checksum"]) == (
            "moved",
            new,
            {"old_path": current},
            sha(content),
        ), i
        current = new
    await nothing(client, timeout=0.8)  # watchdog's late Deleted finds nothing to report
    assert [p["change_type"] for p in published] == ["moved"] * 4


@pytest.mark.gen_test(timeout=TEST_TIMEOUT)
async def test_quick_rename_chains_leave_nothing_behind(connect, config_dir, core):
    """a -> b -> c faster than the debounce; then c -> d, a write to d, d -> e."""
    client = await subscribe(connect, "acme")
    acme = config_dir / "acme"
    source = fs_source(core)
    content = (acme / "app.json").read_bytes()
    os.rename(acme / "app.json", acme / "b.json")
    os.rename(acme / "b.json", acme / "c.json")
    event = await change(client)
    assert (event["change_type"], event["path"], event.get("meta"), event["checksum"]) == (
        "moved",
        "c.json",
        {"old_path": "app.json"},
        sha(content),
    )
    await nothing(client)
    assert source.manifest("acme") == {"c.json": sha(content)}

    # A rename chain with a write on the way is one move, with the new content.
    os.rename(acme / "c.json", acme / "d.json")
    (acme / "d.json").write_bytes(b"changed on the way")
    os.rename(acme / "d.json", acme / "e.json")
    event = await change(client)
    assert (event["change_type"], event["path"], event.get("meta"), event["checksum"]) == (
        "moved",
        "e.json",
        {"old_path": "c.json"},
        sha(b"changed on the way"),
    )
    await nothing(client)
    assert source.manifest("acme") == {"e.json": sha(b"changed on the way")}


@pytest.mark.gen_test(timeout=TEST_TIMEOUT)
async def test_rename_of_a_folder_inside_a_tenant_moves_its_files(connect, config_dir, core):
    client = await subscribe(connect, "acme")
    acme = config_dir / "acme"
    (acme / "old").mkdir()
    (acme / "old" / "a.json").write_bytes(b"a")
    (acme / "old" / "b.json").write_bytes(b"b")
    assert {(await change(client))["path"] for _ in range(2)} == {"old/a.json", "old/b.json"}
    os.rename(acme / "old", acme / "new")
    events = [await change(client) for _ in range(2)]
    assert {(e["change_type"], e["path"], (e.get("meta") or {}).get("old_path"), e["checksum"]) for e in events} == {
        ("moved", "new/a.json", "old/a.json", sha(b"a")),
        ("moved", "new/b.json", "old/b.json", sha(b"b")),
    }
    await nothing(client)
    assert fs_source(core).manifest("acme") == {
        "app.json": sha_file(acme / "app.json"),
        "new/a.json": sha(b"a"),
        "new/b.json": sha(b"b"),
    }


@pytest.mark.gen_test(timeout=TEST_TIMEOUT)
async def test_renamed_tenant_folder_is_deleted_in_one_created_in_the_other(connect, config_dir):
    old = await subscribe(connect, "acme")
    new = await subscribe(connect, "acme-renamed")
    content = (config_dir / "acme" / "app.json").read_bytes()
    os.rename(config_dir / "acme", config_dir / "acme-renamed")
    deleted, created = await asyncio.gather(change(old), change(new))
    assert (deleted["tenant_id"], deleted["change_type"], deleted["path"]) == ("acme", "deleted", "app.json")
    assert (created["tenant_id"], created["change_type"], created["path"], created["checksum"]) == (
        "acme-renamed",
        "created",
        "app.json",
        sha(content),
    )
    await nothing(old, new)
    (config_dir / "acme-renamed" / "app.json").write_bytes(b"after")  # watched under its new name
    assert (await change(new))["checksum"] == sha(b"after")
    await nothing(old)


@pytest.mark.gen_test(timeout=TEST_TIMEOUT)
async def test_folder_moved_out_of_the_config_folder_is_deleted(connect, config_dir, tmp_path):
    client = await subscribe(connect, "acme")
    sub = config_dir / "acme" / "sub"
    sub.mkdir()
    (sub / "a.json").write_bytes(b"a")
    assert (await change(client))["path"] == "sub/a.json"
    os.rename(sub, tmp_path / "elsewhere")
    event = await change(client)
    assert (event["change_type"], event["path"], event["checksum"]) == ("deleted", "sub/a.json", None)
    (tmp_path / "elsewhere" / "a.json").write_bytes(b"no longer ours")
    await nothing(client)


@pytest.mark.gen_test(timeout=TEST_TIMEOUT)
async def test_rename_across_tenants_is_deleted_then_created(connect, config_dir):
    acme = await subscribe(connect, "acme")
    globex = await subscribe(connect, "globex")
    content = (config_dir / "acme" / "app.json").read_bytes()
    os.rename(config_dir / "acme" / "app.json", config_dir / "globex" / "from-acme.json")
    deleted = await change(acme)
    assert (deleted["tenant_id"], deleted["change_type"], deleted["path"], deleted["checksum"]) == (
        "acme",
        "deleted",
        "app.json",
        None,
    )
    created = await change(globex)
    assert (created["tenant_id"], created["change_type"], created["path"], created["checksum"]) == (
        "globex",
        "created",
        "from-acme.json",
        sha(content),
    )
    assert "meta" not in created
    await nothing(acme, globex)
    # and to a single-file tenant at the top of the config folder
    solo = await subscribe(connect, "solo")
    os.rename(config_dir / "globex" / "from-acme.json", config_dir / "solo.json")
    assert (await change(globex))["change_type"] == "deleted"
    created = await change(solo)
    assert (created["tenant_id"], created["change_type"], created["path"]) == ("solo", "created", "solo.json")
    await nothing(acme, globex, solo)


# -- layout: single-file tenants, new tenant folders --------------------------------------------------


@pytest.mark.gen_test(timeout=TEST_TIMEOUT)
async def test_single_file_tenant(connect, config_dir, core):
    solo = await subscribe(connect, "solo")
    acme = await subscribe(connect, "acme")
    path = config_dir / "solo.json"
    path.write_bytes(b'{"s": 1}')
    event = await change(solo)
    assert (event["tenant_id"], event["change_type"], event["path"], event["checksum"]) == (
        "solo",
        "created",
        "solo.json",
        sha(b'{"s": 1}'),
    )
    assert fs_source(core).manifest("solo") == {"solo.json": sha(b'{"s": 1}')}
    SAVES["vim"](path, b'{"s": 2}')
    event = await change(solo)
    assert (event["change_type"], event["path"], event["checksum"]) == ("modified", "solo.json", sha(b'{"s": 2}'))
    path.unlink()
    event = await change(solo)
    assert (event["change_type"], event["path"], event["checksum"]) == ("deleted", "solo.json", None)
    # A top-level file without an extension, or a dotfile, is no tenant.
    (config_dir / "README").write_bytes(b"notes")
    (config_dir / ".solo.json.swp").write_bytes(b"swap")
    await nothing(solo, acme)


@pytest.mark.gen_test(timeout=TEST_TIMEOUT)
async def test_tenant_folder_created_after_start_is_watched(connect, config_dir):
    client = await subscribe(connect, "newco")
    folder = config_dir / "newco"
    folder.mkdir()
    started = time.perf_counter()
    (folder / "a.json").write_bytes(b'{"a": 1}')  # right after mkdir
    event = await change(client)
    report_latency("file right after mkdir", started)
    assert (event["tenant_id"], event["change_type"], event["path"], event["checksum"]) == (
        "newco",
        "created",
        "a.json",
        sha(b'{"a": 1}'),
    )
    await nothing(client)
    (folder / "a.json").write_bytes(b'{"a": 2}')
    event = await change(client)
    assert (event["change_type"], event["checksum"]) == ("modified", sha(b'{"a": 2}'))

    # A whole tree made at once (mkdir -p) with files written at once.
    other = await subscribe(connect, "newer")
    (config_dir / "newer" / "x" / "y").mkdir(parents=True)
    (config_dir / "newer" / "x" / "y" / "deep.json").write_bytes(b"1")
    (config_dir / "newer" / "top.json").write_bytes(b"2")
    events = [await change(other) for _ in range(2)]
    assert {(e["change_type"], e["path"]) for e in events} == {("created", "x/y/deep.json"), ("created", "top.json")}
    (config_dir / "newer" / "x" / "y" / "deep.json").write_bytes(b"3")
    event = await change(other)
    assert (event["change_type"], event["path"]) == ("modified", "x/y/deep.json")
    await nothing(client, other)


@pytest.mark.gen_test(timeout=TEST_TIMEOUT)
async def test_tree_moved_in_from_outside_is_reported(connect, config_dir, tmp_path):
    staging = tmp_path / "staging" / "moved-in"
    (staging / "sub").mkdir(parents=True)
    (staging / "sub" / "c.json").write_bytes(b"c")
    client = await subscribe(connect, "moved-in")
    os.rename(staging, config_dir / "moved-in")
    event = await change(client)
    assert (event["change_type"], event["path"], event["checksum"]) == ("created", "sub/c.json", sha(b"c"))
    await nothing(client)


# -- what is never configuration --------------------------------------------------------------------

IGNORED = [
    ".app.json.swp",
    ".app.json.swx",
    "app.json.swp",
    "app.json~",
    "app.json.tmp",
    "4913",
    "#app.json#",
    ".hidden.json",
    "app.json.bak",
    "app.json.orig",
    "app.json___jb_tmp___",
    "app.json___jb_old___",
    "app.json.kate-swp",
    "download.part",
]


def test_is_ignored_name():
    for name in IGNORED:
        assert is_ignored_name(name), name
    for name in ("app.json", "limits.yaml", "4914", "a~b.json", "swp.json"):
        assert not is_ignored_name(name), name


@pytest.mark.gen_test(timeout=TEST_TIMEOUT)
async def test_editor_temp_swap_and_backup_files_give_no_events(connect, config_dir, published):
    client = await subscribe(connect, "acme")
    acme = config_dir / "acme"
    for name in IGNORED:
        (acme / name).write_bytes(b"scratch")
    for name in IGNORED:
        (acme / name).write_bytes(b"scratch, changed")
    os.symlink("user@host.4242:1700000000", acme / ".#app.json")  # emacs lock file
    (acme / ".git").mkdir()  # a hidden folder: nothing under it either
    (acme / ".git" / "HEAD").write_bytes(b"ref: refs/heads/main")
    (acme / "sub" / ".cache").mkdir(parents=True)
    (acme / "sub" / ".cache" / "x.json").write_bytes(b"{}")
    for name in IGNORED:
        (acme / name).unlink()
    await nothing(client, timeout=QUIET + 0.1)
    (acme / "real.json").write_bytes(b"{}")
    event = await change(client)
    assert (event["change_type"], event["path"]) == ("created", "real.json")
    await nothing(client)
    assert [p["path"] for p in published] == ["real.json"]


@pytest.mark.gen_test(timeout=TEST_TIMEOUT)
async def test_invalid_tenant_folders_give_no_events(connect, config_dir, core, published, caplog):
    client = await subscribe(connect, "acme")
    for name in ("-bad", "with space", "café", "_under", "x" * 65):
        (config_dir / name).mkdir()
        (config_dir / name / "app.json").write_bytes(b"{}")
        (config_dir / name / "app.json").write_bytes(b'{"changed": 1}')
    (config_dir / "-bad.json").write_bytes(b"{}")  # an invalid single-file tenant
    (config_dir / "bad name.json").write_bytes(b"{}")
    await nothing(client, timeout=QUIET + 0.1)
    # A file of a valid tenant whose path cannot be announced ('\\' is not allowed in one) is
    # not dropped silently: its tenant's clients are told to reload.
    (config_dir / "acme" / "back\\slash.json").write_bytes(b"{}")
    resync = await client.expect("Resync", timeout=EXPECT)
    assert resync["reason"] == "source_gap"
    (config_dir / "acme" / "real.json").write_bytes(b"{}")
    event = await change(client)
    assert (event["change_type"], event["path"]) == ("created", "real.json")
    await nothing(client)
    assert [(p["tenant_id"], p["path"]) for p in published] == [("acme", "real.json")]
    # Nothing was refused by the schema (the source never emitted them) and nothing crashed.
    assert core.runner.rejected["filesystem"] == 0
    assert core.runner.restarts["filesystem"] == 0
    assert core.metrics.rejected_events == {("filesystem", "invalid_path"): 1}
    assert "not a valid tenant id" in caplog.text
    assert "back\\slash.json" in caplog.text and "cannot be published" in caplog.text
    assert fs_source(core).manifest("acme") == {
        "app.json": sha_file(config_dir / "acme" / "app.json"),
        "real.json": sha(b"{}"),
    }


@pytest.mark.gen_test(timeout=TEST_TIMEOUT)
async def test_special_files_give_no_events(connect, config_dir, published):
    client = await subscribe(connect, "acme")
    acme = config_dir / "acme"
    os.mkfifo(acme / "pipe.json")  # reading it would block the server
    os.symlink("missing.json", acme / "dangling.json")
    (acme / "folder.json").mkdir()
    os.symlink("folder.json", acme / "dirlink.json")
    await nothing(client, timeout=QUIET + 0.1)
    (acme / "real.json").write_bytes(b"{}")
    assert (await change(client))["path"] == "real.json"
    await nothing(client)
    assert [p["path"] for p in published] == ["real.json"]


@pytest.mark.gen_test(timeout=TEST_TIMEOUT)
async def test_non_ascii_and_spaces_in_paths(connect, config_dir):
    client = await subscribe(connect, "acme")
    folder = config_dir / "acme" / "réglages fins"
    folder.mkdir()
    (folder / "naïve café.json").write_bytes(b"{}")
    event = await change(client)
    assert (event["change_type"], event["path"]) == ("created", "réglages fins/naïve café.json")
    await nothing(client)


# -- symbolic links ---------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=TEST_TIMEOUT)
async def test_symlinks_leading_out_of_the_config_folder_are_not_followed(
    connect, config_dir, tmp_path, core, published, start_direct
):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.json"
    secret.write_bytes(b'{"password": "hunter2"}')
    client = await subscribe(connect, "acme")
    acme = config_dir / "acme"
    os.symlink(secret, acme / "abs-link.json")
    os.symlink(os.path.relpath(secret, acme), acme / "rel-link.json")
    os.symlink("abs-link.json", acme / "chain.json")  # a link to a link that leads out
    os.symlink(outside, acme / "linked-dir")
    os.symlink(outside, config_dir / "linked-tenant")
    await nothing(client, timeout=QUIET + 0.1)
    secret.write_bytes(b'{"password": "hunter3"}')  # changes behind the links
    (outside / "new.json").write_bytes(b'{"password": "hunter4"}')
    await nothing(client, timeout=QUIET + 0.1)
    (acme / "app.json").write_bytes(b'{"a": 2}')
    event = await change(client)
    assert (event["change_type"], event["path"]) == ("modified", "app.json")
    await nothing(client)
    assert [p["path"] for p in published] == ["app.json"]
    expected = {"app.json": sha(b'{"a": 2}')}
    assert fs_source(core).manifest("acme") == expected
    assert fs_source(core).manifest("linked-tenant") == {}
    # The content never appears, not even as a checksum: not in a manifest either.
    secrets = {sha(b'{"password": "hunter2"}'), sha(b'{"password": "hunter3"}'), sha(b'{"password": "hunter4"}')}
    again = await connect("acme", manifest=1)
    welcome_text = await again.raw(timeout=EXPECT)
    assert json.loads(welcome_text)["Welcome"]["manifest"] == expected
    assert not any(s.split(":")[1] in welcome_text for s in secrets)

    # A fresh start (full scan) does not follow them either.
    direct = FilesystemSource(config_dir, 0.03)
    recorder = Recorder()
    await start_direct(direct, recorder)
    assert direct.manifest("acme") == expected
    assert direct.manifest("linked-tenant") == {}
    await recorder.nothing()


@pytest.mark.gen_test(timeout=TEST_TIMEOUT)
async def test_symlink_to_a_file_inside_is_followed(connect, config_dir):
    client = await subscribe(connect, "acme")
    acme = config_dir / "acme"
    os.symlink("app.json", acme / "alias.json")
    event = await change(client)
    assert (event["change_type"], event["path"], event["checksum"]) == (
        "created",
        "alias.json",
        sha_file(acme / "app.json"),
    )
    await nothing(client)


# -- tenant isolation -------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=TEST_TIMEOUT)
async def test_two_tenants_never_cross(connect, config_dir):
    (config_dir / "acme2").mkdir()  # a tenant whose name starts with another's
    acme = await subscribe(connect, "acme")
    globex = await subscribe(connect, "globex")
    acme2 = await subscribe(connect, "acme2")

    (config_dir / "globex" / "app.json").write_bytes(b'{"g": 2}')
    event = await change(globex)
    assert (event["tenant_id"], event["path"], event["checksum"]) == ("globex", "app.json", sha(b'{"g": 2}'))
    await nothing(acme, acme2)

    (config_dir / "acme2" / "app.json").write_bytes(b'{"a2": 1}')
    event = await change(acme2)
    assert (event["tenant_id"], event["change_type"], event["path"]) == ("acme2", "created", "app.json")
    await nothing(acme, globex)

    (config_dir / "acme" / "app.json").write_bytes(b'{"a": 2}')
    event = await change(acme)
    assert (event["tenant_id"], event["path"], event["checksum"]) == ("acme", "app.json", sha(b'{"a": 2}'))
    await nothing(globex, acme2)

    # The same relative path changed in both at once: each gets exactly its own.
    (config_dir / "acme" / "app.json").write_bytes(b'{"a": 3}')
    (config_dir / "globex" / "app.json").write_bytes(b'{"g": 3}')
    a, g = await asyncio.gather(change(acme), change(globex))
    assert (a["tenant_id"], a["checksum"]) == ("acme", sha(b'{"a": 3}'))
    assert (g["tenant_id"], g["checksum"]) == ("globex", sha(b'{"g": 3}'))
    await nothing(acme, globex, acme2)


# -- manifest ---------------------------------------------------------------------------------------


@pytest.mark.gen_test(timeout=TEST_TIMEOUT)
async def test_manifest_lists_the_tenants_files(connect, config_dir, core):
    source = fs_source(core)
    acme_dir = config_dir / "acme"
    assert source.manifest("acme") == {"app.json": sha(b'{"a": 1}')}
    assert source.manifest("globex") == {"app.json": sha(b'{"g": 1}')}
    assert source.manifest("nobody") == {}
    assert core.manifest("acme") == source.manifest("acme")

    client = await subscribe(connect, "acme")
    (acme_dir / "billing").mkdir()
    (acme_dir / "billing" / "limits.json").write_bytes(b'{"rate": 5}')
    await change(client)
    expected = {"app.json": sha(b'{"a": 1}'), "billing/limits.json": sha(b'{"rate": 5}')}
    assert source.manifest("acme") == expected
    with_manifest = await connect("acme", manifest=1)
    welcome = await with_manifest.expect("Welcome", timeout=EXPECT)
    assert welcome["manifest"] == expected
    assert welcome["last_event_id"] is not None

    (acme_dir / "app.json").unlink()
    await change(client)
    assert source.manifest("acme") == {"billing/limits.json": sha(b'{"rate": 5}')}
    assert source.manifest("globex") == {"app.json": sha(b'{"g": 1}')}


# -- polling: forced, or because of the inotify watch limit -------------------------------------------


def test_choose_observer_kind():
    assert choose_observer_kind(10, 8192) == "inotify"
    assert choose_observer_kind(10, None) == "inotify"  # limit unknown (not Linux): try inotify
    assert choose_observer_kind(10_001, 10_000) == "polling"
    assert choose_observer_kind(500_000, 8192) == "polling"
    assert choose_observer_kind(1, 2) == "inotify"


class _PollingPlugin:
    @hookimpl
    def cfgpush_register_sources(self, settings):
        return [FilesystemSource(settings.config_dir, settings.debounce_ms / 1000, polling=True)]


async def _exercise_polling(connect, config_dir, published) -> None:
    client = await subscribe(connect, "acme")
    target = config_dir / "acme" / "app.json"
    started = time.perf_counter()
    save_in_place(target, b'{"polled": 1}')
    event = await change(client, timeout=POLL_EXPECT)
    report_latency("polling modify", started)
    assert (event["change_type"], event["path"], event["checksum"]) == ("modified", "app.json", sha(b'{"polled": 1}'))
    (config_dir / "acme" / "new.json").write_bytes(b"{}")
    event = await change(client, timeout=POLL_EXPECT)
    assert (event["change_type"], event["path"]) == ("created", "new.json")
    (config_dir / "acme" / "new.json").unlink()
    event = await change(client, timeout=POLL_EXPECT)
    assert (event["change_type"], event["path"], event["checksum"]) == ("deleted", "new.json", None)
    os.utime(target, (1_000_000_000, 1_000_000_000))  # the poller sees a new mtime, same bytes
    await nothing(client, timeout=POLL_INTERVAL + 1)
    assert [p["change_type"] for p in published] == ["modified", "created", "deleted"]


class TestForcedPolling:
    @pytest.fixture
    def settings(self, config_dir):
        return Settings(config_dir=config_dir, debounce_ms=30, disabled_plugins=("filesystem",))

    @pytest.fixture
    def extra_plugins(self):
        return [("filesystem-polling", _PollingPlugin())]

    @pytest.mark.gen_test(timeout=TEST_TIMEOUT)
    async def test_polling_source_end_to_end(self, connect, config_dir, core, published):
        assert fs_source(core).observer_kind == "polling"
        await _exercise_polling(connect, config_dir, published)


class TestWatchLimitFallback:
    @pytest.fixture
    def settings(self, config_dir, monkeypatch):
        # Before `core` starts: the config folder (3 directories) needs more watches than 2.
        monkeypatch.setattr(filesystem_source, "inotify_watch_limit", lambda: 2)
        return Settings(config_dir=config_dir, debounce_ms=30, watch_fallback="poll")

    @pytest.mark.gen_test(timeout=TEST_TIMEOUT)
    async def test_falls_back_to_polling_and_says_why(self, connect, config_dir, core, published, caplog, http_url):
        assert fs_source(core).observer_kind == "polling"
        warnings = [r.getMessage() for r in caplog.get_records("setup") if r.levelno == logging.WARNING]
        assert any("max_user_watches" in m and "polling" in m for m in warnings), warnings
        ready = json.loads((await AsyncHTTPClient().fetch(f"{http_url}/readyz")).body)
        assert ready["status"] == "degraded" and "max_user_watches" in ready["reasons"][0], ready
        await _exercise_polling(connect, config_dir, published)


class TestWatchLimitError:
    @pytest.fixture
    def settings(self, config_dir, monkeypatch):
        monkeypatch.setattr(filesystem_source, "inotify_watch_limit", lambda: 2)
        return Settings(config_dir=config_dir, debounce_ms=30)  # watch_fallback "error", the default

    @pytest.fixture
    def core(self, io_loop, settings):
        """Started without waiting for its sources: this one cannot start."""
        from tornado_cfgpush.app import CfgPush
        from tornado_cfgpush.plugins import get_plugin_manager

        service = CfgPush(settings, get_plugin_manager(load_entry_points=False))
        io_loop.run_sync(service.start)
        yield service
        io_loop.run_sync(service.stop)

    @pytest.mark.gen_test(timeout=TEST_TIMEOUT)
    async def test_a_watch_limit_too_low_is_an_error_naming_the_sysctl(self, core, caplog):
        await wait_for(lambda: core.runner.restarts["filesystem"] >= 1, EXPECT)
        failures = [r.getMessage() for r in caplog.records if "crashed" in r.getMessage()]
        assert failures and "max_user_watches" in caplog.text and "--watch-fallback poll" in caplog.text
        assert any("filesystem is not running" in reason for reason in core.not_ready_reasons())


@pytest.mark.gen_test(timeout=TEST_TIMEOUT)
async def test_default_observer_is_inotify(core):
    assert fs_source(core).observer_kind == "inotify"


# -- restarts: rescan and report what changed while down ----------------------------------------------


@pytest.mark.gen_test(timeout=TEST_TIMEOUT)
async def test_restart_after_cancel_reports_what_changed_while_down(config_dir, start_direct):
    acme = config_dir / "acme"
    (acme / "same.json").write_bytes(b"same")
    (acme / "gone.json").write_bytes(b"bye")
    (acme / "touched.json").write_bytes(b"touched")
    source = FilesystemSource(config_dir, 0.03)
    first = Recorder()
    task = await start_direct(source, first)
    assert set(source.manifest("acme")) == {"app.json", "same.json", "gone.json", "touched.json"}
    await first.nothing()  # the initial scan reports nothing: it is the baseline
    await stop_direct(task)

    # while no one watches
    (acme / "app.json").write_bytes(b'{"a": "while down"}')
    (acme / "new.json").write_bytes(b"new")
    (acme / "gone.json").unlink()
    (acme / "touched.json").write_bytes(b"touched")  # same bytes again
    os.utime(acme / "same.json", (1_000_000_000, 1_000_000_000))
    (config_dir / "globex" / "app.json").write_bytes(b'{"g": "while down"}')

    second = Recorder()
    await start_direct(source, second)
    payloads = await second.take(4)
    assert summary(payloads) == {
        ("acme", "modified", "app.json", sha(b'{"a": "while down"}')),
        ("acme", "created", "new.json", sha(b"new")),
        ("acme", "deleted", "gone.json", None),
        ("globex", "modified", "app.json", sha(b'{"g": "while down"}')),
    }
    await second.nothing()
    assert source.manifest("acme") == {
        "app.json": sha(b'{"a": "while down"}'),
        "new.json": sha(b"new"),
        "same.json": sha(b"same"),
        "touched.json": sha(b"touched"),
    }
    # and it watches again
    (acme / "app.json").write_bytes(b'{"a": "live"}')
    payload = await second.next()
    assert summary([payload]) == {("acme", "modified", "app.json", sha(b'{"a": "live"}'))}
    assert first.calls == []


@pytest.mark.gen_test(timeout=TEST_TIMEOUT)
async def test_restart_right_after_a_change_loses_nothing(config_dir, start_direct):
    """Cancelled while the change's events are still on their way from the observer thread."""
    target = config_dir / "acme" / "app.json"
    source = FilesystemSource(config_dir, 0.03)
    for round_ in range(5):
        first = Recorder()
        task = await start_direct(source, first)
        data = json.dumps({"round": round_}).encode()
        target.write_bytes(data)
        await stop_direct(task)
        await asyncio.sleep(0.2)  # wait-ok: the source stays down a while, as under the runner's backoff
        second = Recorder()
        task = await start_direct(source, second)
        # Emitted before the cancel (unlikely: the debounce had not passed) or after the restart.
        payloads = first.calls or [await second.next()]
        assert [(p["change_type"], p["checksum"]) for p in payloads] == [("modified", sha(data))], round_
        await second.nothing(0.2)
        await stop_direct(task)


@pytest.mark.gen_test(timeout=TEST_TIMEOUT)
async def test_restart_while_stuck_in_emit_loses_nothing(config_dir, start_direct):
    """A change being emitted when the source stops, and one settled or not yet seen behind it,
    both come out of the next run: the first as it was, the second from the rescan."""
    acme = config_dir / "acme"
    source = FilesystemSource(config_dir, 0.03)
    first = Recorder(block_first=True)
    task = await start_direct(source, first)
    (acme / "app.json").write_bytes(b"one")
    await wait_for(lambda: len(first.calls) == 1, EXPECT)  # stuck emitting it
    (acme / "b.json").write_bytes(b"two")
    await stop_direct(task)

    second = Recorder()
    await start_direct(source, second)
    payloads = await second.take(2)
    assert [(p["change_type"], p["path"], p["checksum"]) for p in payloads] == [
        ("modified", "app.json", sha(b"one")),
        ("created", "b.json", sha(b"two")),
    ]
    await second.nothing()
    assert source.manifest("acme") == {"app.json": sha(b"one"), "b.json": sha(b"two")}


@pytest.mark.gen_test(timeout=TEST_TIMEOUT)
async def test_crashed_source_restarts_and_catches_up(connect, config_dir, core, monkeypatch):
    """Through the server: a failing publish crashes run(); the runner restarts it."""
    acme = await subscribe(connect, "acme")
    globex = await subscribe(connect, "globex")
    original = core.broker.publish
    failed: list[dict] = []

    async def flaky(fields, version=None):
        if not failed:
            failed.append(fields)
            raise RuntimeError("broker hiccup (raised by the test)")
        return await original(fields, version=version)

    monkeypatch.setattr(core.broker, "publish", flaky)
    (config_dir / "acme" / "app.json").write_bytes(b'{"a": "crash"}')  # its publish fails: run() crashes
    await wait_for(lambda: core.runner.restarts["filesystem"] == 1, EXPECT)
    # The runner waits 0.25-0.5 s before restarting: these happen while no one watches.
    (config_dir / "globex" / "app.json").write_bytes(b'{"g": "while down"}')
    (config_dir / "acme" / "new.json").write_bytes(b"new")
    # Before it runs again, its clients are told events may be missing (docs/protocol.md: Resync,
    # source_gap); what it finds on its rescan follows, the crashed event first.
    for client in (acme, globex):
        resync = await client.expect("Resync", timeout=EXPECT)
        assert resync["reason"] == "source_gap"
    assert resync["manifest"] == {"app.json": sha(b'{"g": 1}')}  # globex's, not yet rescanned
    events = [await change(acme) for _ in range(2)]
    assert [(e["change_type"], e["path"], e["checksum"]) for e in events] == [
        ("modified", "app.json", sha(b'{"a": "crash"}')),
        ("created", "new.json", sha(b"new")),
    ]
    event = await change(globex)
    assert (event["change_type"], event["checksum"]) == ("modified", sha(b'{"g": "while down"}'))
    await nothing(acme, globex)
    assert len(failed) == 1
    assert core.runner.restarts["filesystem"] == 1
    # live again
    (config_dir / "acme" / "app.json").write_bytes(b'{"a": "live"}')
    assert (await change(acme))["checksum"] == sha(b'{"a": "live"}')


# -- what changed, for structured files -----------------------------------------------------------


@pytest.mark.parametrize(
    "name, before, after",
    [
        ("limits.json", b'{"rate": 10, "burst": 5, "old": 1}', b'{"rate": 20, "burst": 5, "new": {"x": 1}}'),
        ("limits.toml", b"rate = 10\nburst = 5\nold = 1\n", b"rate = 20\nburst = 5\n[new]\nx = 1\n"),
        ("limits.yaml", b"rate: 10\nburst: 5\nold: 1\n", b"rate: 20\nburst: 5\nnew: {x: 1}\n"),
    ],
)
@pytest.mark.gen_test(timeout=30)
async def test_structured_files_say_what_changed_never_the_values(connect, config_dir, name, before, after):
    path = config_dir / "acme" / name
    client = await subscribe(connect, "acme")
    path.write_bytes(before)
    created = await change(client)
    assert (created["change_type"], created["path"]) == ("created", name)
    assert "diff" not in created
    path.write_bytes(after)
    event = await change(client)
    assert event["change_type"] == "modified"
    assert event["diff"] == {"added": ["/new"], "removed": ["/old"], "changed": ["/rate"]}
    assert "20" not in json.dumps(event["diff"])


@pytest.mark.gen_test(timeout=30)
async def test_a_file_there_at_start_gets_its_diff_at_its_first_change(connect, config_dir):
    """Nothing is parsed at start (a compressed copy is kept instead), and the first change of a
    file that was there at start still says what changed."""
    client = await subscribe(connect, "acme")
    (config_dir / "acme" / "app.json").write_bytes(b'{"a": 2, "b": 1}')
    event = await change(client)
    assert event["diff"] == {"added": ["/b"], "removed": [], "changed": ["/a"]}


def _wide(key: str, value: int) -> bytes:
    """A JSON document of about 60 KB: under tree.PACK_FILE, five of them over PACK_BYTES."""
    return json.dumps({key: value, "rows": [f"row {i} of {key}" for i in range(4000)]}).encode()


class TestAFolderThereAtStart:
    """At start the files of a folder are compressed together, in streams of up to 256 KB
    (tree.Packer): the first change of each, whatever its format, neighbours or size, still
    says what changed."""

    @pytest.fixture
    def config_dir(self, tmp_path: Path) -> Path:
        root = tmp_path / "config"
        files = {
            "acme/a.json": b'{"a": 1, "x": "same"}',
            "acme/b.yaml": b"b: 1\nx: same\n",
            "acme/c.toml": b'c = 1\nx = "same"\n',
            "acme/broken.json": b'{"a": ',
            "acme/notes.txt": b"text",
            "acme/deep/d.json": b'{"d": 1}',
            "acme/big.json": json.dumps({"big": 1, "pad": "x" * 100_000}).encode(),
            "globex/app.json": b'{"g": 1}',
            **{f"acme/wide/w{i}.json": _wide(f"w{i}", 1) for i in range(5)},
        }
        for rel, data in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
        return root

    @pytest.mark.gen_test(timeout=TEST_TIMEOUT)
    async def test_each_first_change_says_what_changed(self, connect, config_dir):
        client = await subscribe(connect, "acme")
        changed = {"added": [], "removed": [], "changed": []}
        for rel, after, diff in [
            ("c.toml", b'c = 2\nx = "same"\n', {**changed, "changed": ["/c"]}),
            ("a.json", b'{"a": 2, "x": "same"}', {**changed, "changed": ["/a"]}),
            ("wide/w4.json", _wide("w4", 2), {**changed, "changed": ["/w4"]}),
            ("b.yaml", b"b: 1\nx: same\nnew: 1\n", {**changed, "added": ["/new"]}),
            ("deep/d.json", b"{}", {**changed, "removed": ["/d"]}),
            ("wide/w0.json", _wide("w0", 2), {**changed, "changed": ["/w0"]}),
            ("big.json", json.dumps({"big": 2, "pad": "x" * 100_000}).encode(), {**changed, "changed": ["/big"]}),
            ("a.json", b'{"a": 3, "x": "same"}', {**changed, "changed": ["/a"]}),
        ]:
            (config_dir / "acme" / rel).write_bytes(after)
            event = await change(client)
            assert (event["change_type"], event["path"], event.get("diff")) == ("modified", rel, diff)
        (config_dir / "acme" / "broken.json").write_bytes(b'{"a": 1}')
        fixed = await change(client)
        assert "diff" not in fixed and fixed["meta"] == {"diff_skipped": "no_previous_version"}
        (config_dir / "acme" / "notes.txt").write_bytes(b"more text")
        assert "diff" not in await change(client)


@pytest.mark.gen_test(timeout=30)
async def test_a_file_that_does_not_parse_still_gets_its_event_without_diff(connect, config_dir):
    path = config_dir / "acme" / "app.json"
    client = await subscribe(connect, "acme")
    path.write_bytes(b'{"a": ')  # half-written, or a typo
    broken = await change(client)
    assert (broken["change_type"], broken["checksum"]) == ("modified", sha(b'{"a": '))
    assert "diff" not in broken
    path.write_bytes(b'{"a": 3}')  # fixed: nothing parsed to compare with
    fixed = await change(client)
    assert "diff" not in fixed
    path.write_bytes(b'{"a": 4}')
    assert (await change(client))["diff"] == {"added": [], "removed": [], "changed": ["/a"]}


@pytest.mark.gen_test(timeout=30)
async def test_unstructured_files_get_no_diff(connect, config_dir):
    path = config_dir / "acme" / "notes.txt"
    client = await subscribe(connect, "acme")
    path.write_text("one")
    await change(client)
    path.write_text("two")
    assert "diff" not in await change(client)


# -- links stay in their tenant -------------------------------------------------------------------


@pytest.mark.gen_test(timeout=30)
async def test_links_into_another_tenant_are_not_followed(connect, config_dir, core):
    acme = await subscribe(connect, "acme")
    os.symlink(config_dir / "globex" / "app.json", config_dir / "acme" / "theirs.json")
    os.symlink("../globex/app.json", config_dir / "acme" / "theirs-rel.json")
    os.symlink("globex/app.json", config_dir / "acme.json")  # a single-file tenant pointing away
    await nothing(acme, timeout=QUIET + 0.1)
    (config_dir / "globex" / "app.json").write_bytes(b'{"g": 2}')
    await nothing(acme)
    assert "theirs.json" not in fs_source(core).manifest("acme")
    assert "acme.json" not in fs_source(core).manifest("acme")


# -- the kernel dropped events -------------------------------------------------------------------

MAX_QUEUED = Path("/proc/sys/fs/inotify/max_queued_events")


class GapRecorder(Recorder):
    """``emit`` with ``emit.gap``, as the server hands a source."""

    def __init__(self):
        super().__init__()
        self.gaps: list = []
        outer = self

        class _Emit:
            async def __call__(self, payload):
                return await outer.emit(payload)

            async def gap(self, tenant_ids=None):
                outer.gaps.append(sorted(tenant_ids) if tenant_ids is not None else None)

        self.emitter = _Emit()


def _children_running(module: str) -> list[str]:
    """The pids of this process's children whose command line names ``module`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
        except OSError:  # not a process, or gone
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state
        if parent == os.getpid() and module in cmdline:
            found.append(entry.name)
    return found


@pytest.mark.gen_test(timeout=120)
async def test_inotify_queue_overflow_rescans_and_reports_a_gap(config_dir, io_loop, caplog):
    if not os.access(MAX_QUEUED, os.W_OK):
        pytest.skip(f"{MAX_QUEUED} is not writable here (needs root): cannot make the kernel queue overflow")
    source = FilesystemSource(config_dir, 0.03)
    recorder = GapRecorder()
    original = MAX_QUEUED.read_text()
    try:
        # The limit is read when the inotify instance is created: lower it for this one only.
        MAX_QUEUED.write_text("16")
        task = asyncio.create_task(source.run(recorder.emitter))
        await asyncio.wait_for(source.started.wait(), 10)
    finally:
        MAX_QUEUED.write_text(original)
    try:
        names = [f"burst{i}.json" for i in range(400)]
        # The worker stopped while the files are written: the kernel's queue of 16 overflows
        # for certain (a worker that keeps up on a quiet machine let it pass one run in eight).
        (worker,) = (int(pid) for pid in _children_running("filesystem.worker"))
        os.kill(worker, signal.SIGSTOP)
        try:
            for i, name in enumerate(names):
                (config_dir / "acme" / name).write_text(f'{{"i": {i}}}')
        finally:
            os.kill(worker, signal.SIGCONT)
        await wait_for(lambda: len({p["path"] for p in recorder.calls}) >= len(names), 60)
        created = [p["path"] for p in recorder.calls if p["change_type"] == "created"]
        assert sorted(created) == sorted(names)  # each once: the rescan and the events agree
        assert "rescanning" in caplog.text  # the kernel's queue did overflow
        # A rescan that finds files differing from what was announced tells their tenants
        # (and only them) that they may have missed changes; one that finds nothing says nothing.
        assert all(gap == ["acme"] for gap in recorder.gaps), recorder.gaps
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

"""The filesystem source's health (issue #19.4), against a real ``cfgpush-serve``: a watcher
thread that dies, and a watcher that silently stops delivering, are noticed; the source
restarts with a rescan, its clients get ``Resync(source_gap)``, what changed while it was
broken is delivered, and ``/readyz`` and ``cfgpush_source_up`` say so meanwhile.

The faults are injected without touching the server's code: ``sitecustomize.py`` in a folder
put first on the server's ``PYTHONPATH`` (its worker process inherits it) patches watchdog's
inotify emitter in the worker process only. Marker files arm it:

* ``kill``: at its next event the emitter's thread raises, and dies (as it did under a
  time-shifting library, issue #19);
* ``mute``: from its next event on the emitter reads and drops everything, alive and silent;
* ``refuse-start``: a worker started while it exists exits at once, so the source stays down
  (restarting with a growing backoff) long enough to be looked at; removing it lets the next
  restart succeed.

``kill`` and ``mute`` are taken (deleted) when they fire: the restarted worker is healthy.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import textwrap
from pathlib import Path

import pytest
from tornado.httpclient import AsyncHTTPClient

from tornado_cfgpush.testing import LISTENING, WebSocketClient
from tornado_cfgpush.testing.redisserver import WAIT

SITECUSTOMIZE = textwrap.dedent('''
    """Faults of the filesystem source's watcher, for tests/test_source_health.py."""
    import os
    import sys

    MARKERS = os.environ.get("TEST_WATCHER_FAULTS")


    def _take(name):
        try:
            os.unlink(os.path.join(MARKERS, name))
            return True
        except FileNotFoundError:
            return False


    if MARKERS and "tornado_cfgpush.sources.filesystem.worker" in sys.orig_argv:
        if os.path.exists(os.path.join(MARKERS, "refuse-start")):
            os._exit(3)
        from watchdog.observers import inotify

        _original = inotify.InotifyEmitter.build_and_queue_event
        _muted = []

        def build_and_queue_event(self, event, **kwargs):
            if _take("kill"):
                raise RuntimeError("injected: the watcher thread dies")
            if _muted or _take("mute"):
                _muted.append(True)
                return None
            return _original(self, event, **kwargs)

        inotify.InotifyEmitter.build_and_queue_event = build_and_queue_event
''')
NOT_RUNNING = "source filesystem is not running (restarting after a crash)"
UP = re.compile(r'^cfgpush_source_up\{source="filesystem"\} (\S+)$', re.M)
CANARY = 2  # --watch-canary: seconds without a file event before the worker checks its watcher


def checksum(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


class Watched:
    """A ``cfgpush-serve`` whose watcher can be broken, a client of tenant acme, the folder."""

    def __init__(self, server, port: int, markers: Path, config_dir: Path, client: WebSocketClient):
        self.server, self.port, self.markers, self.config_dir, self.client = server, port, markers, config_dir, client

    def arm(self, *markers: str) -> None:
        for marker in markers:
            (self.markers / marker).touch()

    def disarm(self, marker: str) -> None:
        (self.markers / marker).unlink()

    def save(self, rel: str, text: str) -> str:
        """An atomic save (a temporary dotfile renamed over the file); returns its checksum."""
        path = self.config_dir / "acme" / rel
        temporary = path.with_name(f".{path.name}.tmp")
        temporary.write_text(text)
        os.replace(temporary, path)
        return checksum(text)

    async def get(self, path: str) -> tuple[int, str]:
        http = AsyncHTTPClient(force_instance=True)
        try:
            response = await http.fetch(f"http://127.0.0.1:{self.port}{path}", raise_error=False)
            return response.code, response.body.decode()
        finally:
            http.close()

    async def health(self) -> tuple[int, list[str], float | None]:
        """(/readyz status, its reasons, cfgpush_source_up of the filesystem source)."""
        code, body = await self.get("/readyz")
        _, metrics = await self.get("/metrics")
        up = UP.search(metrics)
        return code, json.loads(body).get("reasons", []), float(up.group(1)) if up else None

    async def wait_health(self, wanted, timeout: float = 60.0) -> tuple[int, list[str], float | None]:
        """Poll until ``wanted(code, reasons, up)``; returns that sample."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not wanted(*(sample := await self.health())):
            assert loop.time() < deadline, f"health not as wanted within {timeout} s; last: {sample}"
            await asyncio.sleep(0.05)  # wait-ok: polling a condition under a deadline
        return sample

    async def until_changed(self, wanted: dict[str, str], timeout: float = 60.0) -> list[dict]:
        """Every message until each ``{path: checksum}`` of ``wanted`` arrived as a ConfigChanged."""
        messages: list[dict] = []
        missing = dict(wanted)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while missing:
            message = await self.client.next(max(0.1, deadline - loop.time()))
            messages.append(message)
            changed = message.get("ConfigChanged") if isinstance(message, dict) else None
            if changed and missing.get(changed["path"]) == changed["checksum"]:
                del missing[changed["path"]]
        return messages


@pytest.fixture
def watched(start, tmp_path, config_dir, io_loop):
    """``await watched()`` -> a ``Watched`` server, its client welcomed (closed at teardown,
    before ``io_loop`` closes its loop)."""
    faults = tmp_path / "faults"
    faults.mkdir()
    (faults / "sitecustomize.py").write_text(SITECUSTOMIZE)
    markers = tmp_path / "markers"
    markers.mkdir()
    path = os.pathsep.join(p for p in (str(faults), os.environ.get("PYTHONPATH", "")) if p)
    clients: list[WebSocketClient] = []

    async def _start() -> Watched:
        server = start(
            "--port",
            "0",
            "--config-dir",
            str(config_dir),
            "--watch-canary",
            str(CANARY),
            "--metrics-public",
            "--debounce-ms",
            "30",
            "--disable-plugin",
            "ticker",
            PYTHONPATH=path,
            TEST_WATCHER_FAULTS=str(markers),
        )
        port = int((await server.wait_log(LISTENING)).group(1))
        client = await WebSocketClient.open(f"ws://127.0.0.1:{port}/ws", "acme")
        clients.append(client)
        await client.expect("Welcome", WAIT)
        return Watched(server, port, markers, config_dir, client)

    yield _start
    for client in clients:
        client.close()


async def broken_then_healed(w: Watched, failure: str) -> str:
    """The source failed (its log says ``failure``) and cannot start again: /readyz and
    /metrics say so; a change is made meanwhile; then it may start, rescans, and everything
    changed since it broke reaches the client after a Resync(source_gap). Returns the
    checksum of the change made while it was down."""
    await w.server.wait_log(re.escape(failure), timeout=60)
    await w.server.wait_log("source filesystem crashed; restarting", timeout=WAIT)
    code, reasons, _ = await w.wait_health(lambda code, reasons, up: NOT_RUNNING in reasons)
    assert code == 503, reasons
    await w.wait_health(lambda code, reasons, up: up == 0.0)
    while_down = w.save("new.json", '{"made": "while the source was down"}')
    w.disarm("refuse-start")
    return while_down


def assert_resync_then(messages: list[dict]) -> None:
    """A Resync(source_gap) first (one per restart attempt), then the changes."""
    kinds = [next(iter(m)) if isinstance(m, dict) else m for m in messages]
    assert kinds[0] == "Resync" and set(kinds) == {"Resync", "ConfigChanged"}, messages
    assert {m["Resync"]["reason"] for m in messages if "Resync" in m} == {"source_gap"}, messages


@pytest.mark.gen_test(timeout=150)
async def test_a_watcher_thread_that_dies_restarts_the_source_with_a_rescan(watched):
    w = await watched()
    w.arm("refuse-start", "kill")
    lost = w.save("app.json", '{"a": "seen by a watcher that died on it"}')
    while_down = await broken_then_healed(w, "a watcher thread died")
    messages = await w.until_changed({"app.json": lost, "new.json": while_down})
    assert_resync_then(messages)
    await w.wait_health(lambda code, reasons, up: code == 200 and up == 1.0)
    # The new watcher works.
    after = w.save("app.json", '{"a": "after"}')
    assert await w.until_changed({"app.json": after}, timeout=WAIT)
    assert not (w.markers / "kill").exists()


@pytest.mark.gen_test(timeout=150)
async def test_a_watcher_that_stops_delivering_is_caught_by_its_canary(watched):
    w = await watched()
    w.arm("refuse-start", "mute")
    lost = w.save("app.json", '{"a": "never reported by a silent watcher"}')
    # Nothing reports it: after CANARY seconds without an event the worker makes its canary,
    # which the silent watcher does not report either.
    await w.client.expect_nothing(0.5)
    while_down = await broken_then_healed(w, "the watcher stopped delivering events")
    messages = await w.until_changed({"app.json": lost, "new.json": while_down})
    assert_resync_then(messages)
    await w.wait_health(lambda code, reasons, up: code == 200 and up == 1.0)
    after = w.save("app.json", '{"a": "after"}')
    assert await w.until_changed({"app.json": after}, timeout=WAIT)
    # The failed worker's canary is gone (the server kills a worker once it reports its failure).
    canary = re.search(r"the canary (\S+) was not reported", w.server.text()).group(1)
    assert not (w.config_dir / canary).exists()

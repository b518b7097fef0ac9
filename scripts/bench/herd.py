"""The herd (issue #14): N clients of one tenant hear that a 20 KB JSON file changed one value.
How soon does the last of them hold the new value, at what server CPU, for how many bytes?

* ``static``: each client GETs the file from a plain Tornado ``StaticFileHandler`` (what an
  application does today when told to reload), after the event (cfgpush with no patches).
* ``cfgpush``: each GETs it from cfgpush's files API with ``If-None-Match`` (the version it
  holds) and ``Accept-Encoding: gzip``: one read and one compression for all of them.
* ``patch``: each applies the patch the event carries: no request at all.

Every client is a raw WebSocket connection of the load generator (``loadgen.py``); a GET is a
new TCP connection per client (ten thousand browsers do not share one), all fired the moment
the event arrives: no jitter (``cfgpush.js`` spreads its fetches over ``fetchJitterMs``; the
herd here is the worst case). The generator checks one client's patch against the new
document (``patching.apply_patch`` and the event's ``document_checksum``) and counts the
rest at receipt: a browser's own CPU is not the server's. Figures: from the save (an atomic
rename, as an editor does) to the last client holding the new value; the CPU of the servers
(cfgpush, plus the static server in ``static``); bytes received by the clients for the change
(event frames and HTTP answers, headers included). Both servers are pinned to one core.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from time import perf_counter

from . import targets
from .loadgen import Client, LoadGen, Sink
from .procs import Proc, Resources, free_port
from .scenarios import log, no_gc, save
from .targets import HOST, TENANT, Options

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))  # the package, for patching's check of one client's patch

MODES = ("static", "cfgpush", "patch")
PATH = "ui/settings.json"


def settings_document(size: int, version: int) -> dict:
    """A configuration file of about ``size`` bytes: feature flags and limits of a tenant."""
    doc: dict = {"version": version, "features": {}, "limits": {}}
    i = 0
    while len(json.dumps(doc, indent=2)) < size:
        doc["features"][f"feature_{i:04d}"] = {
            "enabled": i % 3 == 0,
            "rollout": (i * 7) % 100,
            "owner": f"team-{i % 17}",
        }
        doc["limits"][f"limit_{i:04d}"] = i * 10
        i += 1
    return doc


class HttpGet(asyncio.Protocol):
    """One GET on its own connection; ``done(status, bytes received)`` once the body is in."""

    __slots__ = ("request", "done", "transport", "received", "head", "need", "finished", "status")

    def __init__(self, request: bytes, done: Callable[[int, int], None]):
        self.request, self.done = request, done
        self.transport = None
        self.received = 0
        self.head = b""
        self.need: int | None = None
        self.finished = False
        self.status = 0

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.need is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            length = 0
            for line in self.head[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            self.need = end + 4 + length
            self.status = int(self.head.split(b" ", 2)[1])
        if self.received >= self.need and not self.finished:
            self.finished = True
            self.transport.abort()  # RST: no TIME_WAIT pile-up between runs
            self.done(self.status, self.received)

    def connection_lost(self, exc) -> None:
        if not self.finished:
            self.finished = True
            self.done(0, self.received)


class HerdSink(Sink):
    """Each client's receipt of the change, and what it does then (``mode``)."""

    def __init__(self) -> None:
        self.mode = "patch"
        self.request = b""
        self.port = 0
        self.done_at: dict[int, float] = {}
        self.ws_bytes = 0
        self.http_bytes = 0
        self.failures = 0
        self.statuses: dict[int, int] = {}
        self.checked: dict | None = None
        self.expect = 0
        self.all_done: asyncio.Future | None = None
        self.started = 0.0

    def arm(self, mode: str, expect: int, request: bytes = b"", port: int = 0) -> asyncio.Future:
        self.mode, self.request, self.port, self.expect = mode, request, port, expect
        self.done_at.clear()
        self.ws_bytes = self.http_bytes = self.failures = 0
        self.statuses = {}
        self.checked = None
        self.all_done = asyncio.get_running_loop().create_future()
        return self.all_done

    def _finished(self, client_id: int, now: float) -> None:
        self.done_at[client_id] = now
        if len(self.done_at) >= self.expect and self.all_done is not None and not self.all_done.done():
            self.all_done.set_result(None)

    def change(self, client: Client, payload: bytes, now: float) -> None:
        self.ws_bytes += len(payload) + (2 if len(payload) < 126 else 4)
        cid = id(client)
        if self.mode == "patch":
            if self.checked is None:
                self.checked = json.loads(payload)["ConfigChanged"]
            if b'"patch"' in payload:
                self._finished(cid, now)
            else:
                self.failures += 1
            return
        loop = asyncio.get_running_loop()

        def got(status: int, size: int) -> None:
            self.http_bytes += size
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if status == 200:
                self._finished(cid, perf_counter())
            else:
                self.failures += 1

        task = loop.create_task(loop.create_connection(lambda: HttpGet(self.request, got), HOST, self.port))
        task.add_done_callback(lambda t: t.exception() and self._connect_failed(got))

    def _connect_failed(self, got: Callable[[int, int], None]) -> None:
        got(0, 0)


def _get(target: str, port: int, headers: dict[str, str]) -> bytes:
    lines = [f"GET {target} HTTP/1.1", f"Host: {HOST}:{port}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def run(
    res: Resources, opts: Options, *, clients: int, size: int, concurrency: int, timeout: float = 120.0
) -> dict:
    from tornado_cfgpush.content import checksum_of
    from tornado_cfgpush.patching import apply_patch, document_checksum

    config_dir = res.mkdir("herd-config")
    folder = config_dir / TENANT / "ui"
    folder.mkdir(parents=True, exist_ok=True)
    target_file = folder / "settings.json"
    version = 0
    doc = settings_document(size, version)
    text = json.dumps(doc, indent=2)
    target_file.write_text(text)
    static_port = free_port()
    static: Proc = res.start(
        "static",
        [
            sys.executable,
            str(Path(__file__).parent / "servers" / "static.py"),
            "--root",
            str(config_dir / TENANT),
            "--port",
            str(static_port),
        ],
    )
    results: dict = {"clients": clients, "file_bytes": len(text.encode()), "modes": {}}
    try:
        for mode in MODES:
            extra = ("--serve-content", "ui/*.json") + (("--max-patch-bytes", "0") if mode != "patch" else ())
            server = await targets.start("cfgpush", res, opts, config_dir=config_dir, extra=extra)
            sink = HerdSink()
            gen = LoadGen(HOST, server.ws_port, sink, welcome=True)
            try:
                await gen.connect(clients, concurrency=concurrency)
                figures = []
                for measured in (False, True):  # a warm-up change first, unmeasured
                    held = checksum_of(text.encode())
                    version += 1
                    doc = {**doc, "version": version}
                    text = json.dumps(doc, indent=2)
                    if mode == "static":
                        request = _get("/" + PATH, static_port, {"Accept-Encoding": "gzip"})
                        port = static_port
                    else:
                        request = _get(
                            f"/api/v1/tenants/{TENANT}/files/{PATH}",
                            server.ws_port,
                            {"Accept-Encoding": "gzip", "If-None-Match": f'"{held}"'},
                        )
                        port = server.ws_port
                    done = sink.arm(mode, clients, request, port)
                    procs = [server.proc] + ([static] if mode == "static" else [])
                    with no_gc():
                        cpu0 = sum(p.run_ns() for p in procs)
                        started = perf_counter()
                        save(target_file, text, "atomic")
                        try:
                            await asyncio.wait_for(done, timeout)
                        except TimeoutError:
                            pass
                        cpu = (sum(p.run_ns() for p in procs) - cpu0) / 1e9
                    holding = len(sink.done_at)
                    last = max(sink.done_at.values()) - started if sink.done_at else None
                    checked = None
                    if mode == "patch" and sink.checked and "patch" in sink.checked:
                        event = sink.checked
                        patched = apply_patch({**doc, "version": version - 1}, event["patch"])
                        checked = patched == doc and document_checksum(patched) == event["document_checksum"]
                    if measured:
                        figures.append(
                            {
                                "holding": holding,
                                "all_hold": holding == clients,
                                "last_client_s": last,
                                "server_cpu_s": cpu,
                                "bytes": sink.ws_bytes + sink.http_bytes,
                                "event_bytes": sink.ws_bytes,
                                "http_bytes": sink.http_bytes,
                                "failures": sink.failures,
                                "statuses": {str(k): v for k, v in sorted(sink.statuses.items())},
                                "patch_checked": checked,
                            }
                        )
                    await asyncio.sleep(0.5)  # late answers and closes settle before the next
                results["modes"][mode] = figures[0]
                f = figures[0]
                log(
                    f"herd   {mode:8s} {f['holding']}/{clients} hold the new value after "
                    f"{(f['last_client_s'] or 0) * 1000:.0f} ms; server CPU {f['server_cpu_s']:.2f} s; "
                    f"{f['bytes'] / 1e6:.2f} MB sent"
                )
            finally:
                gen.close_all()
                targets.stop(server, res)
    finally:
        res.stop(static)
    a, c = results["modes"].get("static"), results["modes"].get("patch")
    if a and c and c["bytes"] and c["last_client_s"]:
        results["bytes_ratio"] = a["bytes"] / c["bytes"]
        results["time_ratio"] = (a["last_client_s"] or 0) / c["last_client_s"]
    return results

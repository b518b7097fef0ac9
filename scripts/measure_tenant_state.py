#!/usr/bin/env python3
"""Memory of per-tenant state: N distinct tenants with one event each, then the TTL passes.

Issue 18 item 7. A server (the embedded broker, no filesystem source) runs in a child
process; this script publishes one event for each of N distinct tenants through
``POST /api/v1/events`` (keep-alive connections, a few threads), then waits, in real time,
until ``--history-ttl`` has passed and the broker's sweep has forgotten every tenant. The
child's RSS (``/proc/<pid>/status``) is read before publishing (the baseline), after it,
after the expiry, and after ``gc.collect()`` plus glibc's ``malloc_trim(0)`` (what the
allocator could give back). Then a second wave of N other tenants, and its expiry: memory the
allocator kept is reused, so RSS does not grow by the first wave's figure again. A second
child, run with ``tracemalloc``, reports the Python heap's own figure at the same points
(tracing inflates RSS, hence a run of its own).

    python scripts/measure_tenant_state.py --tenants 50000 --history-ttl 120
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import http.client
import json
import os
import subprocess
import sys
import threading
import time
import tracemalloc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TOKEN = "measure-publish-token"


# -- the child: a server with a stats route ---------------------------------------------------------


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


async def child(history_ttl: float, history_max_bytes: int, trace: bool) -> None:
    from tornado import web
    from tornado.httpserver import HTTPServer
    from tornado.testing import bind_unused_port

    from tornado_cfgpush.app import CfgPush, make_app
    from tornado_cfgpush.plugins import get_plugin_manager
    from tornado_cfgpush.settings import Settings

    settings = Settings(
        disabled_plugins=("filesystem",),
        history_ttl=history_ttl,
        history_max_bytes=history_max_bytes,
        publish_token=TOKEN,
    )
    core = CfgPush(settings, get_plugin_manager(("filesystem",), load_entry_points=False))
    await core.start()

    class Stats(web.RequestHandler):
        def get(self) -> None:
            if self.get_query_argument("trim", None):
                gc.collect()
                try:
                    ctypes.CDLL("libc.so.6").malloc_trim(0)
                except OSError:  # not glibc
                    pass
            state = core.broker.state()
            self.finish(
                {
                    "rss_kib": rss_kib(),
                    "tenants": state.tenants,
                    "history_bytes": state.history_bytes,
                    "traced_bytes": tracemalloc.get_traced_memory()[0] if trace else None,
                }
            )

    app = make_app(core)
    app.add_handlers(r".*", [(r"/_stats", Stats)])
    sock, port = bind_unused_port()
    HTTPServer(app).add_sockets([sock])
    gc.collect()
    if trace:
        tracemalloc.start()
    print(port, flush=True)
    await asyncio.Event().wait()  # until killed


# -- the parent ------------------------------------------------------------------------------------


def get_stats(port: int, trim: bool = False) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", "/_stats?trim=1" if trim else "/_stats")
        return json.loads(conn.getresponse().read())
    finally:
        conn.close()


def publish_range(port: int, start: int, stop: int, wave: int, errors: list) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    try:
        for i in range(start, stop):
            body = json.dumps(
                {
                    "tenant_id": f"w{wave}-tenant-{i:06d}",
                    "change_type": "modified",
                    "path": "app.json",
                    "checksum": "sha256:" + f"{i:064x}",
                }
            )
            conn.request("POST", "/api/v1/events", body=body, headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status != 202:
                errors.append(response.status)
    finally:
        conn.close()


def run(tenants: int, history_ttl: float, history_max_bytes: int, trace: bool, threads: int) -> dict:
    proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--child",
            "--history-ttl",
            str(history_ttl),
            "--history-max-bytes",
            str(history_max_bytes),
        ]
        + (["--trace"] if trace else []),
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    try:
        port = int(proc.stdout.readline())
        figures = {"before": get_stats(port)}
        for wave in (1, 2):
            started = time.monotonic()
            errors: list = []
            step = -(-tenants // threads)
            workers = [
                threading.Thread(target=publish_range, args=(port, s, min(s + step, tenants), wave, errors))
                for s in range(0, tenants, step)
            ]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            figures[f"publish_seconds_{wave}"] = time.monotonic() - started
            if errors:
                raise SystemExit(f"{len(errors)} publishes failed: {sorted(set(errors))}")
            figures[f"published_{wave}"] = published = get_stats(port)
            if figures[f"publish_seconds_{wave}"] >= history_ttl or published["tenants"] != tenants:
                raise SystemExit(
                    f"publishing took {figures[f'publish_seconds_{wave}']:.0f} s: give a --history-ttl "
                    "longer than that, so that every tenant is kept at once"
                )
            deadline = time.monotonic() + history_ttl + 60  # the last tenant's TTL, and a minute
            while get_stats(port)["tenants"]:
                if time.monotonic() > deadline:
                    raise SystemExit(f"wave {wave}: the tenants were not forgotten within a minute past the TTL")
                time.sleep(0.5)  # wait-ok: the TTL passing in real time is what is measured
            figures[f"expired_after_seconds_{wave}"] = time.monotonic() - started
            figures[f"expired_{wave}"] = get_stats(port)
            figures[f"trimmed_{wave}"] = get_stats(port, trim=True)
        return figures
    finally:
        proc.kill()
        proc.wait()


POINTS = (
    ("before (baseline)", "before"),
    ("after publishing", "published_1"),
    ("after expiry", "expired_1"),
    ("after gc + malloc_trim", "trimmed_1"),
    ("2nd wave published", "published_2"),
    ("2nd wave expired", "expired_2"),
    ("after gc + malloc_trim", "trimmed_2"),
)


def report(tenants: int, rss: dict, traced: dict | None) -> None:
    mib = 1024 * 1024
    base = rss["before"]["rss_kib"] * 1024
    kept = rss["published_1"]["history_bytes"]
    print(
        f"{tenants} tenants, one event each, published in {rss['publish_seconds_1']:.1f} s; all forgotten "
        f"{rss['expired_after_seconds_1']:.0f} s after publishing started; then {tenants} others"
    )
    print(
        f"counted against --history-max-bytes after publishing: {kept / mib:.1f} MiB "
        f"({kept / tenants:.0f} B per tenant)"
    )
    print("RSS of the server process:")
    for label, key in POINTS:
        value = rss[key]["rss_kib"] * 1024
        print(
            f"  {label:24} {value / mib:7.1f} MiB  ({(value - base) / mib:+7.1f} MiB, {value / base:.2f}x the baseline)"
        )
    print(f"  per tenant while kept:  {(rss['published_1']['rss_kib'] * 1024 - base) / tenants:.0f} B")
    if traced:
        tbase = traced["before"]["traced_bytes"]
        print("tracemalloc (Python heap, traced from just before publishing):")
        for label, key in POINTS[1:]:
            print(f"  {label:24} {(traced[key]['traced_bytes'] - tbase) / mib:+7.1f} MiB")
        print(f"  per tenant while kept:  {(traced['published_1']['traced_bytes'] - tbase) / tenants:.0f} B")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tenants", type=int, default=50_000)
    parser.add_argument("--history-ttl", type=float, default=120.0)
    parser.add_argument("--history-max-bytes", type=int, default=256 * 1024 * 1024)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--no-tracemalloc", action="store_true", help="skip the traced run")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        asyncio.run(child(args.history_ttl, args.history_max_bytes, args.trace))
        return
    rss = run(args.tenants, args.history_ttl, args.history_max_bytes, False, args.threads)
    traced = (
        None if args.no_tracemalloc else run(args.tenants, args.history_ttl, args.history_max_bytes, True, args.threads)
    )
    report(args.tenants, rss, traced)
    if args.json:
        print(json.dumps({"rss": rss, "tracemalloc": traced}, indent=2))


if __name__ == "__main__":
    main()

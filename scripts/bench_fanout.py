#!/usr/bin/env python3
"""Fan-out benchmark: server CPU per delivery, cfgpush against a seed-style Tornado handler.

Both servers run in this same invocation, interleaved round by round, each in its own
process pinned to core 0 (the load generator to core 1 where there are two), and are
measured by the same raw asyncio client. The result is a ratio, never an absolute target:

    python scripts/bench_fanout.py --clients 2000 --events 20 --rounds 3

``seed`` is the original design's handler: ``write_message(json.dumps(...))`` per client.
``cfgpush`` is this project's hub: one encoding per event, the same bytes to every stream.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import statistics
import struct
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))


# -- the servers (run as `bench_fanout.py --serve IMPL PORT`) ----------------------------------------

def serve(impl: str, port: int) -> None:
    import tornado.web
    import tornado.websocket

    def cpu() -> dict:
        t = os.times()
        return {"user": t.user, "sys": t.system}

    if impl == "seed":
        clients: set = set()

        class Seed(tornado.websocket.WebSocketHandler):
            def open(self):
                clients.add(self)

            def on_close(self):
                clients.discard(self)

        def publish(n: int) -> None:
            for i in range(n):
                payload = {"tenant_id": "bench", "change_type": "modified", "path": f"f{i}.json"}
                for c in list(clients):
                    c.write_message(json.dumps({"ConfigChanged": payload}))

        routes = [(r"/ws", Seed)]
        count = lambda: len(clients)  # noqa: E731
    else:
        sys.path.insert(0, os.path.dirname(HERE))
        from tornado_cfgpush.app import CfgPush, make_app
        from tornado_cfgpush.plugins import get_plugin_manager
        from tornado_cfgpush.settings import Settings

        core = CfgPush(Settings(disabled_plugins=("filesystem",)), get_plugin_manager(("filesystem",), load_entry_points=False))

        def publish(n: int) -> None:
            for i in range(n):
                # The same path as the plugin path: schema, broker, hub.
                asyncio.ensure_future(core.publish({"tenant_id": "bench", "change_type": "modified", "path": f"f{i}.json"}, "bench"))

        routes = None
        count = lambda: core.hub.connection_count()  # noqa: E731

    class Control(tornado.web.RequestHandler):
        def get(self, what):
            if what == "cpu":
                self.finish(cpu())
            elif what == "count":
                self.finish({"count": count()})
            elif what == "publish":
                publish(int(self.get_argument("n")))
                self.finish({})

    async def main():
        if impl == "seed":
            app = tornado.web.Application(routes + [(r"/bench/(\w+)", Control)])
        else:
            await core.start()
            app = make_app(core)
            app.wildcard_router.add_rules([(r"/bench/(\w+)", Control)])
        app.listen(port, "127.0.0.1", backlog=4096)
        import gc
        gc.collect()
        gc.freeze()
        await asyncio.Event().wait()

    asyncio.run(main())


# -- the load generator ----------------------------------------------------------------------------

async def open_client(port: int, counter: dict) -> asyncio.StreamWriter:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(f"GET /ws?tenant_id=bench HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                 f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    await reader.readuntil(b"\r\n\r\n")

    async def pump():
        buf = b""
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                buf += data
                while len(buf) >= 2:
                    n = buf[1] & 0x7F
                    off = 2
                    if n == 126:
                        if len(buf) < 4:
                            break
                        n, off = struct.unpack("!H", buf[2:4])[0], 4
                    elif n == 127:
                        if len(buf) < 10:
                            break
                        n, off = struct.unpack("!Q", buf[2:10])[0], 10
                    if len(buf) < off + n:
                        break
                    opcode, payload = buf[0] & 0x0F, buf[off:off + n]
                    buf = buf[off + n:]
                    if opcode == 0x9:  # answer pings, masked, as a client must
                        writer.write(b"\x8a\x80" + os.urandom(4))
                    elif opcode == 0x1 and payload.startswith(b'{"ConfigChanged"'):
                        counter["n"] += 1
                        if counter["n"] == counter["target"]:
                            counter["done"].set()
        except (ConnectionError, asyncio.CancelledError):
            return

    counter["tasks"].append(asyncio.ensure_future(pump()))
    return writer


def get(port: int, what: str, **params) -> dict:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/bench/{what}?{query}", timeout=60) as r:
        return json.loads(r.read())


async def measure(port: int, clients: int, events: int) -> dict:
    counter = {"n": 0, "target": clients * events, "done": asyncio.Event(), "tasks": []}
    writers = []
    for start in range(0, clients, 200):  # bounded connect rate
        writers += await asyncio.gather(*(open_client(port, counter) for _ in range(min(200, clients - start))))
    loop = asyncio.get_running_loop()
    while (await loop.run_in_executor(None, get, port, "count"))["count"] < clients:
        await asyncio.sleep(0.05)
    before = await loop.run_in_executor(None, get, port, "cpu")
    gen_before = os.times()
    t0 = time.perf_counter()
    await loop.run_in_executor(None, lambda: get(port, "publish", n=events))
    await asyncio.wait_for(counter["done"].wait(), 120)
    wall = time.perf_counter() - t0
    after = await loop.run_in_executor(None, get, port, "cpu")
    gen_after = os.times()
    deliveries = clients * events
    for w in writers:
        w.transport.abort()
    for t in counter["tasks"]:
        t.cancel()
    return {
        "deliveries": counter["n"],
        "server_us_per_delivery": 1e6 * (after["user"] - before["user"] + after["sys"] - before["sys"]) / deliveries,
        "user_us": 1e6 * (after["user"] - before["user"]) / deliveries,
        "sys_us": 1e6 * (after["sys"] - before["sys"]) / deliveries,
        "deliveries_per_s": deliveries / wall,
        "generator_cpu_s": (gen_after.user - gen_before.user) + (gen_after.system - gen_before.system),
        "wall_s": wall,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(impl: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve", impl, str(port)])
    if hasattr(os, "sched_setaffinity") and os.cpu_count() and os.cpu_count() >= 2:
        os.sched_setaffinity(proc.pid, {0})
    deadline = time.time() + 15
    while True:
        try:
            get(port, "count")
            return proc, port
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"{impl} server did not start")
            time.sleep(0.05)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default="", help="also write the results to this file")
    parser.add_argument("--serve", nargs=2, metavar=("IMPL", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return 0
    if hasattr(os, "sched_setaffinity") and os.cpu_count() and os.cpu_count() >= 2:
        os.sched_setaffinity(0, {1})
    results: dict[str, list[dict]] = {"seed": [], "cfgpush": []}
    for _ in range(args.rounds):
        for impl in results:  # interleaved: both see the same machine state
            proc, port = start_server(impl)
            try:
                results[impl].append(asyncio.run(measure(port, args.clients, args.events)))
            finally:
                proc.kill()
                proc.wait()
    summary = {}
    print(f"{args.clients} clients x {args.events} events, {args.rounds} rounds, median of rounds")
    print(f"{'server':8} {'µs/delivery':>12} {'user':>7} {'sys':>7} {'deliveries/s':>13} {'all received':>13}")
    for impl, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        summary[impl] = med
        ok = all(r["deliveries"] == args.clients * args.events for r in runs)
        print(f"{impl:8} {med['server_us_per_delivery']:12.1f} {med['user_us']:7.1f} {med['sys_us']:7.1f} "
              f"{med['deliveries_per_s']:13.0f} {str(ok):>13}")
    # os.times() counts in clock ticks (10 ms): a tiny run may measure zero.
    ratio = summary["seed"]["server_us_per_delivery"] / max(summary["cfgpush"]["server_us_per_delivery"], 1e-9)
    print(f"cfgpush spends {ratio:.2f}x less server CPU per delivery than the seed-style handler"
          + ("" if args.clients * args.events >= 10_000 else " (too few deliveries to be meaningful)"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results, "median": summary, "ratio_seed_over_cfgpush": ratio}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

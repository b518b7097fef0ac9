#!/usr/bin/env python3
"""Resume replay time: a client that missed N events reconnects and is caught up.

Runs an embedded-broker server in this process, publishes N events of one tenant, then
measures, over a real WebSocket, the time from opening the connection to receiving the
last replayed event; as a baseline, the time to open a connection and receive Welcome
only (no replay), measured in the same run:

    python scripts/bench_resume.py --events 1000 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tornado.httpserver import HTTPServer
from tornado.testing import bind_unused_port
from tornado.websocket import websocket_connect

from tornado_cfgpush.app import CfgPush, make_app
from tornado_cfgpush.plugins import get_plugin_manager
from tornado_cfgpush.settings import Settings


async def timed_connect(url: str, expect: int) -> float:
    start = time.perf_counter()
    conn = await websocket_connect(url)
    got = 0
    while got < expect + 1:  # Welcome, then the replay
        message = await conn.read_message()
        got += 1
    elapsed = time.perf_counter() - start
    assert json.loads(message)  # the last one parsed
    conn.close()
    return elapsed


async def main(events: int, rounds: int) -> dict:
    settings = Settings(disabled_plugins=("filesystem",), history_size=max(events, 1000))
    core = CfgPush(settings, get_plugin_manager(("filesystem",), load_entry_points=False))
    await core.start()
    sock, port = bind_unused_port()
    server = HTTPServer(make_app(core))
    server.add_sockets([sock])
    first = None
    for i in range(events + 1):
        event_id = await core.publish(
            {
                "tenant_id": "bench",
                "change_type": "modified",
                "path": f"f{i}.json",
                "checksum": "sha256:" + f"{i:064x}",
            },
            "bench",
        )
        first = first or event_id
    base = f"ws://127.0.0.1:{port}/ws?tenant_id=bench"
    welcome_only, replay = [], []
    for _ in range(rounds):
        welcome_only.append(await timed_connect(base, 0))
        replay.append(await timed_connect(f"{base}&last_event_id={first}", events))
    server.stop()
    await core.stop()
    result = {
        "events": events,
        "welcome_only_ms": 1000 * statistics.median(welcome_only),
        "replay_ms": 1000 * statistics.median(replay),
    }
    result["replay_per_event_us"] = 1000 * (result["replay_ms"] - result["welcome_only_ms"]) / events
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    r = asyncio.run(main(args.events, args.rounds))
    print(
        f"connect + Welcome: {r['welcome_only_ms']:.1f} ms; connect + Welcome + replay of {r['events']} events: "
        f"{r['replay_ms']:.1f} ms ({r['replay_per_event_us']:.1f} µs per replayed event, client included)"
    )

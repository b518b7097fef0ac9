#!/usr/bin/env python3
"""The ``websockets`` library's server (new asyncio API) with ``websockets.broadcast()``.

``websockets.asyncio.server.serve`` with a handler that registers the connection and waits
for it to close (the library's design: one Task per connection), protocol pings every 5 s,
and ``broadcast(connections, text)`` per event. The library's server answers only WebSocket
handshakes, so the trigger (``POST /api/v1/events``, ``GET /healthz``) is served on a second
port by the same process, with the same minimal HTTP code as the floor's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import broadcast, serve

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import ControlProtocol, EventMaker, arguments, listening, raise_nofile, run

by_tenant: dict[str, set] = {}


async def handler(connection) -> None:
    tenant = parse_qs(urlsplit(connection.request.path).query).get("tenant_id", [""])[0]
    clients = by_tenant.setdefault(tenant, set())
    clients.add(connection)
    try:
        await connection.wait_closed()
    finally:
        clients.discard(connection)


def main() -> None:
    args = arguments(__doc__.split("\n\n")[0])
    raise_nofile()
    logging.basicConfig(level=logging.WARNING)
    maker = EventMaker()

    def publish(fields: dict) -> str:
        body = maker.make(fields)
        broadcast(by_tenant.get(body["tenant_id"], ()), json.dumps({"ConfigChanged": body}, separators=(",", ":")))
        return body["event_id"]

    async def main_async() -> None:
        loop = asyncio.get_running_loop()
        control = await loop.create_server(
            lambda: ControlProtocol(args.publish_token, publish), args.host, args.publish_port
        )
        async with serve(
            handler,
            args.host,
            args.port,
            ping_interval=args.heartbeat_interval,
            ping_timeout=2 * args.heartbeat_interval,
            backlog=128,
        ) as server:
            listening("websockets", args.port)
            async with control:
                await server.serve_forever()

    run(main_async, args.loop)


if __name__ == "__main__":
    main()

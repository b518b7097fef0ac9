#!/usr/bin/env python3
"""The seed-style server: the original design's Tornado handler.

A ``WebSocketHandler`` per client in one set per tenant, and a broadcast that calls
``write_message(json.dumps(...))`` for every client: one encoding and one frame per
recipient, each write through Tornado's buffered ``IOStream.write`` (a Future per write).
Tornado's own protocol pings every 5 s, as the protocol requires of a server.
``POST /api/v1/events`` and ``GET /healthz`` are Tornado handlers on the same port.
"""

from __future__ import annotations

import json
import os
import sys

import tornado.web
import tornado.websocket

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import EventMaker, arguments, listening, raise_nofile, run

by_tenant: dict[str, set] = {}
maker = EventMaker()


class Seed(tornado.websocket.WebSocketHandler):
    def open(self):
        self.tenant = self.get_argument("tenant_id")
        by_tenant.setdefault(self.tenant, set()).add(self)

    def on_close(self):
        by_tenant.get(getattr(self, "tenant", ""), set()).discard(self)

    def on_message(self, message):
        pass


def broadcast(body: dict) -> None:
    for client in list(by_tenant.get(body["tenant_id"], ())):
        client.write_message(json.dumps({"ConfigChanged": body}))  # per client, as the seed did


class Publish(tornado.web.RequestHandler):
    def initialize(self, token: str):
        self.token = token

    def post(self):
        if self.request.headers.get("Authorization") != f"Bearer {self.token}":
            self.set_status(403)
            self.finish({"error": "wrong token"})
            return
        body = maker.make(json.loads(self.request.body))
        broadcast(body)
        self.set_status(202)
        self.finish({"event_id": body["event_id"]})


class Health(tornado.web.RequestHandler):
    def get(self):
        self.finish({"status": "ok"})


def main() -> None:
    args = arguments(__doc__.split("\n\n")[0])
    raise_nofile()

    async def serve() -> None:
        import asyncio

        app = tornado.web.Application(
            [(r"/ws", Seed), (r"/api/v1/events", Publish, {"token": args.publish_token}), (r"/healthz", Health)],
            websocket_ping_interval=args.heartbeat_interval,
            websocket_ping_timeout=2 * args.heartbeat_interval,
        )
        app.listen(args.port, args.host, backlog=128)
        listening("seed", args.port)
        await asyncio.Event().wait()

    run(serve, args.loop)


if __name__ == "__main__":
    main()

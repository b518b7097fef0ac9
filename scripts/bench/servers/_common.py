"""What the three baseline servers share: the event body, the publish trigger, fd limits.

Every server under test, cfgpush included, is triggered the same way: ``POST /api/v1/events``
with ``Authorization: Bearer <token>`` and the JSON body ``{"tenant_id", "change_type",
"path"}``, answered ``202 {"event_id": ...}``; ``GET /healthz`` answers 200 once it serves.
A baseline that cannot answer HTTP on its WebSocket port (the ``websockets`` library's server)
answers on a second port. This module is imported by the baseline programs only (run as
``python scripts/bench/servers/<name>.py``), with nothing but the standard library.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import resource
import sys
import time
from collections.abc import Callable

TENANT = "bench"


def raise_nofile() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: 10 000 sockets need more than 1 024 fds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="WebSocket port")
    parser.add_argument("--publish-port", type=int, default=0, help="control port (0: the WebSocket port)")
    parser.add_argument("--publish-token", required=True)
    parser.add_argument("--heartbeat-interval", type=float, default=5.0)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio")
    return parser.parse_args()


def run(main, loop: str) -> None:
    """``asyncio.run(main())``, or uvloop's (Python 3.11 has no ``loop_factory``)."""
    if loop == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


class EventMaker:
    """The body cfgpush itself sends for a published event, so that every server writes the
    same JSON shape and about the same number of bytes per delivery: tenant_id, change_type,
    event_id (``<epoch ms>-<seq>``, as cfgpush's embedded broker), path, timestamp, source."""

    def __init__(self) -> None:
        self.epoch = int(time.time() * 1000)
        self.seq = 0

    def make(self, fields: dict) -> dict:
        self.seq += 1
        now = datetime.datetime.now(datetime.UTC)
        return {
            "tenant_id": fields["tenant_id"],
            "change_type": fields.get("change_type", "modified"),
            "event_id": f"{self.epoch}-{self.seq}",
            "path": fields["path"],
            "timestamp": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
            "source": "api",
        }


def http_response(status: int, body: dict | None = None) -> bytes:
    reason = {200: "OK", 202: "Accepted", 400: "Bad Request", 403: "Forbidden", 404: "Not Found"}[status]
    data = json.dumps(body if body is not None else {}).encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    ).encode() + data


class ControlHTTP:
    """A minimal HTTP/1.1 server side for the trigger: keep-alive and pipelined requests,
    ``POST /api/v1/events`` and ``GET /healthz``. ``feed`` returns the bytes to answer."""

    def __init__(self, token: str, publish: Callable[[dict], str]):
        self.expected_auth = f"Bearer {token}"
        self.publish = publish
        self.buf = b""

    def feed(self, data: bytes) -> bytes:
        self.buf += data
        out = []
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = self.buf[:end].decode("latin-1").split("\r\n")
            headers = {}
            for line in head[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            if len(self.buf) < end + 4 + length:
                break
            body = self.buf[end + 4 : end + 4 + length]
            self.buf = self.buf[end + 4 + length :]
            out.append(self.answer(head[0], headers, body))
        return b"".join(out)

    def answer(self, request_line: str, headers: dict, body: bytes) -> bytes:
        method, target = request_line.split(" ")[:2]
        if method == "GET" and target == "/healthz":
            return http_response(200, {"status": "ok"})
        if method == "POST" and target == "/api/v1/events":
            if headers.get("authorization") != self.expected_auth:
                return http_response(403, {"error": "wrong token"})
            try:
                fields = json.loads(body)
            except ValueError:
                return http_response(400, {"error": "not JSON"})
            return http_response(202, {"event_id": self.publish(fields)})
        return http_response(404, {"error": "not found"})


class ControlProtocol(asyncio.Protocol):
    """``ControlHTTP`` on its own port (for a server that cannot answer HTTP itself)."""

    def __init__(self, token: str, publish: Callable[[dict], str]):
        self.http = ControlHTTP(token, publish)

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        answer = self.http.feed(data)
        if answer:
            self.transport.write(answer)


def listening(name: str, port: int) -> None:
    print(f"{name}: listening on http://127.0.0.1:{port}", file=sys.stderr, flush=True)

"""A Server-Sent Events client that parses the stream as the WHATWG spec says.

Tornado's HTTP client de-chunks the body (so the server's chunk framing is checked too);
this parser splits lines on CRLF, LF or CR, ignores comments (but records them), collects
``data`` lines, keeps the last ``id``, and dispatches an event at each blank line.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from dataclasses import dataclass
from urllib.parse import urlencode

from tornado.httpclient import AsyncHTTPClient, HTTPRequest


@dataclass
class SSEEvent:
    type: str
    data: str
    id: str

    def json(self):
        return json.loads(self.data)


class SSEClient:
    def __init__(self) -> None:
        self.events: asyncio.Queue[SSEEvent | None] = asyncio.Queue()
        self.comments: list[str] = []
        self.last_event_id = ""
        self.headers: dict[str, str] | None = None  # lower-case names, once the response head came
        self.code: int | None = None
        self._buffer = ""
        self._pending_cr = False
        self._data: list[str] = []
        self._type = ""
        self._client = AsyncHTTPClient(force_instance=True)
        self._fetch: asyncio.Future | None = None

    @classmethod
    async def open(
        cls,
        http_url: str,
        tenant_id: str = "acme",
        *,
        headers: dict | None = None,
        ssl_options: ssl.SSLContext | None = None,
        **query,
    ) -> SSEClient:
        self = cls()
        params = {"tenant_id": tenant_id, **query}
        request = HTTPRequest(
            f"{http_url}/events?{urlencode(params)}",
            headers={"Accept": "text/event-stream", **(headers or {})},
            streaming_callback=self._feed,
            header_callback=self._header,
            request_timeout=120,
            ssl_options=ssl_options,
        )
        self._fetch = asyncio.ensure_future(self._client.fetch(request, raise_error=False))
        self._fetch.add_done_callback(lambda _: self.events.put_nowait(None))
        return self

    def _header(self, line: str) -> None:
        if line.startswith("HTTP/"):
            self.code = int(line.split()[1])
        elif ":" in line:
            name, _, value = line.partition(":")
            self.headers = self.headers or {}
            self.headers[name.strip().lower()] = value.strip()

    def _feed(self, chunk: bytes) -> None:
        text = chunk.decode("utf-8")
        if self._pending_cr and text.startswith("\n"):
            text = text[1:]
        self._pending_cr = text.endswith("\r")
        self._buffer += text
        while True:
            cut = min((i for i in (self._buffer.find("\r"), self._buffer.find("\n")) if i >= 0), default=-1)
            if cut < 0:
                return
            line = self._buffer[:cut]
            skip = 2 if self._buffer[cut : cut + 2] == "\r\n" else 1
            self._buffer = self._buffer[cut + skip :]
            self._line(line)

    def _line(self, line: str) -> None:
        if line == "":
            if self._data:
                self.events.put_nowait(SSEEvent(self._type or "message", "\n".join(self._data), self.last_event_id))
            self._data, self._type = [], ""
            return
        if line.startswith(":"):
            self.comments.append(line[1:].strip())
            return
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "data":
            self._data.append(value)
        elif field == "event":
            self._type = value
        elif field == "id" and "\0" not in value:
            self.last_event_id = value

    async def next(self, timeout: float = 3.0) -> SSEEvent:
        event = await asyncio.wait_for(self.events.get(), timeout)
        if event is None:
            raise EOFError("the event stream ended")
        return event

    async def expect(self, kind: str, timeout: float = 3.0) -> dict:
        event = await self.next(timeout)
        assert event.type == kind, f"expected {kind}, got {event}"
        return event.json()

    async def ended(self, timeout: float = 5.0):
        """Wait for the server to end the stream; returns the response."""
        assert self._fetch is not None  # opened by SSEClient.open
        response = await asyncio.wait_for(asyncio.shield(self._fetch), timeout)
        return response

    def close(self) -> None:
        self._client.close()
        if self._fetch is not None and not self._fetch.done():
            self._fetch.cancel()

"""The Python client: ``async for event in subscribe(url, tenant_id)``.

For back-end services that hot-reload their own configuration::

    from tornado_cfgpush.client import ConfigChanged, Resync, subscribe

    async for event in subscribe("http://cfg.internal:7945", "acme"):
        if isinstance(event, ConfigChanged):
            reload(event.path)
        else:  # Resync: reload everything, event.manifest says what the files are
            reload_all()

It behaves as ``cfgpush.js`` does: reconnects with full-jitter exponential backoff (0.5 s
doubling to 20 s), resumes from the last event it handed out (nothing missed, nothing twice,
or a ``Resync``), sends ``"Ping"`` every heartbeat interval and treats two silent intervals as
a dead connection, acknowledges events (``Ack``) once the loop's body for them has finished
(when the next event is asked for), and refreshes a JWT before it expires.

A failure comes back too (docs/protocol.md, Additions): call ``failed(error)`` in the loop's
body for the event it could not apply, and the client answers that event with
``{"Ack": {"event_id", "error"}}`` instead (the error's first line, at most 200 characters),
until a later event is applied. In ``async with subscribe(...) as events:``, a body that raises
out of the block reports the exception for the event it was handling before the connection
closes::

    async with subscribe(url, "acme") as events:
        async for event in events:
            try:
                reload(event)
            except ValueError as exc:
                events.failed(exc)  # shown on the dashboard and in the status API

An ``Ack`` means "applied up to this event", so the client sends the newest one, at once when
it has sent none for ``ack_interval`` (0.1 s) and otherwise when that interval is over: a
burst of thousands of events costs at most ten ``Ack`` frames a second, within the server's
frame budget (``--max-client-rate``, 20 a second by default).

With ``content=True`` it keeps the served files it has seen (``--serve-content`` on the
server; ``await subscription.file(path)`` fetches one) and each ``ConfigChanged`` of a kept
file, or with a patch, carries ``value``: a ``FileVersion`` (``checksum``, ``content`` bytes or
None after a patch, ``document``). A patch is applied when the client holds ``base_checksum``,
and the result checked against ``document_checksum`` (RFC 8785, ``patching.py``); otherwise the
file is fetched with ``If-None-Match`` after a random wait of up to ``fetch_jitter`` seconds, and
its bytes checked against their ETag. A ``Resync`` carries ``files``: the kept files whose
checksum changed (None: gone).

A refusal that retrying cannot cure (an invalid tenant id; 401/403 without ``get_token``)
raises ``SubscribeError``. Use ``async with subscribe(...) as events:`` to close the
connection the moment the block ends (a ``break`` out of a bare ``async for`` closes it when
the generator is collected).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import inspect
import json
import logging
import random
import ssl
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClientConnection, WebSocketClosedError, WebSocketError, websocket_connect

from . import structured
from .content import checksum_of
from .patching import NotJson, PatchFailed, apply_patch, document_checksum

log = logging.getLogger("cfgpush.client")

BACKOFF_MIN = 0.5
BACKOFF_MAX = 20.0
# content=True: a 503 of the files API (the file is being changed) is asked again this often.
FETCH_RETRIES = 3
# At most one Ack per interval (seconds): the newest applied event id.
ACK_INTERVAL = 0.1
ACK_ERROR_MAX = 200  # characters of an Ack's error (the server refuses more)


@dataclass(frozen=True)
class ConfigChanged:
    """One change of the tenant's configuration (docs/protocol.md section 2)."""

    tenant_id: str
    change_type: str
    event_id: str
    path: str | None = None
    checksum: str | None = None
    timestamp: str | None = None
    source: str | None = None
    diff: dict | None = None
    meta: dict | None = None
    patch: list | None = None
    base_checksum: str | None = None
    document_checksum: str | None = None
    raw: dict = field(default_factory=dict, repr=False, compare=False)
    # content=True: the file's new version (None: not a kept file, or deleted).
    value: FileVersion | None = field(default=None, compare=False)

    def to_json(self) -> dict:
        """The message as it came on the wire: ``{"ConfigChanged": {...}}``."""
        return {"ConfigChanged": self.raw}


@dataclass(frozen=True)
class Resync:
    """Reload the configuration, then go on from ``last_event_id``.

    ``reason``: ``history_expired``, ``unknown_epoch``, ``unknown_event_id``, ``source_gap``, or
    ``no_resume_point`` (made here: there was no id to resume from, and events came meanwhile).
    """

    tenant_id: str
    last_event_id: str | None
    reason: str
    manifest: dict | None = None
    raw: dict = field(default_factory=dict, repr=False, compare=False)
    # content=True: the kept files whose checksum changed ({path: FileVersion, or None: gone}).
    files: dict[str, FileVersion | None] | None = field(default=None, compare=False)

    def to_json(self) -> dict:
        return {"Resync": self.raw}


@dataclass(frozen=True)
class Welcome:
    """Yielded only with ``subscribe(..., welcome=True)``: subscribed, load the configuration now."""

    tenant_id: str
    last_event_id: str | None
    heartbeat_interval: float
    protocol: int = 1
    manifest: dict | None = None
    raw: dict = field(default_factory=dict, repr=False, compare=False)

    def to_json(self) -> dict:
        return {"Welcome": self.raw}


@dataclass(frozen=True)
class FileVersion:
    """A served file as the client holds it: ``content`` (its bytes; None when the version came
    from a patch) and ``document`` (parsed: JSON, TOML, YAML; None when not structured)."""

    checksum: str
    content: bytes | None
    document: Any = None


class Files:
    """The served files one subscription keeps (``content=True``), by path."""

    def __init__(
        self,
        base: str,
        tenant_id: str,
        token: Callable[[], str | None],
        fetch_jitter: float = 0.25,
        ssl_context: ssl.SSLContext | None = None,
    ):
        self.base = base
        self.tenant_id = tenant_id
        self.token = token
        self.fetch_jitter = fetch_jitter
        self.ssl_context = ssl_context  # the subscription's: the same server, the same CA
        self.held: dict[str, FileVersion] = {}
        self.fetches = 0  # requests made, for the curious (and the tests)

    async def get(self, path: str) -> FileVersion:
        """The file at ``path``: kept, or fetched once; ``HTTPClientError`` (404) when not served."""
        held = self.held.get(path)
        if held is not None and held.content is not None:
            return held
        return await self._fetch(path, None)

    async def changed(self, event: ConfigChanged) -> FileVersion | None:
        path = event.path
        if path is None:
            return None
        if event.change_type == "moved" and isinstance((event.meta or {}).get("old_path"), str):
            self.held.pop(event.meta["old_path"], None)  # type: ignore[index]  # checked just above
        if event.checksum is None:
            self.held.pop(path, None)
            return None
        held = self.held.get(path)
        if held is not None and held.checksum == event.checksum:
            return held
        if held is None and event.patch is None:
            return None  # not a file it keeps
        if held is not None and event.patch is not None and held.checksum == event.base_checksum:
            try:
                document = apply_patch(held.document, event.patch)
                if document_checksum(document) == event.document_checksum:
                    version = self.held[path] = FileVersion(event.checksum, None, document)
                    return version
            except (PatchFailed, NotJson):
                pass  # fetched below
        await asyncio.sleep(random.random() * self.fetch_jitter)
        try:
            return await self._fetch(
                path, held if held is not None and held.content is not None else None, event.checksum
            )
        except (HTTPClientError, OSError, ValueError) as exc:
            log.warning("fetching %s failed: %s", path, exc)
            return None

    async def resynced(self, resync: Resync) -> dict[str, FileVersion | None]:
        changed: dict[str, FileVersion | None] = {}
        for path, held in list(self.held.items()):
            if resync.manifest is not None and resync.manifest.get(path) is None:
                del self.held[path]
                changed[path] = None
            # Without a manifest every kept file is asked again (a 304 when it did not change).
            elif resync.manifest is None or resync.manifest[path] != held.checksum:
                try:
                    version = await self._fetch(
                        path, held if held.content is not None else None, (resync.manifest or {}).get(path)
                    )
                except (HTTPClientError, OSError, ValueError) as exc:
                    log.warning("fetching %s failed: %s", path, exc)
                    continue
                if version is not held:
                    changed[path] = version
        return changed

    async def _fetch(self, path: str, held: FileVersion | None, expected: str | None = None) -> FileVersion:
        headers = {}
        token = self.token()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if held is not None:
            headers["If-None-Match"] = f'"{held.checksum}"'
        url = f"{self.base}/api/v1/tenants/{quote(self.tenant_id, safe='')}/files/{quote(path)}"
        for attempt in range(FETCH_RETRIES + 1):
            self.fetches += 1
            response = await AsyncHTTPClient().fetch(
                url, headers=headers, raise_error=False, ssl_options=self.ssl_context
            )
            # 503: the file is being changed; or an answer of an older version than the event's
            # (a node of a shared folder that has not read the new one yet): asked again after
            # the server's Retry-After (at most 2 s), a few times.
            older = (
                expected is not None and response.code in (200, 304) and response.headers.get("ETag") != f'"{expected}"'
            )
            if (response.code != 503 and not older) or attempt == FETCH_RETRIES:
                break
            try:
                wait = min(2.0, float(response.headers.get("Retry-After") or 1))
            except ValueError:
                wait = 1.0
            await asyncio.sleep(wait * random.uniform(0.5, 1.0))
        if response.code == 304 and held is not None:
            return held
        if response.code != 200:
            raise HTTPClientError(response.code, _error_reason_of(response.body), response)
        data = response.body
        checksum = checksum_of(data)
        if f'"{checksum}"' != response.headers.get("ETag"):
            raise ValueError(f"GET {path}: the bytes are not the version the server named")
        document = structured.parse(path, data) if structured.parser_for(path) is not None else None
        if isinstance(document, structured.Unparsed):
            document = None
        version = self.held[path] = FileVersion(checksum, data, document)
        return version


def _error_reason_of(body: bytes | None) -> str:
    try:
        return str(json.loads(body or b"").get("error") or "")
    except (ValueError, AttributeError):
        return ""


Event = ConfigChanged | Resync | Welcome
TokenSource = Callable[[], str | Awaitable[str]]


class SubscribeError(Exception):
    """The server refused the subscription in a way retrying cannot cure."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class _Reconnect(Exception):
    """End this connection and open another (resuming); ``immediate`` skips the backoff."""

    def __init__(self, reason: str, immediate: bool = False, dead: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.immediate = immediate
        self.dead = dead  # the peer is silent: abort the socket rather than wait for its close frame


def backoff_delay(
    attempt: int, low: float = BACKOFF_MIN, high: float = BACKOFF_MAX, rng: Callable[[], float] = random.random
) -> float:
    """Full jitter: uniform in ``[0, min(high, low * 2**attempt)]``, so clients dropped at
    once (a server restart) come back spread over the window instead of all together."""
    return rng() * min(high, low * 2 ** min(attempt, 30))


def ws_url(url: str) -> str:
    """``http://h:1``, ``https://h/x/``, ``ws://h:1/ws`` -> the ``/ws`` endpoint's URL."""
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme)
    if scheme is None or not parts.netloc:
        raise ValueError(f"expected an http://, https://, ws:// or wss:// URL, not {url!r}")
    path = parts.path.rstrip("/")
    if path.endswith("/events"):
        path = path[: -len("/events")]
    if not path.endswith("/ws"):
        path += "/ws"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


def jwt_exp(token: str | None) -> float | None:
    """A JWT's ``exp`` (seconds since the epoch), or None: tokens are otherwise opaque."""
    if not token or token.count(".") != 2:
        return None
    payload = token.split(".")[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, TypeError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    return float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # a write to a closing socket: handled by the reader, not logged


class Subscription:
    """An async iterable of one tenant's events across reconnects; see the module docstring."""

    def __init__(
        self,
        url: str,
        tenant_id: str,
        *,
        last_event_id: str | None = None,
        token: str | None = None,
        get_token: TokenSource | None = None,
        manifest: bool = False,
        welcome: bool = False,
        headers: dict[str, str] | None = None,
        backoff_min: float = BACKOFF_MIN,
        backoff_max: float = BACKOFF_MAX,
        stable_after: float = 5.0,
        connect_timeout: float = 10.0,
        refresh_lead: float = 30.0,
        max_queue: int = 10_000,
        ack_interval: float = ACK_INTERVAL,
        on_status: Callable[[str, dict], None] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        content: bool = False,
        fetch_jitter: float = 0.25,
    ):
        self.url = ws_url(url)
        # content=True: the served files kept (Files), fetched over http(s) from the same server.
        http_base = self.url[: -len("/ws")].replace("ws", "http", 1)
        self.files = Files(http_base, tenant_id, lambda: self.token, fetch_jitter, ssl_context) if content else None
        self.tenant_id = tenant_id
        self.last_event_id = last_event_id  # applied (acknowledged)
        self._cursor = last_event_id  # handed out: where a reconnect resumes
        self.token = token
        self.get_token = get_token
        self.manifest = manifest
        self.yield_welcome = welcome
        self.headers = dict(headers or {})
        self.backoff_min = backoff_min
        self.backoff_max = backoff_max
        self.stable_after = stable_after
        self.connect_timeout = connect_timeout
        self.refresh_lead = refresh_lead
        self.max_queue = max_queue
        self.ack_interval = ack_interval
        self.on_status = on_status
        # wss:// (https://): None verifies the server against the system's CAs; a context of
        # one's own trusts a private CA (ssl.create_default_context(cafile=...)).
        self.ssl_context = ssl_context
        self.heartbeat_interval: float | None = None
        self.state = "idle"
        self.connections = 0  # successful subscriptions (Welcome received), for the curious
        self._attempt = 0
        self._fresh_token = False
        self._ever_welcomed = False
        self._closed = asyncio.Event()
        self._conn: WebSocketClientConnection | None = None
        self._inbox: asyncio.Queue[str | bytes | None] = asyncio.Queue()  # None: closed
        self._iterator: AsyncGenerator[Event, None] | None = None
        # The event handed out last, and the failure reported for it or an earlier one
        # (event id, error) until a later event is applied.
        self._handing: str | None = None
        self._failure: tuple[str, str] | None = None
        # This connection's Acks: the answer sent last, when, and the timer of the next one.
        self._acked: tuple[str, str | None] | None = None
        self._acked_at = float("-inf")
        self._ack_timer: asyncio.TimerHandle | None = None

    # -- the public face ---------------------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[Event]:
        if self._iterator is None:
            self._iterator = self._run()
        return self._iterator

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if isinstance(exc, Exception) and self._handing is not None:
            # The body raised while handling an event: say so before the connection closes.
            self.failed(exc)
            if self._ack_timer is not None:
                self._ack_timer.cancel()
            self._send_ack()  # now, not after ack_interval: the connection closes next
        await self.aclose()

    def failed(self, error: BaseException | str) -> None:
        """The event handed out last could not be applied: answer it with an ``Ack`` carrying
        ``error`` (an exception is sent as ``"<type>: <message>"``), not as applied."""
        event_id = self._handing
        if event_id is None:
            return
        self._failure = (event_id, ack_error(error))
        self._ack_soon()

    async def aclose(self) -> None:
        """Stop: close the connection; the ``async for`` ends."""
        self._closed.set()
        self._drop(1000, "client closed")
        # From inside the loop's body the generator is suspended: close it now. From another
        # task it may be running: the dropped connection and the set flag end it.
        if self._iterator is not None and not self._iterator.ag_running:  # type: ignore[attr-defined]  # typeshed's AsyncGenerator lacks it
            await self._iterator.aclose()

    # -- the loop ----------------------------------------------------------------------------

    async def _run(self) -> AsyncGenerator[Event, None]:
        try:
            while not self._closed.is_set():
                try:
                    conn = await self._open()
                    welcomed_at = None
                    try:
                        async with contextlib.aclosing(self._session(conn)) as session:
                            async for item, ack in session:
                                welcomed_at = welcomed_at or time.monotonic()
                                if item is not None:
                                    self._handing = ack
                                    if self.files is not None:
                                        item = await self._with_content(item)
                                    yield item
                                if ack is not None:
                                    self._applied(ack)
                    finally:
                        if welcomed_at is not None and time.monotonic() - welcomed_at >= self.stable_after:
                            self._attempt = 0
                    reason, immediate, dead = "connection closed", False, False
                except _Reconnect as again:
                    reason, immediate, dead = again.reason, again.immediate, again.dead
                self._drop(1000, "reconnecting", abort=dead)
                if self._closed.is_set():
                    break
                delay = 0.0 if immediate else backoff_delay(self._attempt, self.backoff_min, self.backoff_max)
                if not immediate:
                    self._attempt += 1
                self._status("reconnecting", reason=reason, delay=delay, attempt=self._attempt)
                try:
                    await asyncio.wait_for(self._closed.wait(), delay)
                except TimeoutError:
                    pass
        finally:
            self._drop(1000, "client closed")
            self._status("closed")

    async def file(self, path: str) -> FileVersion:
        """``content=True``: the served file at ``path``, fetched once and then kept up to date."""
        if self.files is None:
            raise RuntimeError("subscribe(..., content=True) keeps files; this subscription does not")
        return await self.files.get(path)

    async def _with_content(self, item: Event) -> Event:
        assert self.files is not None
        if isinstance(item, ConfigChanged):
            return dataclasses.replace(item, value=await self.files.changed(item))
        if isinstance(item, Resync):
            return dataclasses.replace(item, files=await self.files.resynced(item))
        return item

    async def _open(self) -> WebSocketClientConnection:
        self._status("connecting", attempt=self._attempt)
        if self.get_token is not None and not self._fresh_token:
            try:
                self.token = await self._call_token()
            except Exception as exc:
                raise _Reconnect(f"get_token failed: {exc!r}") from None
        self._fresh_token = False
        query = {"tenant_id": self.tenant_id}
        if self._cursor:
            query["last_event_id"] = self._cursor
        if self.token:
            query["token"] = self.token
        if self.manifest:
            query["manifest"] = "1"
        request = HTTPRequest(
            f"{self.url}?{urlencode(query)}",
            headers=self.headers,
            connect_timeout=self.connect_timeout,
            request_timeout=self.connect_timeout,
            ssl_options=self.ssl_context,
        )
        inbox: asyncio.Queue[str | bytes | None] = asyncio.Queue()
        self._inbox = inbox
        try:
            conn = await asyncio.wait_for(
                websocket_connect(request, on_message_callback=inbox.put_nowait), self.connect_timeout
            )
        except HTTPClientError as exc:
            reason = _error_reason(exc)
            if exc.code == 400 or (exc.code in (401, 403) and self.get_token is None):
                raise SubscribeError(f"refused with {exc.code}: {reason}", exc.code) from None
            raise _Reconnect(f"refused with {exc.code}: {reason}") from None
        except (TimeoutError, OSError, StreamClosedError, WebSocketError) as exc:
            raise _Reconnect(f"cannot connect: {exc!r}") from None
        self._conn = conn
        return conn

    async def _session(self, conn: WebSocketClientConnection) -> AsyncGenerator[tuple[Event | None, str | None], None]:
        """``(event to hand out, id to acknowledge once it is handled)`` pairs of one connection."""
        loop = asyncio.get_running_loop()
        welcome = self._parse(await self._next(conn, self.connect_timeout, "no Welcome in time"))
        if not isinstance(welcome, Welcome):
            raise _Reconnect(f"expected Welcome, got {welcome!r}")
        interval = self.heartbeat_interval = float(welcome.heartbeat_interval or 5)
        self.connections += 1
        self._status("open", welcome=welcome.raw)
        first, self._ever_welcomed = not self._ever_welcomed, True
        if self._cursor is None:
            self._cursor = newest = welcome.last_event_id
            if not first and newest is not None:
                # No id to resume from (the tenant had no event yet) and events came meanwhile.
                yield (
                    Resync(
                        self.tenant_id,
                        newest,
                        "no_resume_point",
                        raw={"tenant_id": self.tenant_id, "last_event_id": newest, "reason": "no_resume_point"},
                    ),
                    newest,
                )
            else:
                yield (welcome if self.yield_welcome else None), newest
        else:
            if self.yield_welcome:
                yield welcome, None
            if self.last_event_id or self._failure:
                self._ack_soon()  # convergence is per connection: say where we are
        last_seen = next_ping = loop.time()
        next_ping += interval
        refresh_at = self._refresh_deadline(loop)
        refresh_pending = False
        while True:
            now = loop.time()
            if now >= next_ping:
                self._send("Ping")
                next_ping = now + interval
            if refresh_at is not None and now >= refresh_at:
                refresh_at = None
                try:
                    self.token = await self._call_token()
                except Exception as exc:
                    log.warning("get_token failed (%r); trying again at the next reconnect", exc)
                else:
                    # In place (the server answers Refreshed); on an Error instead (refused,
                    # or no Refresh there) reconnect with the new token, resuming.
                    refresh_pending = True
                    self._fresh_token = True
                    self._send({"Refresh": {"token": self.token}})
                    self._send("Ping")
                    refresh_at = self._refresh_deadline(loop)
            dead_at = last_seen + 2 * interval
            wait = min(next_ping, dead_at, refresh_at if refresh_at is not None else dead_at) - loop.time()
            try:
                text = await self._next(conn, max(wait, 0.0), None)
            except TimeoutError:
                if loop.time() >= dead_at:
                    raise _Reconnect("server silent for two heartbeat intervals", dead=True) from None
                continue
            last_seen = loop.time()
            if self._inbox.qsize() > self.max_queue:
                raise _Reconnect("too far behind: reconnecting to resume")
            message = self._parse(text)
            if isinstance(message, ConfigChanged):
                self._cursor = message.event_id
                yield message, message.event_id
                last_seen = max(last_seen, loop.time())  # the loop body's time is not the server's silence
            elif isinstance(message, Resync):
                self._cursor = message.last_event_id
                yield message, message.last_event_id
                last_seen = max(last_seen, loop.time())
            elif message in ("Pong", "Refreshed"):
                refresh_pending = False  # the Refresh before it was taken
            elif message == "Error":
                if refresh_pending:
                    # Refused, or a server without Refresh: reconnect with the new token, resuming.
                    raise _Reconnect(f"token refresh by reconnecting ({text})", immediate=True)
                log.warning("the server did not accept a message: %s", text)

    async def _next(self, conn: WebSocketClientConnection, timeout: float, why: str | None) -> str:
        try:
            text = await asyncio.wait_for(self._inbox.get(), timeout)
        except TimeoutError:
            if why is None:
                raise
            raise _Reconnect(why) from None
        if text is None:
            raise _Reconnect(f"closed by the server ({conn.close_code} {conn.close_reason or ''})".strip())
        return text if isinstance(text, str) else text.decode("utf-8", "replace")  # the server sends text frames

    def _parse(self, text: str) -> Any:
        try:
            message = json.loads(text)
        except ValueError:
            return None
        if isinstance(message, str):
            return message
        if not isinstance(message, dict) or len(message) != 1:
            return None
        ((kind, inside),) = message.items()
        body: Any = inside if isinstance(inside, dict) else {}
        if kind == "ConfigChanged":
            return ConfigChanged(
                **{
                    k: body.get(k)
                    for k in (
                        "tenant_id",
                        "change_type",
                        "event_id",
                        "path",
                        "checksum",
                        "timestamp",
                        "source",
                        "diff",
                        "meta",
                        "patch",
                        "base_checksum",
                        "document_checksum",
                    )
                },
                raw=body,
            )
        if kind == "Resync":
            return Resync(
                body.get("tenant_id"), body.get("last_event_id"), body.get("reason", ""), body.get("manifest"), raw=body
            )
        if kind == "Welcome":
            return Welcome(
                body.get("tenant_id"),
                body.get("last_event_id"),
                body.get("heartbeat_interval", 5),
                body.get("protocol", 1),
                body.get("manifest"),
                raw=body,
            )
        return kind  # "Pong", "Refreshed", "Error"

    # -- helpers -----------------------------------------------------------------------------

    def _applied(self, event_id: str | None) -> None:
        if event_id is None:
            return
        if self._failure is not None and self._failure[0] == event_id:
            return  # the body said it failed: not applied
        self._failure = None
        self.last_event_id = event_id
        self._ack_soon()

    def _ack_soon(self) -> None:
        """Acknowledge ``last_event_id``: now when no Ack went out for ``ack_interval``, else
        when it is over (the newest id then; the ones in between are implied)."""
        if self._ack_timer is not None:
            return  # the one scheduled sends the newest
        loop = asyncio.get_running_loop()
        wait = self._acked_at + self.ack_interval - loop.time()
        if wait <= 0:
            self._send_ack()
        else:
            self._ack_timer = loop.call_later(wait, self._send_ack)

    def _send_ack(self) -> None:
        self._ack_timer = None
        answer: tuple[str, str | None] | None = self._failure or (
            (self.last_event_id, None) if self.last_event_id is not None else None
        )
        if self._conn is None or answer is None or answer == self._acked:
            return
        self._acked, self._acked_at = answer, asyncio.get_running_loop().time()
        event_id, error = answer
        self._send({"Ack": {"event_id": event_id} if error is None else {"event_id": event_id, "error": error}})

    def _send(self, message: Any) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            future = conn.write_message(json.dumps(message))
        except WebSocketClosedError:
            return  # the reader sees the close
        future.add_done_callback(_retrieve)

    def _drop(self, code: int, reason: str, abort: bool = False) -> None:
        conn, self._conn = self._conn, None
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        self._acked, self._acked_at = None, float("-inf")  # the next connection starts afresh
        if conn is None:
            return
        conn.close(code, reason)
        stream = getattr(conn.protocol, "stream", None) if conn.protocol is not None else None
        if abort and stream is not None:
            stream.close()  # a dead peer would never answer the close frame: free the socket now

    async def _call_token(self) -> str:
        assert self.get_token is not None  # called only when the subscription has one
        token = self.get_token()
        if inspect.isawaitable(token):
            token = await token
        return token

    def _refresh_deadline(self, loop: asyncio.AbstractEventLoop) -> float | None:
        exp = jwt_exp(self.token) if self.get_token is not None else None
        if exp is None:
            return None
        left = exp - time.time()
        return loop.time() + max(1.0, left - min(self.refresh_lead, left / 5))

    def _status(self, state: str, **info: Any) -> None:
        self.state = state
        if state == "reconnecting":
            log.info("tenant %s: %s; reconnecting in %.2f s", self.tenant_id, info.get("reason"), info.get("delay", 0))
        if self.on_status is not None:
            try:
                self.on_status(state, info)
            except Exception:
                log.exception("on_status failed")


def ack_error(error: BaseException | str) -> str:
    """An ``Ack``'s ``error``: ``"<type>: <message>"`` of an exception (or the text), its first
    line, at most ``ACK_ERROR_MAX`` characters, valid Unicode (the wire rule)."""
    if isinstance(error, BaseException):
        text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    else:
        text = str(error)
    lines = text.strip().splitlines()
    text = (lines[0].strip() if lines else "") or "failed"
    text = text.encode("utf-8", "replace").decode("utf-8")  # a lone surrogate becomes "?"
    return text if len(text) <= ACK_ERROR_MAX else text[: ACK_ERROR_MAX - 1] + "…"


def _error_reason(exc: HTTPClientError) -> str:
    response = exc.response
    if response is not None and response.body:
        try:
            return json.loads(response.body).get("error") or exc.message
        except (ValueError, AttributeError):
            pass
    return exc.message or ""


def subscribe(url: str, tenant_id: str, **options: Any) -> Subscription:
    """``async for event in subscribe(url, tenant_id, ...)``: ``ConfigChanged`` and ``Resync``
    (and ``Welcome`` with ``welcome=True``), across reconnects. Options: see ``Subscription``."""
    return Subscription(url, tenant_id, **options)

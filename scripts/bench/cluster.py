"""A cluster under test, as scripts/soak.py and scripts/faults.py run it: nodes, Redis, clients, files.

* ``Fleet``: the clients (``Virtual``: one client across its connections, its received stream
  for ``checker.py``, with when each message arrived), a least-connections balancer over the
  nodes that take connections, reconnects with ``last_event_id`` (cfgpush.js's backoff);
* ``Folder``: the files a writer process (``writer.py``) works on, a unique content per write;
* ``RedisProc``: the private ``redis-server``, restartable on its port (and folder), its
  streams read back (``snapshot``, ``newest``);
* ``Node``, ``start_node``: ``cfgpush-serve`` processes (``targets.py``) on fixed ports;
* ``quiesce``: wait until every client is connected and at its tenant's newest event;
* ``interruptible``: a run that Ctrl-C and SIGTERM cancel.
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import targets
from .checker import ClientStream, Event
from .loadgen import Client, Connector, LoadGen, Sink, perf_counter
from .procs import Proc, Resources
from .targets import HOST, Options

KEY_PREFIX = "cfgpush:"  # the Redis broker's default: cfgpush:{<tenant>}:history


def log(message: str) -> None:
    print(f"cluster: {message}", file=sys.stderr, flush=True)


# -- clients -----------------------------------------------------------------------------------


class Virtual:
    """One client across its connections: its stream (for the checker) and where it is."""

    __slots__ = (
        "stream",
        "tenant",
        "position",
        "asked",
        "fresh_next",
        "client",
        "welcomed",
        "attempt",
        "failures",
        "connects",
        "port",
    )

    def __init__(self, name: str, tenant: str):
        self.stream = ClientStream(name, tenant)
        self.tenant = tenant
        self.position: str | None = None  # the last event id it processed (or was told about)
        self.asked: str | None = None  # the last_event_id of the connection being opened
        self.fresh_next = False
        self.client: Client | None = None
        self.welcomed = False
        self.attempt = 0
        self.failures = 0
        self.connects = 0
        self.port = 0  # the node of its current (or last) connection


class ClusterSink(Sink):
    """Records every message in its client's stream, with when it arrived; reconnects dropped
    clients with cfgpush.js's full-jitter backoff (a random wait in [0, min(5 s, 0.5 s x
    2^attempt)])."""

    BACKOFF_MIN, BACKOFF_MAX = 0.5, 5.0

    def __init__(self) -> None:
        self.connector: Connector | None = None
        self.fleet: Fleet | None = None
        self.reconnect = True
        self.parsed: dict[bytes, Event] = {}  # the same frame reaches every client of a tenant
        self.deliveries = 0
        self.resyncs = 0
        self.errors = 0
        self.closes: dict[str, int] = {}

    def welcome(self, client: Client, payload: bytes, now: float) -> None:
        vc = client.vc
        body = json.loads(payload)["Welcome"]
        vc.stream.record(("welcome", body.get("last_event_id"), vc.asked), now)
        if vc.asked is None:  # a fresh client starts from the newest event
            vc.position = body.get("last_event_id")
        vc.welcomed = True
        vc.attempt = 0
        vc.connects += 1

    def change(self, client: Client, payload: bytes, now: float) -> None:
        event = self.parsed.get(payload)
        if event is None:
            event = self.parsed[payload] = Event.from_body(json.loads(payload)["ConfigChanged"])
        vc = client.vc
        vc.stream.record(("event", event), now)
        if event.tenant == vc.tenant:
            vc.position = event.event_id
        self.deliveries += 1

    def other(self, client: Client, payload: bytes, now: float) -> None:
        if payload.startswith(b'{"Resync"'):
            body = json.loads(payload)["Resync"]
            client.vc.stream.record(("resync", body.get("last_event_id"), body.get("reason")), now)
            client.vc.position = body.get("last_event_id")
            self.resyncs += 1
        else:
            self.errors += 1

    def lost(self, client: Client) -> None:
        vc = client.vc
        code = client.close_code
        vc.stream.record(("closed", code), perf_counter())
        key = str(code) if code is not None else ("dropped by us" if client.closing else "reset")
        self.closes[key] = self.closes.get(key, 0) + 1
        if vc.client is client:
            vc.client = None
        vc.welcomed = False
        # A connection lost before its Welcome fails its open_one too, whose on_fail retries
        # (and counts it off its node): one retry per connection, never two of one client.
        if client.opened is None:
            self.fleet.left(vc)
            if self.reconnect:
                self.retry(vc)

    def retry(self, vc: Virtual) -> None:
        delay = random.random() * min(self.BACKOFF_MAX, self.BACKOFF_MIN * 2 ** min(vc.attempt, 10))
        vc.attempt += 1
        self.connector.submit(vc, delay)


class Fleet:
    """The clients, their connector and the nodes they may connect to: a least-connections
    load balancer, so that a restarted node gets its share back as clients churn (and each
    node's RSS at the end is read at the load it had after warm-up)."""

    def __init__(self, tenants: list[str], n: int, concurrency: int):
        self.sink = ClusterSink()
        self.gen = LoadGen(HOST, 0, self.sink, tenant=tenants[0], welcome=True)
        self.virtual = [Virtual(f"c{i:04d}", tenants[i % len(tenants)]) for i in range(n)]
        self.ports: list[int] = []  # nodes taking connections
        self.load: dict[int, int] = {}  # port -> connections open or being opened
        self.connector = Connector(self.gen, concurrency)
        self.sink.connector = self.connector
        self.sink.fleet = self
        self.connector.vc = lambda vc: vc
        self.connector.route = self._route
        self.connector.last_event_id = self._asks
        self.connector.on_open = self._opened
        self.connector.on_fail = self._failed

    @staticmethod
    def _asks(vc: Virtual) -> str | None:
        vc.asked = None if vc.fresh_next else vc.position
        vc.fresh_next = False
        return vc.asked

    def _opened(self, client: Client, vc: Virtual) -> None:
        if client.open:  # else lost between its Welcome and now: lost() already retried
            vc.client = client

    def _route(self, vc: Virtual) -> tuple[str, int]:
        fewest = min(self.load.get(p, 0) for p in self.ports)
        vc.port = random.choice([p for p in self.ports if self.load.get(p, 0) == fewest])
        self.load[vc.port] = self.load.get(vc.port, 0) + 1
        return vc.tenant, vc.port

    def left(self, vc: Virtual) -> None:
        self.load[vc.port] -= 1

    def per_node(self) -> dict[int, int]:
        """Connections open (welcomed) per node port."""
        found: dict[int, int] = {}
        for vc in self.virtual:
            if vc.client is not None and vc.client.open and vc.welcomed:
                found[vc.port] = found.get(vc.port, 0) + 1
        return found

    def _failed(self, exc: BaseException, vc: Virtual) -> None:
        self.left(vc)
        vc.failures += 1
        if self.sink.reconnect:
            self.sink.retry(vc)

    def connect_all(self) -> None:
        for vc in self.virtual:
            self.connector.submit(vc)

    def connected(self) -> int:
        return sum(1 for vc in self.virtual if vc.client is not None and vc.client.open and vc.welcomed)

    def drop_one(self, fresh_share: float) -> bool:
        vc = random.choice(self.virtual)
        if vc.client is None or not vc.client.open:
            return False
        vc.fresh_next = random.random() < fresh_share
        vc.client.close()  # an abort: connection_lost -> sink.lost -> reconnect
        return True

    def stop(self) -> None:
        self.sink.reconnect = False
        self.connector.stop()
        for vc in self.virtual:
            if vc.client is not None:
                vc.client.close()


# -- the folder --------------------------------------------------------------------------------


class Folder:
    """The files the writer works on: which exist, and a unique content for every write (so
    that each announced checksum names exactly one write). With ``min_interval``, a path is
    written again only that many seconds after its last write."""

    def __init__(self, tenants: list[str], per_tenant: int, min_interval: float = 0.0):
        self.paths = [f"{t}/app{k % 3}/conf{k}.json" for t in tenants for k in range(per_tenant)]
        self.present: set[str] = set()
        self.serial = 0
        self.min_interval = min_interval
        self.written: dict[str, float] = {}

    def _eligible(self) -> list[str]:
        if self.min_interval <= 0:
            return self.paths
        now = perf_counter()
        return [p for p in self.paths if now - self.written.get(p, -1e9) >= self.min_interval]

    def _mark(self, paths) -> None:
        now = perf_counter()
        for p in paths:
            self.written[p] = now

    def content(self, path: str) -> str:
        self.serial += 1
        return json.dumps({"path": path, "v": self.serial, "limits": {"rate": self.serial % 100}}) + "\n"

    def initial(self) -> list[tuple[str, str, str]]:
        self.present = set(self.paths)
        return [(p, self.content(p), "plain") for p in self.paths]

    def burst(self, n: int) -> list[tuple[str, str, str]]:
        eligible = self._eligible()
        chosen = random.sample(eligible, min(n, len(eligible)))
        self.present.update(chosen)
        self._mark(chosen)
        return [(p, self.content(p), "plain") for p in chosen]

    def edit(self, delete_share: float) -> tuple[str, Any] | None:
        """("write", [file]) or ("delete", [path]); None when no path may be written yet."""
        eligible = self._eligible()
        if not eligible:
            return None
        path = random.choice(eligible)
        self._mark([path])
        if path not in self.present:
            self.present.add(path)
            return "write", [(path, self.content(path), "plain")]
        if random.random() < delete_share:
            self.present.discard(path)
            return "delete", [path]
        return "write", [(path, self.content(path), "atomic")]


# -- Redis ---------------------------------------------------------------------------------------


class RedisProc:
    """The private redis-server, restartable on its port (and folder, for its append-only file)."""

    def __init__(self, res: Resources, program: str, persist: bool):
        self.res, self.program, self.persist = res, program, persist
        self.proc: Proc | None = None
        self.url = ""
        self.port = 0

    async def start(self) -> None:
        self.proc, self.url = await targets.start_redis(
            self.res, self.program, port=self.port or None, persist=self.persist
        )
        self.port = int(self.url.rsplit(":", 1)[1].split("/")[0])

    def stop(self) -> int | None:
        status = self.proc.terminate(timeout=30)
        self.res.stop(self.proc)
        return status

    async def snapshot(self, tenants: list[str], *, flush: bool = False) -> dict[str, list[Event]]:
        """Every tenant's history stream, as events; with ``flush``, Redis emptied (FLUSHALL)
        in the same transaction: nothing published in between escapes the record."""
        import redis.asyncio as aioredis

        client = aioredis.from_url(self.url, decode_responses=True, socket_timeout=10)
        try:
            pipe = client.pipeline(transaction=flush)
            for tenant in tenants:
                pipe.xrange(f"{KEY_PREFIX}{{{tenant}}}:history", "-", "+")
            if flush:
                pipe.flushall()
            found = {}
            for tenant, entries in zip(tenants, await pipe.execute(), strict=False):
                found[tenant] = [
                    Event.from_body({**json.loads(fields["e"]), "event_id": entry_id}) for entry_id, fields in entries
                ]
            return found
        finally:
            await client.aclose()

    async def command(self, *args: Any) -> Any:
        """One command on a connection of its own (not through any node's proxy)."""
        import redis.asyncio as aioredis

        client = aioredis.from_url(self.url, decode_responses=True, socket_timeout=10)
        try:
            return await client.execute_command(*args)
        finally:
            await client.aclose()

    async def newest(self, tenants: list[str]) -> dict[str, str | None]:
        import redis.asyncio as aioredis

        client = aioredis.from_url(self.url, decode_responses=True, socket_timeout=10)
        try:
            pipe = client.pipeline(transaction=False)
            for tenant in tenants:
                pipe.xrevrange(f"{KEY_PREFIX}{{{tenant}}}:history", "+", "-", count=1)
            return {t: (e[0][0] if e else None) for t, e in zip(tenants, await pipe.execute(), strict=True)}
        finally:
            await client.aclose()


# -- nodes ---------------------------------------------------------------------------------------


class Node:
    def __init__(self, name: str, port: int):
        self.name, self.port = name, port
        self.target: targets.Target | None = None
        self.generation = 0
        self.serving_since = 0.0

    @property
    def key(self) -> str:
        return f"{self.name}#{self.generation}"


# INFO: the nodes' logs (kept with --keep-logs) say what a node did around an incident.
NODE_FLAGS = ("--log-level", "INFO")


async def start_node(
    node: Node, res: Resources, opts: Options, config_dir: Path, broker: str, extra: tuple[str, ...] = ()
) -> None:
    """Start (or start again) ``node`` on its port; ``extra``: more cfgpush-serve flags."""
    node.target = await targets.start(
        "cfgpush",
        res,
        opts,
        port=node.port,
        config_dir=config_dir,
        broker=broker,
        cpu=None,
        timeout=120.0,
        extra=NODE_FLAGS + tuple(extra),
    )
    node.generation += 1
    node.serving_since = perf_counter()


def stacks(pid: int) -> str:
    """What a stuck process is doing: ``py-spy dump`` when py-spy is on PATH."""
    import subprocess

    spy = shutil.which("py-spy")
    if spy is None:
        return "(py-spy not on PATH: no stacks)"
    try:
        done = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"(py-spy failed: {exc})"
    return (done.stdout or done.stderr)[-6000:]


async def interruptible(body):
    """Ctrl-C and SIGTERM cancel the run; the caller's ``finally`` stops every process."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, task.cancel)
    try:
        return await body
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def quiesce(
    fleet: Fleet, redis: RedisProc, tenants: list[str], timeout: float, log: Callable[[str], None] = log
) -> bool:
    """Until every client is connected and at its tenant's newest event in Redis, the same for
    two seconds (the sources may still be publishing), or ``timeout``."""
    deadline = perf_counter() + timeout
    stable_since = None
    previous = None
    while perf_counter() < deadline:
        try:
            newest = await redis.newest(tenants)
        except Exception as exc:  # Redis not back yet: keep waiting
            log(f"quiesce: cannot read Redis yet: {exc}")
            newest = None
        caught_up = newest is not None and all(
            vc.client is not None
            and vc.client.open
            and vc.welcomed
            and (vc.position == newest[vc.tenant] or newest[vc.tenant] is None)  # None: an emptied Redis, no event yet
            for vc in fleet.virtual
        )
        if caught_up and newest == previous:
            if stable_since is None:
                stable_since = perf_counter()
            elif perf_counter() - stable_since >= 2.0:
                return True
        else:
            stable_since = None
        previous = newest
        await asyncio.sleep(0.25)
    behind = sum(1 for vc in fleet.virtual if not (vc.client is not None and vc.client.open and vc.welcomed))
    log(f"quiesce: gave up after {timeout:.0f} s ({behind} clients not connected)")
    return False

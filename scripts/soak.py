#!/usr/bin/env python3
"""cfgpush's soak run (issue #12.7): a two-node cluster under churn, file bursts and restarts, checked.

For ``--duration`` seconds (default 10 minutes): two ``cfgpush-serve`` nodes on a private
``redis-server`` (started here, on a free port, killed at the end), both watching one shared
config folder (the README's Cluster section); ``--clients`` raw asyncio WebSocket clients
(``bench/loadgen.py``) over ``--tenants`` tenants, each connecting to a node picked at random
(as a load balancer would), dropped at random and reconnecting with ``last_event_id`` (some
as a fresh page would, without it); a writer process (``bench/writer.py``) that rewrites
``--burst-files`` files at once every ``--burst-every`` seconds (in place, as ``git
checkout``) and saves single files in between (atomically, as editors do; some deleted and
created again); node ``b`` restarted midway (SIGTERM, then started again on its port), Redis
restarted later (SIGTERM, ``--redis-down`` seconds away, started again on its port and folder).

Then every client's stream is compared with the writer's log and the Redis streams
(``bench/checker.py``): every event of its tenant exactly once and in order, or covered by a
``Resync``; no event of another tenant; no older version of a path after a newer one; every
final write announced. And each node process's RSS at the end is within ``--rss-tolerance``
of its RSS after ``--warmup`` seconds of load. The summary is printed (``--json`` writes it
all); the exit status is 1 on any violation, 2 on a usage or setup error.

    python scripts/soak.py                                   # 10 minutes, 2 000 clients, 200 tenants
    python scripts/soak.py --duration 60 --clients 200 --tenants 20 --warmup 10   # a smoke
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench import checker, targets  # noqa: E402
from bench.checker import ClientStream, Event  # noqa: E402
from bench.loadgen import Client, Connector, LoadGen, Sink, perf_counter, raise_nofile  # noqa: E402
from bench.procs import Proc, Resources  # noqa: E402
from bench.targets import HOST, Options  # noqa: E402
from bench.writer import Writer  # noqa: E402

KEY_PREFIX = "cfgpush:"  # the Redis broker's default: cfgpush:{<tenant>}:history


def log(message: str) -> None:
    print(f"soak: {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    p.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    p.add_argument("--clients", type=int, default=2000, help="WebSocket clients (default 2000)")
    p.add_argument(
        "--tenants", type=int, default=200, help="tenants the clients and files are spread over (default 200)"
    )
    p.add_argument("--files-per-tenant", type=int, default=10, help="configuration files per tenant (default 10)")
    p.add_argument("--burst-every", type=float, default=30.0, help="seconds between bursts (default 30)")
    p.add_argument("--burst-files", type=int, default=2000, help="files rewritten by each burst (default 2000)")
    p.add_argument("--edits-per-s", type=float, default=5.0, help="single saves per second between bursts (default 5)")
    p.add_argument(
        "--delete-share",
        type=float,
        default=0.1,
        help="share of single saves that delete the file (or create it again) (default 0.1)",
    )
    p.add_argument(
        "--min-rewrite-interval",
        type=float,
        default=0.0,
        help="seconds before a path is written again (default 0: any time). Two nodes watching one "
        "folder publish a path's versions out of step when it changes again within their lag "
        "(issue #19): a smoke that must pass on a cluster with that bug spaces the writes",
    )
    p.add_argument("--churn-per-s", type=float, default=10.0, help="client connections dropped per second (default 10)")
    p.add_argument(
        "--fresh-share",
        type=float,
        default=0.1,
        help="share of dropped clients that come back without last_event_id, as a reloaded page (default 0.1)",
    )
    p.add_argument("--node-restart-at", type=float, default=0.4, help="node b's restart, as a fraction of the duration")
    p.add_argument(
        "--redis-restart-at", type=float, default=0.65, help="Redis's restart, as a fraction of the duration"
    )
    p.add_argument("--redis-down", type=float, default=2.0, help="seconds Redis stays down (default 2)")
    p.add_argument(
        "--redis-persistence",
        choices=("aof", "none"),
        default="aof",
        help="aof (default): Redis keeps its streams across the restart; none: it comes back empty",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=100.0,
        help="seconds of load after a node starts before its RSS baseline (default 100: three bursts, "
        "which fill the nodes' cache of recent events)",
    )
    p.add_argument("--rss-tolerance", type=float, default=0.10, help="allowed RSS growth after warm-up (default 0.10)")
    p.add_argument(
        "--quiesce-timeout",
        type=float,
        default=60.0,
        help="seconds allowed at the end for every client to reconnect and catch up (default 60)",
    )
    p.add_argument("--debounce-ms", type=int, default=None, help="the nodes' --debounce-ms (default: theirs, 50)")
    p.add_argument("--heartbeat", type=float, default=5.0, help="the nodes' ping interval (default 5)")
    p.add_argument("--concurrency", type=int, default=50, help="handshakes in flight (default 50)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random, printed)")
    p.add_argument("--redis-server", default="redis-server", help="the redis-server program")
    p.add_argument("--json", default="", help="write the summary, the verdict and the figures here")
    p.add_argument("--keep-logs", action="store_true", help="keep the nodes', Redis' and the writer's logs")
    args = p.parse_args(argv)
    if args.clients < args.tenants or args.tenants < 1 or args.files_per_tenant < 1:
        p.error("need at least one client per tenant and one file per tenant")
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    return args


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


class SoakSink(Sink):
    """Records every message in its client's stream; reconnects dropped clients with
    cfgpush.js's full-jitter backoff (a random wait in [0, min(5 s, 0.5 s x 2^attempt)])."""

    BACKOFF_MIN, BACKOFF_MAX = 0.5, 5.0

    def __init__(self) -> None:
        self.connector: Connector | None = None
        self.fleet: "Fleet | None" = None
        self.reconnect = True
        self.parsed: dict[bytes, Event] = {}  # the same frame reaches every client of a tenant
        self.deliveries = 0
        self.resyncs = 0
        self.errors = 0
        self.closes: dict[str, int] = {}

    def welcome(self, client: Client, payload: bytes, now: float) -> None:
        vc = client.vc
        body = json.loads(payload)["Welcome"]
        vc.stream.items.append(("welcome", body.get("last_event_id"), vc.asked))
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
        vc.stream.items.append(("event", event))
        if event.tenant == vc.tenant:
            vc.position = event.event_id
        self.deliveries += 1

    def other(self, client: Client, payload: bytes, now: float) -> None:
        if payload.startswith(b'{"Resync"'):
            body = json.loads(payload)["Resync"]
            client.vc.stream.items.append(("resync", body.get("last_event_id"), body.get("reason")))
            client.vc.position = body.get("last_event_id")
            self.resyncs += 1
        else:
            self.errors += 1

    def lost(self, client: Client) -> None:
        vc = client.vc
        code = client.close_code
        vc.stream.items.append(("closed", code))
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
        self.sink = SoakSink()
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

    async def snapshot(self, tenants: list[str]) -> dict[str, list[Event]]:
        """Every tenant's history stream, as events."""
        import redis.asyncio as aioredis

        client = aioredis.from_url(self.url, decode_responses=True, socket_timeout=10)
        try:
            pipe = client.pipeline(transaction=False)
            for tenant in tenants:
                pipe.xrange(f"{KEY_PREFIX}{{{tenant}}}:history", "-", "+")
            found = {}
            for tenant, entries in zip(tenants, await pipe.execute(), strict=True):
                found[tenant] = [
                    Event.from_body({**json.loads(fields["e"]), "event_id": entry_id}) for entry_id, fields in entries
                ]
            return found
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


async def start_node(node: Node, res: Resources, opts: Options, config_dir: Path, broker: str) -> None:
    node.target = await targets.start(
        "cfgpush",
        res,
        opts,
        port=node.port,
        config_dir=config_dir,
        broker=broker,
        cpu=None,
        timeout=120.0,
        extra=NODE_FLAGS,
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


class RSS:
    """Each node process's RSS, sampled every second: its baseline after warm-up, its last."""

    def __init__(self, warmup: float):
        self.warmup = warmup
        self.samples: dict[str, list[tuple[float, int, int]]] = {}  # (time, KB, its clients)
        self.pids: dict[str, int] = {}
        self.load_from: dict[str, float] = {}

    def sample(self, node: Node, load_started: float, connections: int) -> None:
        if node.target is None or not node.target.proc.alive():
            return
        try:
            rss = node.target.proc.rss_kb()
        except (OSError, RuntimeError):
            return
        self.pids[node.key] = node.target.pid
        self.load_from[node.key] = max(node.serving_since, load_started)
        self.samples.setdefault(node.key, []).append((perf_counter(), rss, connections))

    def report(self) -> dict[str, dict]:
        out = {}
        for key, series in self.samples.items():
            start = self.load_from[key]
            baseline = next((s for s in series if s[0] >= start + self.warmup), None)
            end = series[-1]
            out[key] = {
                "pid": self.pids[key],
                "samples": len(series),
                "first_kb": series[0][1],
                "peak_kb": max(s[1] for s in series),
                "end_kb": end[1],
                "end_connections": end[2],
                "baseline_kb": baseline[1] if baseline else None,
                "baseline_connections": baseline[2] if baseline else None,
                "baseline_at_s": round(baseline[0] - start, 1) if baseline else None,
                "growth": (end[1] - baseline[1]) / baseline[1] if baseline else None,
                # [seconds since its load began, KB, connections], every 10 s
                "series": [[round(t - start, 1), kb, n] for t, kb, n in series[::10]],
            }
        return out


# -- the run ---------------------------------------------------------------------------------------


async def soak(args: argparse.Namespace, res: Resources, out: dict) -> checker.Verdict:
    random.seed(args.seed)
    loop = asyncio.get_running_loop()
    tenants = [f"s{k:03d}" for k in range(args.tenants)]
    config_dir = res.mkdir("config")
    writes_log = res.dir / "writes.jsonl"
    folder = Folder(tenants, args.files_per_tenant, args.min_rewrite_interval)
    writer = Writer(res, config_dir, log=writes_log)
    await writer.start()
    await writer.write(folder.initial())
    baseline_seq = len(folder.paths)

    redis = RedisProc(res, args.redis_server, args.redis_persistence == "aof")
    await redis.start()
    opts = Options(heartbeat=args.heartbeat, debounce_ms=args.debounce_ms)
    nodes = [Node("a", targets.free_port()), Node("b", targets.free_port())]
    for node in nodes:
        await start_node(node, res, opts, config_dir, redis.url)
    log(
        f"redis on {redis.url} ({args.redis_persistence}); nodes a :{nodes[0].port}, b :{nodes[1].port}; "
        f"folder {config_dir}; seed {args.seed}"
    )

    fleet = Fleet(tenants, args.clients, args.concurrency)
    fleet.ports = [node.port for node in nodes]
    published: dict[str, dict[str, Event]] = {}
    incidents: list[dict] = []  # the restarts, as they went
    rss = RSS(args.warmup)
    stats = {"bursts": 0, "edits": 0, "deletes": 0, "drops": 0, "write_s_max": 0.0}

    async def read_streams() -> None:
        """Add what Redis holds to the tenants' streams: events no client got show up too."""
        try:
            snapshot = await redis.snapshot(tenants)
        except Exception as exc:  # another broker layout (or Redis away): the clients' streams still count
            log(f"cannot read the Redis streams ({type(exc).__name__}: {exc}); checking the clients' streams only")
            out.setdefault("notes", []).append(f"Redis streams not read: {exc}")
            return
        for tenant, events in snapshot.items():
            known = published.setdefault(tenant, {})
            for event in events:
                known.setdefault(event.event_id, event)

    started = perf_counter()
    fleet.connect_all()
    while fleet.connected() < args.clients:
        if perf_counter() - started > 120:
            raise RuntimeError(f"only {fleet.connected()} of {args.clients} clients connected within 120 s")
        await asyncio.sleep(0.1)
    log(f"{args.clients} clients connected in {perf_counter() - started:.1f} s")

    t0 = perf_counter()
    t_end = t0 + args.duration

    async def writing() -> None:
        next_burst = t0 + min(5.0, args.duration / 10)
        while perf_counter() < t_end:
            now = perf_counter()
            if now >= next_burst:
                files = folder.burst(args.burst_files)
                if files:
                    answer = await writer.write(files)
                    stats["bursts"] += 1
                    stats["write_s_max"] = max(stats["write_s_max"], answer["last"] - answer["first"])
                next_burst += args.burst_every
                continue
            edit = folder.edit(args.delete_share)
            if edit is not None:
                op, files = edit
                if op == "write":
                    await writer.write(files)
                else:
                    await writer.delete(files)
                    stats["deletes"] += 1
                stats["edits"] += 1
            await asyncio.sleep(min(random.expovariate(args.edits_per_s), max(0.0, next_burst - perf_counter())))

    async def churning() -> None:
        while perf_counter() < t_end:
            await asyncio.sleep(random.expovariate(args.churn_per_s))
            stats["drops"] += fleet.drop_one(args.fresh_share)

    async def faults() -> None:
        node = nodes[1]
        await asyncio.sleep(max(0.0, t0 + args.node_restart_at * args.duration - perf_counter()))
        fleet.ports = [n.port for n in nodes if n is not node]  # the balancer takes it out first
        t_term = perf_counter()
        node.target.proc.popen.send_signal(signal.SIGTERM)
        try:
            status = await loop.run_in_executor(None, node.target.proc.popen.wait, 5.0 + 10.0)
        except Exception:  # subprocess.TimeoutExpired: the SIGTERM was not honoured in time
            status = None
        stop_s = perf_counter() - t_term
        incident = {
            "what": f"node {node.name} restart (SIGTERM)",
            "at_s": round(t_term - t0, 1),
            "exit_status": status,
            "stop_s": round(stop_s, 2),
        }
        if status is None:
            incident["killed"] = True
            incident["stacks"] = stacks(node.target.pid)
            log(
                f"node {node.name} did not exit within {stop_s:.0f} s of SIGTERM: killed; its threads were:\n"
                f"{incident['stacks']}"
            )
        targets.stop(node.target, res)
        await start_node(node, res, opts, config_dir, redis.url)
        incident["down_s"] = round(perf_counter() - t_term, 2)
        incidents.append(incident)
        fleet.ports = [n.port for n in nodes]
        log(
            f"node {node.name} restarted: exit status {status}, stopped in {stop_s:.2f} s, serving again after "
            f"{incident['down_s']:.2f} s"
        )

        await asyncio.sleep(max(0.0, t0 + args.redis_restart_at * args.duration - perf_counter()))
        await read_streams()  # what an emptied Redis would forget
        t_term = perf_counter()
        status = redis.stop()
        await asyncio.sleep(args.redis_down)  # wait-ok: the outage itself
        await redis.start()
        incidents.append(
            {
                "what": f"redis restart (SIGTERM, {args.redis_persistence})",
                "at_s": round(t_term - t0, 1),
                "exit_status": status,
                "down_s": round(perf_counter() - t_term, 2),
            }
        )
        log(f"redis restarted: exit status {status}, down {perf_counter() - t_term:.2f} s")

    async def sampling() -> None:
        last_report = perf_counter()
        while True:
            per_node = fleet.per_node()
            for node in nodes:
                rss.sample(node, t0, per_node.get(node.port, 0))
            if perf_counter() - last_report >= 15:
                last_report = perf_counter()
                log(
                    f"{perf_counter() - t0:5.0f} s: {fleet.connected()}/{args.clients} connected, "
                    f"{fleet.sink.deliveries} deliveries, {len(fleet.sink.parsed)} events, {fleet.sink.resyncs} resyncs, "
                    f"{stats['bursts']} bursts, {stats['edits']} edits, {stats['drops']} drops"
                )
            await asyncio.sleep(1.0)

    sampler = asyncio.ensure_future(sampling())
    activities = [asyncio.ensure_future(c) for c in (writing(), churning(), faults())]
    try:
        done, _ = await asyncio.wait(activities, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()
        log(f"load over after {perf_counter() - t0:.0f} s; waiting for every client to catch up")
        quiet = await quiesce(fleet, redis, tenants, args.quiesce_timeout)
        per_node = fleet.per_node()
        for node in nodes:
            rss.sample(node, t0, per_node.get(node.port, 0))
    finally:
        sampler.cancel()
        for task in activities:
            task.cancel()
    await read_streams()
    for vc in fleet.virtual:
        vc.stream.connected_at_end = vc.client is not None and vc.client.open and vc.welcomed
    connected_at_end = fleet.connected()
    fleet.stop()
    for node in nodes:
        status = node.target.proc.terminate(timeout=30)
        incidents.append({"what": f"node {node.name} stop at the end (SIGTERM)", "exit_status": status})
    await writer.close()

    verdict = checker.check(
        checker.read_writer_log(writes_log),
        [vc.stream for vc in fleet.virtual],
        published={t: list(e.values()) for t, e in published.items()},
        baseline_seq=baseline_seq,
    )
    for incident in incidents:
        if incident["exit_status"] != 0 and "redis" not in incident["what"]:
            verdict.add(
                "node_stop",
                f"{incident['what']}: exit status {incident['exit_status']}"
                + (" (did not stop in time: killed)" if incident.get("killed") else ""),
            )
    memory = rss.report()
    for key, r in memory.items():
        if r["growth"] is None:
            verdict.add("rss_unmeasured", f"node {key}: no RSS sample {args.warmup:g} s after its load began")
        elif r["growth"] > args.rss_tolerance:
            verdict.add(
                "rss_growth",
                f"node {key} (pid {r['pid']}): {r['baseline_kb']} KB after warm-up, "
                f"{r['end_kb']} KB at the end (+{100 * r['growth']:.1f} %)",
            )
    out.update(
        {
            "args": vars(args),
            "quiesced": quiet,
            "connected_at_end": connected_at_end,
            "load": {
                **stats,
                "writes": verdict.counts["writes"],
                "connections": sum(v.connects for v in fleet.virtual),
                "failed_attempts": sum(v.failures for v in fleet.virtual),
                "closes": fleet.sink.closes,
                "errors": fleet.sink.errors,
            },
            "incidents": incidents,
            "rss": memory,
            "verdict": verdict.as_dict(),
        }
    )
    return verdict


async def quiesce(fleet: Fleet, redis: RedisProc, tenants: list[str], timeout: float) -> bool:
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


def render(out: dict, verdict: checker.Verdict) -> str:
    a = out["args"]
    lines = [
        f"soak: {a['duration']:.0f} s, {a['clients']} clients over {a['tenants']} tenants, 2 nodes on one Redis "
        f"({a['redis_persistence']}), seed {a['seed']}",
        f"load: {out['load']['bursts']} bursts of {a['burst_files']} files, {out['load']['edits']} single saves "
        f"({out['load']['deletes']} deletions), {out['load']['writes']} writes; {out['load']['drops']} clients "
        f"dropped, {out['load']['connections']} connections, {out['load']['failed_attempts']} failed attempts; "
        f"closes {out['load']['closes']}",
    ]
    for incident in out["incidents"]:
        lines.append(f"incident: {json.dumps(incident)}")
    for key, r in out["rss"].items():
        growth = "n/a" if r["growth"] is None else f"{100 * r['growth']:+.1f} %"
        lines.append(
            f"rss node {key}: {r['baseline_kb']} KB after warm-up ({r['baseline_at_s']} s in, "
            f"{r['baseline_connections']} clients), {r['end_kb']} KB at its end ({r['end_connections']} "
            f"clients; {growth}), peak {r['peak_kb']} KB"
        )
    lines.append(f"quiesced: {'yes' if out['quiesced'] else 'NO'}; connected at the end {out['connected_at_end']}")
    lines += [f"note: {note}" for note in out.get("notes", [])]
    lines.append(verdict.summary())
    lines.append("verdict: " + ("PASS" if verdict.ok else "FAIL"))
    return "\n".join(lines)


async def interruptible(body):
    """Ctrl-C and SIGTERM cancel the run; ``main``'s ``finally`` stops every process."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, task.cancel)
    try:
        return await body
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    program = shutil.which(args.redis_server)
    if program is None:
        print(f"soak: error: {args.redis_server} not found (apt-get install redis-server)", file=sys.stderr)
        return 2
    args.redis_server = program
    nofile = raise_nofile()
    if nofile < args.clients + 200:
        log(f"RLIMIT_NOFILE is {nofile}, under the {args.clients + 200} sockets this run opens")
    res = Resources(keep_logs=args.keep_logs)
    out: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "workdir": str(res.dir)}
    try:
        coro = interruptible(soak(args, res, out))
        try:
            import uvloop
        except ImportError:
            verdict = asyncio.run(coro)
        else:
            verdict = uvloop.run(coro)
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("soak: interrupted; stopping every process it started", file=sys.stderr)
        return 2
    except Exception:
        traceback.print_exc()
        print(f"soak: error: the run did not complete (logs in {res.dir} with --keep-logs)", file=sys.stderr)
        return 2
    finally:
        res.cleanup()
    print(render(out, verdict))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2, default=str)
            f.write("\n")
    return 0 if verdict.ok else 1


if __name__ == "__main__":
    sys.exit(main())

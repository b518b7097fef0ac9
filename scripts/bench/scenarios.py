"""The scenarios of issue #7. Each returns plain dicts (JSON-ready); nothing asserts a timing.

* ``fanout_latency``: N clients of one tenant; M back-to-back events (server CPU per delivery,
  deliveries/s), then events paced apart (per-delivery and last-client latency); every server,
  interleaved round by round.
* ``memory_idle``: RSS per idle connection at 10 000 connections, for every server; cfgpush's
  CPU over a window at those 10 000 idle connections with its heartbeat.
* ``e2e``: a file saved in cfgpush's config folder, to every client's receipt.
* ``storm``: 10 000 clients of a node on Redis; the node restarts while a second node publishes;
  time until every client reconnected (full-jitter backoff, as cfgpush.js) and caught up.

Events are told apart by their path, ``b<seq>.json``: ``seq`` counts up per server process, so
every event is new to cfgpush's dedupe, and a client can check it got them all, once, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import random
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from . import targets
from .loadgen import Client, Connector, LoadGen, Sink, perf_counter
from .procs import GENERATOR_CPU, Resources
from .targets import HOST, Options, Target

PATH_RE = re.compile(rb'"path":\s*"b(\d+)\.json"')


def log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default); None for no values."""
    if not values:
        return None
    data = sorted(values)
    pos = (len(data) - 1) * q / 100.0
    low = int(pos)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (pos - low)


def median_of(runs: list[dict]) -> dict:
    """Per key, the median over rounds of the numeric values (None when a round has none)."""
    out: dict[str, Any] = {}
    for key in runs[0] if runs else ():
        values = [r.get(key) for r in runs]
        if all(isinstance(v, bool) for v in values):
            out[key] = all(values)
        elif all(isinstance(v, (int, float)) for v in values):
            out[key] = statistics.median(values)
        elif all(v is None or isinstance(v, (int, float)) for v in values):
            present = [v for v in values if v is not None]
            out[key] = statistics.median(present) if present else None
    return out


class GenCPU:
    """The generator's own CPU (``os.times``) over a window: near 100 % of its core means the
    generator, not the server, set the pace."""

    def __init__(self) -> None:
        self.t = os.times()
        self.wall = perf_counter()

    def percent(self) -> float:
        t = os.times()
        wall = perf_counter() - self.wall
        used = (t.user - self.t.user) + (t.system - self.t.system)
        return 100.0 * used / wall if wall > 0 else 0.0


class ServerCPU:
    """The server process's CPU (``/proc/<pid>/stat``, all threads) over a window."""

    def __init__(self, target: Target) -> None:
        self.proc = target.proc
        self.user, self.sys = self.proc.cpu()
        self.ns = self.proc.run_ns()

    def delta(self) -> tuple[float, float, float]:
        """(user s, sys s, run-time s from schedstat)."""
        user, sys_ = self.proc.cpu()
        return user - self.user, sys_ - self.sys, (self.proc.run_ns() - self.ns) / 1e9


@contextlib.contextmanager
def no_gc():
    """The generator's collector off while it measures: a full collection over thousands of
    client objects would show as latency. Nothing the clients do creates cycles."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.unfreeze()


# -- sinks -------------------------------------------------------------------------------------


class SeqSink(Sink):
    """Receipt times per event sequence number; per client, checks the order (no gap, no
    duplicate). ``waiter(seq, n)`` is a Future done when ``n`` clients have event ``seq``."""

    def __init__(self) -> None:
        self.times: dict[int, list[float]] = {}
        self.sent: dict[int, float] = {}
        self.total = 0
        self.disorder = 0  # a client got an event twice, out of order, or skipped one
        self.unknown = 0  # ConfigChanged without a b<seq>.json path
        self.others = 0
        self._want: dict[int, tuple[int, asyncio.Future]] = {}

    def change(self, client: Client, payload: bytes, now: float) -> None:
        found = PATH_RE.search(payload)
        if found is None:
            self.unknown += 1
            return
        seq = int(found.group(1))
        if client.next is not None and seq != client.next:
            self.disorder += 1
        client.next = seq + 1
        self.received(seq, now)

    def received(self, seq: int, now: float) -> None:
        """One client has event ``seq``: record when, and wake whoever waits for n of them."""
        times = self.times.get(seq)
        if times is None:
            times = self.times[seq] = []
        times.append(now)
        self.total += 1
        want = self._want.get(seq)
        if want is not None and len(times) >= want[0] and not want[1].done():
            want[1].set_result(now)

    def other(self, client: Client, payload: bytes, now: float) -> None:
        self.others += 1

    def waiter(self, seq: int, n: int) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self._want[seq] = (n, future)
        if len(self.times.get(seq, ())) >= n:
            future.set_result(perf_counter())
        return future


class OrdinalSink(SeqSink):
    """For events whose path does not say which they are (the e2e file ``x.json``): a client's
    k-th ConfigChanged is the k-th save."""

    def change(self, client: Client, payload: bytes, now: float) -> None:
        if b'"x.json"' not in payload:
            self.unknown += 1
            return
        self.received(client.count, now)


# -- one server with N clients -----------------------------------------------------------------


class Session:
    """A server under test with ``n`` connected clients."""

    def __init__(self, target: Target, gen: LoadGen, sink: SeqSink, n: int):
        self.target, self.gen, self.sink, self.n = target, gen, sink, n
        self.seq = 0

    @classmethod
    async def open(cls, target: Target, n: int, concurrency: int, sink: SeqSink | None = None) -> Session:
        sink = sink or SeqSink()
        gen = LoadGen(HOST, target.ws_port, sink, deflate=target.deflate, welcome=target.welcomes, ssl=target.tls)
        session = cls(target, gen, sink, n)
        started = perf_counter()
        await gen.connect(n, concurrency=concurrency)
        session.connect_s = perf_counter() - started
        return session

    def close(self) -> None:
        self.gen.close_all()

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq

    async def barrier(self, timeout: float = 60.0) -> None:
        """One event every client must get: all are registered, every code path is warm."""
        seq = self.next_seq()
        done = self.sink.waiter(seq, self.n)
        await asyncio.wait_for(self.target.publisher.post(f"b{seq}.json"), timeout)
        try:
            await asyncio.wait_for(done, timeout)
        except TimeoutError:
            got = len(self.sink.times.get(seq, ()))
            raise RuntimeError(
                f"{self.target.name}: only {got} of {self.n} clients got the warm-up event "
                f"within {timeout} s (open: {self.gen.open_count()})"
            ) from None

    async def burst(self, events: int, timeout: float) -> dict:
        """``events`` publishes written back to back (pipelined); server CPU per delivery."""
        seqs = [self.next_seq() for _ in range(events)]
        waits = [self.sink.waiter(s, self.n) for s in seqs]
        pub = self.target.publisher
        await pub.connect()
        with no_gc():
            server, gen = ServerCPU(self.target), GenCPU()
            t0 = perf_counter()
            answers = []
            for s in seqs:
                self.sink.sent[s] = perf_counter()
                answers.append(pub.publish(f"b{s}.json"))
            complete = True
            try:
                await asyncio.wait_for(asyncio.gather(*waits), timeout)
            except TimeoutError:
                complete = False
            wall = perf_counter() - t0
            user, sys_, run = server.delta()
            gen_percent = gen.percent()
        for answer in await asyncio.gather(*answers):
            pub.event_id(answer)
        delivered = sum(len(self.sink.times.get(s, ())) for s in seqs)
        per = 1e6 / max(delivered, 1)
        return {
            "clients": self.n,
            "events": events,
            "expected": self.n * events,
            "delivered": delivered,
            "all_received": complete and delivered == self.n * events,
            "wall_s": wall,
            "deliveries_per_s": delivered / wall if wall > 0 else 0.0,
            "server_us_per_delivery": (user + sys_) * per,
            "user_us": user * per,
            "sys_us": sys_ * per,
            "server_run_us_per_delivery": run * per,  # schedstat: ns resolution
            "generator_cpu_percent": gen_percent,
        }

    async def paced(self, events: int, interval: float, timeout: float) -> dict:
        """Events ``interval`` apart; latency from the publish request to each receipt."""
        per_delivery: list[float] = []
        last_client: list[float] = []
        gen = GenCPU()
        with no_gc():
            await self._paced(events, interval, timeout, per_delivery, last_client)
        delivered = sum(len(self.sink.times.get(s, ())) for s in range(self.seq - events + 1, self.seq + 1))
        ms = 1000.0
        return {
            "clients": self.n,
            "events": events,
            "interval_s": interval,
            "expected": self.n * events,
            "delivered": delivered,
            "all_received": delivered == self.n * events,
            "p50_ms": _ms(percentile(per_delivery, 50)),
            "p99_ms": _ms(percentile(per_delivery, 99)),
            "last_client_p50_ms": _ms(percentile(last_client, 50)),
            "last_client_p99_ms": _ms(percentile(last_client, 99)),
            "last_client_max_ms": max(last_client) * ms if last_client else None,
            "last_client_ms": [round(x * ms, 3) for x in last_client],  # per event, in order
            "generator_cpu_percent": gen.percent(),
        }

    async def _paced(
        self, events: int, interval: float, timeout: float, per_delivery: list[float], last_client: list[float]
    ) -> None:
        pub = self.target.publisher
        for _ in range(events):
            await pub.connect()
            seq = self.next_seq()
            done = self.sink.waiter(seq, self.n)
            sent = self.sink.sent[seq] = perf_counter()
            answer = pub.publish(f"b{seq}.json")
            try:
                await asyncio.wait_for(done, timeout)
            except TimeoutError:
                pass
            pub.event_id(await answer)
            times = self.sink.times.get(seq, [])
            per_delivery.extend(t - sent for t in times)
            if len(times) >= self.n:
                last_client.append(max(times) - sent)
            rest = sent + interval - perf_counter()
            if rest > 0:
                await asyncio.sleep(rest)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1000.0


def checks(session: Session) -> dict:
    """What the clients saw besides the counted events: the accounting's other half."""
    sink, stats = session.sink, session.gen.stats
    return {
        "disorder": sink.disorder,
        "unknown": sink.unknown,
        "lost_connections": stats.lost,
        "server_closes": stats.server_closes,
        "protocol_errors": stats.protocol_errors,
        "pings_answered": stats.pings,
        "deflate_negotiated": sum(1 for c in session.gen.clients if c.deflate),
    }


# -- fanout and latency ------------------------------------------------------------------------


async def fanout_latency(
    res: Resources,
    opts: Options,
    servers: list[str],
    *,
    clients: int,
    events: int,
    latency_events: int,
    interval: float,
    rounds: int,
    do_fanout: bool,
    do_latency: bool,
    concurrency: int,
) -> dict:
    """Every server, interleaved round by round (each round: every server in turn, a fresh
    process each time), so that all see the same machine state."""
    runs: dict[str, dict[str, list]] = {name: {"fanout": [], "latency": [], "checks": []} for name in servers}
    failures: list[str] = []
    config_dir = targets.bench_config_dir(res)
    for rnd in range(rounds):
        for name in servers:
            target = session = None
            try:
                target = await targets.start(name, res, opts, config_dir=config_dir)
                session = await Session.open(target, clients, concurrency)
                await session.barrier()
                line = f"round {rnd + 1}/{rounds} {name:15}"
                if do_fanout:
                    r = await session.burst(events, timeout=max(60.0, clients * events * 200e-6))
                    runs[name]["fanout"].append(r)
                    line += (
                        f" fanout {r['deliveries_per_s']:9.0f}/s {r['server_us_per_delivery']:6.1f} µs/delivery"
                        f" ({r['delivered']}/{r['expected']})"
                    )
                if do_latency:
                    r = await session.paced(latency_events, interval, timeout=max(10.0, 10 * interval))
                    runs[name]["latency"].append(r)
                    line += f"; last-client p99 {_fmt(r['last_client_p99_ms'])} ms ({r['delivered']}/{r['expected']})"
                runs[name]["checks"].append(checks(session))
                log(line)
            except Exception as exc:  # one bad round of one server: the others still count
                failures.append(failure(f"round {rnd + 1} {name}", exc, target))
            finally:
                if session is not None:
                    session.close()
                if target is not None:
                    targets.stop(target, res)
    out: dict[str, Any] = {"clients": clients, "rounds": rounds, "servers": {}, "failures": failures}
    if do_fanout:
        out["events"] = events
    if do_latency:
        out["latency_events"], out["interval_s"] = latency_events, interval
    for name, r in runs.items():
        if not r["checks"]:
            continue  # every round of it failed
        entry: dict[str, Any] = {"checks": r["checks"]}
        for kind in ("fanout", "latency"):
            if r[kind]:
                entry[kind] = {
                    "rounds": r[kind],
                    "median": median_of(r[kind]),
                    "all_received": all(x["all_received"] for x in r[kind]),
                    "delivered": sum(x["delivered"] for x in r[kind]),
                    "expected": sum(x["expected"] for x in r[kind]),
                }
        out["servers"][name] = entry
    return out


def failure(what: str, exc: BaseException, target: Target | None) -> str:
    """One line for the report (the traceback goes to stderr, with the server's log tail)."""
    import traceback

    traceback.print_exc()
    text = f"{what}: {type(exc).__name__}: {exc}"
    if target is not None and not target.proc.alive():
        text += f" (the server exited with {target.proc.popen.returncode}: {target.proc.tail(5)})"
    log(text)
    return text


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


# -- memory and idle ---------------------------------------------------------------------------


async def memory_idle(
    res: Resources,
    opts: Options,
    servers: list[str],
    *,
    connections: int,
    warm: int,
    settle: float,
    idle_window: float,
    do_memory: bool,
    do_idle: bool,
    concurrency: int,
) -> dict:
    """RSS per idle connection for ``servers``; cfgpush's idle CPU on the same 10 000."""
    memory: dict[str, Any] = {}
    idle: dict[str, Any] = {}
    todo = list(servers) if do_memory else ["cfgpush"]
    failures: list[str] = []
    config_dir = targets.bench_config_dir(res)
    for name in todo:
        target = None
        sessions: list[Session] = []
        try:
            target = await targets.start(name, res, opts, config_dir=config_dir)
            # Warm-up: a few connections and an event, then gone; RSS is read after it, so
            # the figure is what connections add, not what the first one initialises.
            warmup = await Session.open(target, warm, concurrency)
            sessions.append(warmup)
            await warmup.barrier()
            warmup.close()
            await asyncio.sleep(settle / 2)
            rss_before = target.proc.rss_kb()
            server, gen = ServerCPU(target), GenCPU()
            started = perf_counter()
            session = await Session.open(target, connections, concurrency)
            sessions.append(session)
            session.seq = warmup.seq
            connect_s = perf_counter() - started
            user, sys_, _ = server.delta()
            handshake = {
                "server_us_per_handshake": 1e6 * (user + sys_) / connections,
                "server_cpu_percent_connecting": 100.0 * (user + sys_) / connect_s,
                "generator_cpu_percent_connecting": gen.percent(),
            }
            await session.barrier(timeout=120.0)
            await asyncio.sleep(settle)
            rss_after = target.proc.rss_kb()
            if do_memory:
                memory[name] = {
                    "connections": connections,
                    "rss_before_kb": rss_before,
                    "rss_after_kb": rss_after,
                    "kb_per_connection": (rss_after - rss_before) / connections,
                    "connect_s": connect_s,
                    "connections_per_s": connections / connect_s,
                    **handshake,
                    "open_at_end": session.gen.open_count(),
                }
                log(
                    f"memory {name:15} {memory[name]['kb_per_connection']:6.2f} KB per connection "
                    f"({rss_before} -> {rss_after} KB, {connections} connections in {connect_s:.1f} s, "
                    f"{handshake['server_us_per_handshake']:.0f} µs of server CPU each)"
                )
            if do_idle and name == "cfgpush":
                idle = await idle_window_cpu(target, session, idle_window)
        except Exception as exc:
            failures.append(failure(f"memory {name}", exc, target))
        finally:
            for s in sessions:
                s.close()
            if target is not None:
                targets.stop(target, res)
    out: dict[str, Any] = {"failures": failures}
    if do_memory:
        out["memory"] = {"connections": connections, "servers": memory}
    if do_idle and idle:
        out["idle"] = idle
    return out


async def idle_window_cpu(target: Target, session: Session, window: float) -> dict:
    """cfgpush's CPU over ``window`` seconds with every connection idle but for heartbeats."""
    pings_before = session.gen.stats.pings
    server = ServerCPU(target)
    started = perf_counter()
    await asyncio.sleep(window)
    elapsed = perf_counter() - started
    user, sys_, run = server.delta()
    n = session.n
    core_percent = 100.0 * (user + sys_) / elapsed
    result = {
        "connections": n,
        "window_s": elapsed,
        "heartbeat_interval_s": None,
        "server_cpu_s": user + sys_,
        "user_s": user,
        "sys_s": sys_,
        "server_run_s": run,
        "core_percent": core_percent,
        "core_percent_per_1000": core_percent / (n / 1000.0),
        "run_core_percent_per_1000": 100.0 * run / elapsed / (n / 1000.0),
        "pings_answered": session.gen.stats.pings - pings_before,
        "open_at_end": session.gen.open_count(),
    }
    log(
        f"idle   cfgpush {result['core_percent_per_1000']:.3f} % of a core per 1 000 connections "
        f"({n} connections, {elapsed:.0f} s, {result['pings_answered']} pings answered, "
        f"{result['open_at_end']} still open)"
    )
    return result


# -- e2e ---------------------------------------------------------------------------------------


async def e2e(
    res: Resources, opts: Options, *, clients: int, saves: int, interval: float, write: str, concurrency: int
) -> dict:
    """A save in the config folder to every client's receipt, through the filesystem source."""
    config_dir = targets.bench_config_dir(res)
    path = config_dir / targets.TENANT / "x.json"
    target = await targets.start("cfgpush", res, opts, config_dir=config_dir)
    session = None
    try:
        session = await Session.open(target, clients, concurrency, OrdinalSink())
        per_delivery: list[float] = []
        last_client: list[float] = []
        delivered = 0
        with no_gc():
            for k in range(saves + 1):  # the first save warms up, unmeasured
                seq = k + 1
                done = session.sink.waiter(seq, clients)
                sent = perf_counter()
                save(path, f'{{"n": {seq}, "at": {time.time()!r}}}\n', write)
                try:
                    await asyncio.wait_for(done, max(5.0, 10 * interval))
                except TimeoutError:
                    pass
                times = session.sink.times.get(seq, [])
                if k:
                    delivered += len(times)
                    per_delivery.extend(t - sent for t in times)
                    if len(times) >= clients:
                        last_client.append(max(times) - sent)
                rest = sent + interval - perf_counter()
                if rest > 0:
                    await asyncio.sleep(rest)
        await asyncio.sleep(min(interval, 0.5))  # a late duplicate event would show here
        result = {
            "clients": clients,
            "saves": saves,
            "interval_s": interval,
            "write": write,
            "debounce_ms": opts.debounce_ms if opts.debounce_ms is not None else 50,
            "expected": clients * saves,
            "delivered": delivered,
            "all_received": delivered == clients * saves,
            "extra_events": session.sink.total - clients * (saves + 1),
            "p50_ms": _ms(percentile(per_delivery, 50)),
            "p99_ms": _ms(percentile(per_delivery, 99)),
            "last_client_p50_ms": _ms(percentile(last_client, 50)),
            "last_client_p99_ms": _ms(percentile(last_client, 99)),
            **checks(session),
        }
        log(
            f"e2e    cfgpush save -> every client: p50 {_fmt(result['last_client_p50_ms'])} ms, "
            f"p99 {_fmt(result['last_client_p99_ms'])} ms ({delivered}/{clients * saves})"
        )
        return result
    finally:
        if session is not None:
            session.close()
        targets.stop(target, res)


def save(path: Path, text: str, how: str) -> None:
    """As an editor saves: ``atomic`` (a temporary file renamed over it) or ``plain``."""
    if how == "atomic":
        tmp = path.with_name(f".{path.name}.tmp")  # a dotfile: the watcher ignores it
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    else:
        with open(path, "w") as f:
            f.write(text)


# -- storm -------------------------------------------------------------------------------------


class Virtual:
    """A reconnecting client: survives its connections, remembers what it received."""

    __slots__ = ("received", "last", "last_at", "attempt", "welcomed_at", "connects", "resyncs", "failures")

    def __init__(self) -> None:
        self.received: list[str] = []
        self.last: str | None = None
        self.last_at = 0.0
        self.attempt = 0
        self.welcomed_at: float | None = None
        self.connects = 0
        self.resyncs = 0
        self.failures = 0


class StormSink(Sink):
    """Event ids per virtual client (parsed: few events, many clients); reconnects with
    cfgpush.js's policy: full jitter, a random wait in [0, min(20 s, 0.5 s x 2^attempt)], the
    attempt count reset when the lost connection had lasted 5 s."""

    BACKOFF_MIN, BACKOFF_MAX, STABLE_AFTER = 0.5, 20.0, 5.0

    def __init__(self) -> None:
        self.reconnect = False
        self.connector: Connector | None = None
        self.final: str | None = None
        self.caught_up = 0
        self.caught_up_at = 0.0
        self.done: asyncio.Future | None = None
        self.n = 0
        self.others = 0

    def welcome(self, client: Client, payload: bytes, now: float) -> None:
        vc = client.vc
        vc.welcomed_at = now
        vc.connects += 1

    def change(self, client: Client, payload: bytes, now: float) -> None:
        vc = client.vc
        event_id = json.loads(payload)["ConfigChanged"]["event_id"]
        vc.received.append(event_id)
        vc.last, vc.last_at = event_id, now
        if event_id == self.final:
            self._caught_up(now)

    def other(self, client: Client, payload: bytes, now: float) -> None:
        if payload.startswith(b'{"Resync"'):
            client.vc.resyncs += 1
        else:
            self.others += 1

    def _caught_up(self, now: float) -> None:
        self.caught_up += 1
        self.caught_up_at = max(self.caught_up_at, now)
        if self.caught_up >= self.n and self.done is not None and not self.done.done():
            self.done.set_result(now)

    def set_final(self, event_id: str, clients: list[Virtual]) -> asyncio.Future:
        self.final = event_id
        self.done = asyncio.get_running_loop().create_future()
        for vc in clients:
            if vc.last == event_id:
                self._caught_up(vc.last_at)
        if self.caught_up >= self.n and not self.done.done():
            self.done.set_result(self.caught_up_at)
        return self.done

    def lost(self, client: Client) -> None:
        if self.reconnect:
            self.retry(
                client.vc,
                stable=client.vc.welcomed_at is not None
                and perf_counter() - client.vc.welcomed_at >= self.STABLE_AFTER,
            )

    def failed(self, exc: BaseException, vc: Virtual) -> None:
        vc.failures += 1
        if self.reconnect:
            self.retry(vc, stable=False)

    def retry(self, vc: Virtual, stable: bool) -> None:
        if stable:
            vc.attempt = 0
        delay = random.random() * min(self.BACKOFF_MAX, self.BACKOFF_MIN * 2 ** min(vc.attempt, 30))
        vc.attempt += 1
        vc.welcomed_at = None
        self.connector.submit(vc, delay)


async def storm(
    res: Resources,
    opts: Options,
    *,
    clients: int,
    before: int,
    down: int,
    during: int,
    concurrency: int,
    redis_program: str,
    timeout: float,
    tls: bool = False,
    workers: int = 0,
) -> dict:
    """A node with ``clients`` clients restarts (SIGTERM, then again on the same port) while a
    second node on the same Redis publishes ``down`` events (and ``during`` more as clients
    come back); every client must end with every event exactly once, in order."""
    _, broker = await targets.start_redis(res, redis_program)
    port = targets.free_port()
    # TLS: the restarted node's clients on wss://; workers: the node is cfgpush --workers N.
    name = targets.workers_name(workers, redis=True) if workers > 1 else targets.TLS if tls else "cfgpush"
    node = await targets.start(name, res, opts, port=port, broker=broker)
    # The publishing node runs beside the generator: it has no client, only the API.
    other = await targets.start("cfgpush", res, opts, broker=broker, cpu=GENERATOR_CPU)
    sink = StormSink()
    sink.n = clients
    gen = LoadGen(HOST, port, sink, welcome=True, ssl=node.tls)
    connector = Connector(gen, concurrency)
    sink.connector = connector
    virtual = [Virtual() for _ in range(clients)]
    published: list[str] = []
    try:
        connector.vc = lambda vc: vc
        connector.last_event_id = lambda vc: vc.last
        pending = {"n": clients}
        connected = asyncio.get_running_loop().create_future()

        def opened(client: Client, vc: Virtual) -> None:
            gen.clients.append(client)
            if not sink.reconnect:
                pending["n"] -= 1
                if pending["n"] == 0 and not connected.done():
                    connected.set_result(None)

        def failed(exc: BaseException, vc: Virtual) -> None:
            if not sink.reconnect:  # the first connection: retry soon, it is no storm yet
                vc.failures += 1
                connector.submit(vc, 0.2)
            else:
                sink.failed(exc, vc)

        connector.on_open, connector.on_fail = opened, failed
        started = perf_counter()
        for vc in virtual:
            connector.submit(vc)
        await asyncio.wait_for(connected, timeout)
        connect_s = perf_counter() - started
        log(f"storm  {clients} clients connected to the node in {connect_s:.1f} s")
        # Events everybody sees live, through the other node (and Redis).
        for i in range(before):
            published.append(await other.publisher.post(f"b{i + 1}.json"))
        await asyncio.wait_for(sink.set_final(published[-1], virtual), timeout)
        sink.caught_up = 0
        sink.caught_up_at = 0.0
        # Restart: SIGTERM (the node closes every client with 1001), the clients back off.
        sink.reconnect = True
        t_term = perf_counter()
        exit_status = node.proc.terminate(timeout=30)
        t_exited = perf_counter()
        for i in range(down):
            published.append(await other.publisher.post(f"b{before + i + 1}.json"))
        node.publisher.close()
        t_restart = perf_counter()
        node = await targets.start(name, res, opts, port=port, broker=broker, timeout=timeout)
        t_listening = perf_counter()
        node_cpu = ServerCPU(node)
        # Healthz answers once the node serves; a client may have been welcomed a moment earlier.
        first_welcome = min(
            (vc.welcomed_at for vc in virtual if vc.welcomed_at and vc.welcomed_at >= t_restart), default=t_listening
        )
        t_listening = min(t_listening, first_welcome)
        for i in range(during):
            await asyncio.sleep(0.1)
            published.append(await other.publisher.post(f"b{before + down + i + 1}.json"))
        finished = sink.set_final(published[-1], virtual)
        complete = True
        try:
            await asyncio.wait_for(finished, timeout)
        except TimeoutError:
            complete = False
        t_done = perf_counter()
        user, sys_, _ = node_cpu.delta()
        await asyncio.sleep(0.5)  # a duplicate after the last one would show here
        sink.reconnect = False
        # When each client had everything (its last receipt), from the node listening.
        ready = sorted(vc.last_at - t_listening for vc in virtual if vc.last == published[-1])
        exact = sum(1 for vc in virtual if vc.received == published)
        duplicates = sum(1 for vc in virtual if len(set(vc.received)) != len(vc.received))
        gaps = sum(1 for vc in virtual if not set(published) <= set(vc.received))
        result = {
            "clients": clients,
            "events_before": before,
            "events_while_down": down,
            "events_during_reconnect": during,
            "published": len(published),
            "connect_s": connect_s,
            "node_exit_status": exit_status,
            "node_stop_s": t_exited - t_term,
            "down_s": t_listening - t_exited,
            "restart_to_listening_s": t_listening - t_restart,
            "all_caught_up": complete,
            "caught_up": sink.caught_up,
            "seconds_from_listening": (sink.caught_up_at - t_listening) if complete else None,
            "seconds_from_sigterm": (sink.caught_up_at - t_term) if complete else None,
            "exact": exact,
            "lost": clients - exact,
            "with_duplicates": duplicates,
            "with_gaps": gaps,
            "resyncs": sum(vc.resyncs for vc in virtual),
            "failed_attempts": sum(vc.failures for vc in virtual),
            "connections": sum(vc.connects for vc in virtual),
            "max_attempt": max(vc.attempt for vc in virtual),
            "caught_up_p50_s": percentile(ready, 50),
            "caught_up_p90_s": percentile(ready, 90),
            # Was the restarted node the limit? Its CPU from listening to the last catch-up.
            "node_cpu_percent": 100.0 * (user + sys_) / max(t_done - t_listening, 1e-9),
            "node_us_per_reconnect": 1e6 * (user + sys_) / clients,
        }
        log(
            f"storm  all {clients} reconnected and caught up {_fmt(result['seconds_from_listening'])} s after the "
            f"node listened; exact {exact}/{clients}, resyncs {result['resyncs']}"
        )
        return result
    finally:
        sink.reconnect = False
        connector.stop()
        gen.close_all()
        targets.stop(other, res)
        targets.stop(node, res)


# -- the chart's points ------------------------------------------------------------------------


async def sweep(
    res: Resources,
    opts: Options,
    servers: list[str],
    sizes: list[int],
    *,
    events: int,
    latency_events: int,
    interval: float,
    concurrency: int,
) -> dict:
    """Deliveries/s and last-client p99 against the number of clients, one round each."""
    points: dict[str, list[dict]] = {name: [] for name in servers}
    config_dir = targets.bench_config_dir(res)
    for size in sizes:
        for name in servers:
            target = await targets.start(name, res, opts, config_dir=config_dir)
            session = None
            try:
                session = await Session.open(target, size, concurrency)
                await session.barrier()
                burst = await session.burst(events, timeout=max(60.0, size * events * 200e-6))
                paced = await session.paced(latency_events, interval, timeout=max(10.0, 10 * interval))
                points[name].append(
                    {
                        "clients": size,
                        "deliveries_per_s": burst["deliveries_per_s"],
                        "server_us_per_delivery": burst["server_us_per_delivery"],
                        "last_client_p99_ms": paced["last_client_p99_ms"],
                        "all_received": burst["all_received"] and paced["all_received"],
                        "generator_cpu_percent": burst["generator_cpu_percent"],
                    }
                )
                log(
                    f"chart  {size:5} clients {name:15} {burst['deliveries_per_s']:9.0f}/s, last-client p99 "
                    f"{_fmt(paced['last_client_p99_ms'])} ms"
                )
            finally:
                if session is not None:
                    session.close()
                targets.stop(target, res)
    return {
        "sizes": sizes,
        "events": events,
        "latency_events": latency_events,
        "interval_s": interval,
        "servers": points,
    }

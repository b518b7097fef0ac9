#!/usr/bin/env python3
"""cfgpush's fault suite (issue #19.5): a two-node cluster through Redis faults, every client checked.

Each scenario runs on a cluster of its own: a private ``redis-server``; two ``cfgpush-serve``
nodes, a and b, each reaching Redis through its own TCP proxy (``bench/tcpproxy.py``), both
watching one shared config folder (``--tenants`` x ``--files-per-tenant`` files, the README's
Cluster section); ``--clients-per-node`` WebSocket clients on each node (a client whose node
goes away comes back with its ``last_event_id`` to a node that serves, as through a load
balancer); a writer process saving ``--saves-per-s`` files a second, atomically (a temporary
file renamed over the real one, as editors do). The load runs ``--before`` seconds, then the
fault, then ``--after`` seconds; then every client must catch up, and its stream is compared
with the writer's log and the Redis streams (``bench/checker.py``): every save once and in
order, no older version after a newer one, every last save announced, no event of another
tenant, a ``Resync`` only with a reason the protocol names and, here, only where the fault
explains it (``unexpected_resync`` otherwise).

Scenarios (``--scenario``, repeatable or comma-separated; default all):

  none           no fault: the baseline the others compare with, measured in the same run
  hang           Redis stopped (SIGSTOP) for --hang-s, then SIGCONT
  cut-hold       node b's link to Redis held for --cut-s (a partition: nothing forwarded,
                 nothing closed), then released (the heal: what waited goes through)
  cut-drop       node b's link reset, and every new connection refused, for --cut-s
  slow           both links slowed to --slow-delay seconds per chunk, each way, for --slow-s
  flush          Redis emptied (FLUSHALL) under the running nodes
  flush-behind   the same with Redis's clock behind the old ids: before the load, each
                 tenant's record says its newest id is far ahead (as a clock that went back
                 leaves them), so the old history's ids are all above the new one's
  restart-empty  Redis restarted without its data (--redis-down s away), its clock behind
                 as in flush-behind
  node-restart   node b stopped (SIGTERM) and started again

Figures per scenario: saves, events, deliveries, duplicates, rollbacks, silent losses,
Resyncs by reason (expected or not), save to client p50 / p99 / max (``bench/timeline.py``:
when each client had each save, or a newer one of the path, or reloaded past it), the time
from the fault's end until every client had every save made before it, and each node's
``/readyz`` and ``cfgpush_source_publish_lag_seconds`` every half second. The exit status is
1 on any violation, 2 on a usage or setup error.

    python scripts/faults.py --json faults.json                 # every scenario, about 4 minutes
    python scripts/faults.py --scenario hang,flush-behind       # some of them
    python scripts/faults.py --quick --scenario cut-hold        # the tests' sizes (tests/test_faults.py)
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import random
import re
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench import checker, targets, timeline
from bench.checker import Event, event_key
from bench.cluster import KEY_PREFIX, Fleet, Folder, Node, RedisProc, interruptible, quiesce, start_node
from bench.loadgen import perf_counter, raise_nofile
from bench.procs import Resources
from bench.targets import HOST, Options
from bench.tcpproxy import FaultProxy
from bench.writer import Writer

# The old history's ids in flush-behind and restart-empty: far ahead of any clock (year 2286).
FAR_MS = 9_999_999_999_999
SAMPLE_EVERY = 0.5  # seconds between two looks at each node's /readyz and /metrics
NODE_FLAGS = ("--metrics-public",)  # the lag is read from /metrics without the admin token
LAG_METRIC = re.compile(r'^cfgpush_source_publish_lag_seconds\{source="filesystem"\} (\S+)$', re.M)
UP_METRIC = re.compile(r'^cfgpush_source_up\{source="filesystem"\} (\S+)$', re.M)
# Reasons a resuming client may be told after Redis lost its history (docs/protocol.md).
LOST_HISTORY = frozenset({"unknown_epoch", "unknown_event_id", "history_expired"})


def log(message: str) -> None:
    print(f"faults: {message}", file=sys.stderr, flush=True)


# -- one run ------------------------------------------------------------------------------------


@dataclass
class Run:
    """One scenario's cluster and what happened to it."""

    args: argparse.Namespace
    res: Resources
    config_dir: Path
    tenants: list[str]
    redis: RedisProc
    proxies: dict[str, FaultProxy]
    nodes: list[Node]
    fleet: Fleet
    t0: float = 0.0
    incidents: list[dict] = field(default_factory=list)
    old_history: dict[str, list[Event]] = field(default_factory=dict)  # read when Redis was emptied
    samples: list[dict] = field(default_factory=list)

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def broker(self, node: Node) -> str:
        return f"redis://{HOST}:{self.proxies[node.name].port}/0"

    def note(self, what: str, **details: Any) -> None:
        incident = {"what": what, "at_s": round(perf_counter() - self.t0, 2), **details}
        self.incidents.append(incident)
        log(f"  {incident['at_s']:6.1f} s: {what}" + (f" {details}" if details else ""))

    async def lasting(self, seconds: float) -> None:
        await asyncio.sleep(seconds)  # wait-ok: the fault lasts this long


# -- the faults ----------------------------------------------------------------------------------


async def no_fault(run: Run) -> None:
    run.note("no fault: the baseline")


async def hang(run: Run) -> None:
    run.redis.proc.popen.send_signal(signal.SIGSTOP)
    run.note("redis stopped (SIGSTOP)")
    try:
        await run.lasting(run.args.hang_s)
    finally:
        run.redis.proc.popen.send_signal(signal.SIGCONT)
        run.note("redis continued (SIGCONT)")


async def cut_hold(run: Run) -> None:
    run.proxies["b"].hold()
    run.note("node b cut off from Redis (held)")
    try:
        await run.lasting(run.args.cut_s)
    finally:
        run.proxies["b"].release()
        run.note("node b's link released")


async def cut_drop(run: Run) -> None:
    resets = run.proxies["b"].drop(refuse=True)
    run.note("node b cut off from Redis (reset, refused)", connections_reset=resets)
    try:
        await run.lasting(run.args.cut_s)
    finally:
        run.proxies["b"].release()
        run.note("node b's link accepts connections again")


async def slow(run: Run) -> None:
    low, high = run.args.slow_delay
    for proxy in run.proxies.values():
        proxy.delay(low, high)
    run.note(f"both links slowed to {low:g}-{high:g} s per chunk, each way")
    try:
        await run.lasting(run.args.slow_s)
    finally:
        for proxy in run.proxies.values():
            proxy.delay(0)
        run.note("both links at full speed again")


async def flush(run: Run) -> None:
    run.old_history = await run.redis.snapshot(run.tenants, flush=True)
    run.note("redis emptied (FLUSHALL)", events_before=sum(len(e) for e in run.old_history.values()))


async def restart_empty(run: Run) -> None:
    # Writes paused (scripts wait) while the history is read, then Redis goes: nothing
    # published in between escapes the record.
    await run.redis.command("CLIENT", "PAUSE", "10000", "WRITE")
    run.old_history = await run.redis.snapshot(run.tenants)
    status = run.redis.stop()
    run.note(
        "redis stopped (SIGTERM, no persistence)",
        exit_status=status,
        events_before=sum(len(e) for e in run.old_history.values()),
    )
    await run.lasting(run.args.redis_down)
    await run.redis.start()
    run.note("redis started again, empty")


async def node_restart(run: Run) -> None:
    node = run.node("b")
    others = [n.port for n in run.nodes if n is not node]
    run.fleet.ports = others  # the balancer takes it out first
    popen = node.target.proc.popen
    popen.send_signal(signal.SIGTERM)
    try:
        status = await asyncio.get_running_loop().run_in_executor(None, popen.wait, 15.0)
    except Exception:  # subprocess.TimeoutExpired: the SIGTERM was not honoured in time
        status = None
    run.note("node b stopped (SIGTERM)", exit_status=status)
    targets.stop(node.target, run.res)
    await start_node(node, run.res, options(run.args), run.config_dir, run.broker(node), extra=NODE_FLAGS)
    run.fleet.ports = others + [node.port]
    run.note("node b serving again")


@dataclass(frozen=True)
class Scenario:
    name: str
    fault: Callable[[Run], Awaitable[None]]
    resyncs: frozenset[str] = frozenset()  # the Resync reasons this fault explains
    ids_ahead: bool = False  # the old history's ids far ahead of Redis's clock


SCENARIOS = {
    s.name: s
    for s in (
        Scenario("none", no_fault),
        Scenario("hang", hang),
        Scenario("cut-hold", cut_hold),
        Scenario("cut-drop", cut_drop),
        Scenario("slow", slow),
        Scenario("flush", flush, LOST_HISTORY),
        Scenario("flush-behind", flush, LOST_HISTORY, ids_ahead=True),
        Scenario("restart-empty", restart_empty, LOST_HISTORY, ids_ahead=True),
        Scenario("node-restart", node_restart),
    )
}


# -- setting up, sampling, writing -----------------------------------------------------------------


def options(args: argparse.Namespace) -> Options:
    return Options(heartbeat=args.heartbeat, debounce_ms=args.debounce_ms)


async def ids_ahead(redis: RedisProc, tenants: list[str]) -> None:
    """Each tenant's record says its newest id is far ahead (its history continues above it),
    in an epoch of its own, as a cluster's records are once it has published: an old
    Redis whose clock was ahead of the one that replaces it."""
    for tenant in tenants:
        await redis.command(
            "HSET", f"{KEY_PREFIX}{{{tenant}}}:paths", "/newest", f"{FAR_MS}-0", "/epoch", f"old-epoch-{tenant}"
        )


async def sample(run: Run, stop: asyncio.Event) -> None:
    """Every SAMPLE_EVERY seconds, each node's /readyz (status, reasons, how long it took)
    and its filesystem source's publish lag and up gauge from /metrics."""
    while not stop.is_set():
        for node in run.nodes:
            row: dict[str, Any] = {"t": round(perf_counter() - run.t0, 2), "node": node.name}
            target = node.target
            try:
                began = perf_counter()
                code, body = await target.publisher.get("/readyz", timeout=5)
                row["readyz_ms"] = round(1000 * (perf_counter() - began), 1)
                answer = json.loads(body)
                row["readyz"] = code if answer.get("status") != "degraded" else "degraded"
                if answer.get("reasons"):
                    row["reasons"] = answer["reasons"]
                _, metrics = await target.publisher.get("/metrics", timeout=5)
                text = metrics.decode()
                for name, pattern in (("lag_s", LAG_METRIC), ("up", UP_METRIC)):
                    found = pattern.search(text)
                    if found:
                        row[name] = float(found.group(1))
            except Exception as exc:  # a node restarting, a timeout: said, and the next look reconnects
                target.publisher.close()
                row["error"] = type(exc).__name__
            run.samples.append(row)
        try:
            await asyncio.wait_for(stop.wait(), SAMPLE_EVERY)
        except TimeoutError:
            pass


async def write(writer: Writer, folder: Folder, args: argparse.Namespace, stop: asyncio.Event) -> int:
    """One save every 1/--saves-per-s seconds, on a fixed schedule, until ``stop``."""
    interval = 1.0 / args.saves_per_s
    due = perf_counter()
    saves = 0
    while not stop.is_set():
        edit = folder.edit(args.delete_share)
        if edit is not None:
            op, files = edit
            await (writer.write(files) if op == "write" else writer.delete(files))
            saves += 1
        due += interval
        try:
            await asyncio.wait_for(stop.wait(), max(0.0, due - perf_counter()))
        except TimeoutError:
            pass
    return saves


# -- a scenario -------------------------------------------------------------------------------------


async def run_scenario(scenario: Scenario, args: argparse.Namespace, res: Resources) -> dict:
    random.seed(f"{args.seed}-{scenario.name}")
    tenants = [f"t{k:02d}" for k in range(args.tenants)]
    config_dir = res.mkdir("config")
    writes_log = res.dir / "writes.jsonl"
    folder = Folder(tenants, args.files_per_tenant)
    writer = Writer(res, config_dir, log=writes_log)
    await writer.start()
    await writer.write(folder.initial())
    baseline_seq = len(folder.paths)

    redis = RedisProc(res, args.redis_server, persist=False)
    await redis.start()
    if scenario.ids_ahead:
        await ids_ahead(redis, tenants)
    proxies = {name: await FaultProxy(redis.port, seed=args.seed).start() for name in ("a", "b")}
    run = Run(
        args,
        res,
        config_dir,
        tenants,
        redis,
        proxies,
        [Node("a", targets.free_port()), Node("b", targets.free_port())],
        Fleet(tenants, 2 * args.clients_per_node, args.concurrency),
    )
    try:
        for node in run.nodes:
            await start_node(node, res, options(args), config_dir, run.broker(node), extra=NODE_FLAGS)
        fleet = run.fleet
        fleet.ports = [node.port for node in run.nodes]
        started = perf_counter()
        fleet.connect_all()
        while fleet.connected() < len(fleet.virtual):
            if perf_counter() - started > 120:
                raise RuntimeError(f"only {fleet.connected()} of {len(fleet.virtual)} clients connected within 120 s")
            await asyncio.sleep(0.1)
        per_node = {n.name: fleet.per_node().get(n.port, 0) for n in run.nodes}
        log(
            f"{scenario.name}: redis :{redis.port}, nodes a :{run.nodes[0].port} and b :{run.nodes[1].port} "
            f"through proxies :{proxies['a'].port} and :{proxies['b'].port}; clients {per_node}"
        )

        run.t0 = perf_counter()
        stop_sampling, stop_writing = asyncio.Event(), asyncio.Event()
        sampler = asyncio.ensure_future(sample(run, stop_sampling))
        writing = asyncio.ensure_future(write(writer, folder, args, stop_writing))
        try:
            await asyncio.sleep(args.before)  # wait-ok: the load before the fault
            fault_start = perf_counter()
            await scenario.fault(run)
            fault_end = perf_counter()
            await asyncio.sleep(args.after)  # wait-ok: the load after the fault
            stop_writing.set()
            saves = await writing
            quiet = await quiesce(fleet, redis, tenants, args.quiesce_timeout, log)
        finally:
            stop_writing.set()
            stop_sampling.set()
            await asyncio.gather(sampler, writing, return_exceptions=True)
        final = await redis.snapshot(tenants)
        for vc in fleet.virtual:
            vc.stream.connected_at_end = vc.client is not None and vc.client.open and vc.welcomed
        fleet.stop()
        for node in run.nodes:
            status = node.target.proc.terminate(timeout=30)
            if status != 0:
                run.note(f"node {node.name} stop at the end (SIGTERM)", exit_status=status)
        await writer.close()
    finally:
        for proxy in proxies.values():
            await proxy.close()

    published: dict[str, list[Event]] = {}
    for history in (run.old_history, final):
        for tenant, events in history.items():
            published.setdefault(tenant, []).extend(events)
    writes = checker.read_writer_log(writes_log)
    streams = [vc.stream for vc in run.fleet.virtual]
    verdict = checker.check(
        writes, streams, published=published, baseline_seq=baseline_seq, epoch_of=epochs(scenario, run.old_history)
    )
    for stream in streams:
        for item, at in zip(stream.items, stream.times, strict=True):
            if item[0] == "resync" and item[2] not in scenario.resyncs:
                verdict.add(
                    "unexpected_resync",
                    f"client {stream.name} ({stream.tenant}): Resync {item[2]} at "
                    f"{at - run.t0:.2f} s (the fault: {fault_start - run.t0:.2f} to "
                    f"{fault_end - run.t0:.2f} s)",
                )
    reaches = timeline.reach(writes, streams, verdict, baseline_seq=baseline_seq)
    return figures(scenario, run, verdict, reaches, saves=saves, quiet=quiet, fault=(fault_start, fault_end))


def epochs(scenario: Scenario, old: dict[str, list[Event]]) -> checker.EpochOf | None:
    """Which history an id belongs to, when Redis was emptied: the old one (0) or the new (1)."""
    if scenario.resyncs != LOST_HISTORY:
        return None
    if scenario.ids_ahead:
        return lambda tenant, event_id: 0 if event_key(event_id)[0] >= FAR_MS else 1
    last = {t: max(event_key(e.event_id) for e in events) for t, events in old.items() if events}
    return lambda tenant, event_id: 0 if tenant in last and event_key(event_id) <= last[tenant] else 1


def figures(
    scenario: Scenario,
    run: Run,
    verdict: checker.Verdict,
    reaches: list[timeline.Reach],
    *,
    saves: int,
    quiet: bool,
    fault: tuple[float, float],
) -> dict:
    v, c = verdict.violations, verdict.counts
    latency = timeline.latency_figures(reaches)
    nodes: dict[str, dict] = {}
    for node in run.nodes:
        rows = [r for r in run.samples if r["node"] == node.name]
        lags = [r["lag_s"] for r in rows if "lag_s" in r]
        nodes[node.name] = {
            "samples": len(rows),
            "readyz": {str(k): sum(1 for r in rows if r.get("readyz") == k) for k in (200, 503, "degraded")},
            "unanswered": sum(1 for r in rows if "error" in r),
            "source_down_samples": sum(1 for r in rows if r.get("up") == 0.0),
            "lag_max_s": max(lags) if lags else None,
            "lag_p50_s": timeline.percentile(lags, 0.5),
            "readyz_ms_max": max((r["readyz_ms"] for r in rows if "readyz_ms" in r), default=None),
            "reasons": sorted({reason for r in rows for reason in r.get("reasons", ())}),
        }
    return {
        "scenario": scenario.name,
        "ok": verdict.ok,
        "saves": saves,
        "writes": c["writes"],
        "events": c["events"],
        "deliveries": c["deliveries"],
        "duplicates": v["duplicate_delivery"] + v["duplicate_event"],
        "rollbacks": v["rollback"],
        "silent_losses": v["missed"] + v["lost_change"] + v["behind_at_end"],
        "restated_in_new_epoch": c["restated_in_new_epoch"],
        "resyncs": dict(verdict.resyncs),
        "unexpected_resyncs": v["unexpected_resync"],
        "save_to_client": latency,
        "catch_up_s": timeline.catch_up(reaches, fault[1]),
        "fault_s": [round(fault[0] - run.t0, 2), round(fault[1] - run.t0, 2)],
        "quiesced": quiet,
        "closes": run.fleet.sink.closes,
        "nodes": nodes,
        "proxies": {name: {"accepted": p.accepted, "resets": p.resets} for name, p in run.proxies.items()},
        "incidents": run.incidents,
        "verdict": verdict.as_dict(),
        "summary": verdict.summary(),
        "samples": run.samples,
    }


# -- the report ---------------------------------------------------------------------------------------


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1000 * seconds:.0f}"


def render(results: list[dict]) -> str:
    lines = [
        "| scenario | saves | events | deliveries | duplicates | rollbacks | losses | Resyncs (unexpected) "
        "| save to client p50 / p99 / max ms | caught up after the fault | publish lag max a / b s "
        "| /readyz a, b (200 / 503 / degraded samples) | verdict |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lat, nodes = r["save_to_client"], r["nodes"]
        resyncs = ", ".join(f"{k} {n}" for k, n in sorted(r["resyncs"].items())) or "0"
        lag = " / ".join("-" if nodes[n]["lag_max_s"] is None else f"{nodes[n]['lag_max_s']:.2f}" for n in ("a", "b"))
        ready = ", ".join("/".join(str(nodes[n]["readyz"][k]) for k in ("200", "503", "degraded")) for n in ("a", "b"))
        caught = "never" if r["catch_up_s"] is None else f"{r['catch_up_s']:.2f} s"
        lines.append(
            f"| {r['scenario']} | {r['saves']} | {r['events']} | {r['deliveries']} | {r['duplicates']} "
            f"| {r['rollbacks']} | {r['silent_losses']} | {resyncs} ({r['unexpected_resyncs']}) "
            f"| {_ms(lat['p50_s'])} / {_ms(lat['p99_s'])} / {_ms(lat['max_s'])} | {caught} | {lag} "
            f"| {ready} | {'PASS' if r['ok'] else 'FAIL'} |"
        )
    for r in results:
        lines += [
            "",
            f"{r['scenario']}: the fault from {r['fault_s'][0]:g} to {r['fault_s'][1]:g} s; each node's "
            f"publish lag (s) and /readyz every {OVER_TIME_EVERY:g} s:",
        ]
        lines += [f"  {node}: {over_time(r['samples'], node)}" for node in ("a", "b")]
        if not r["ok"] or r["restated_in_new_epoch"]:
            lines.append(r["summary"])
    return "\n".join(lines)


OVER_TIME_EVERY = 5.0


def over_time(samples: list[dict], node: str) -> str:
    """``t: lag readyz`` of the first sample of every OVER_TIME_EVERY seconds."""
    shown, next_at = [], 0.0
    for row in samples:
        if row["node"] != node or row["t"] < next_at:
            continue
        next_at = (row["t"] // OVER_TIME_EVERY + 1) * OVER_TIME_EVERY
        state = row.get("error") or {200: "ready", 503: "NOT READY"}.get(row.get("readyz"), row.get("readyz"))
        lag = "-" if row.get("lag_s") is None else f"{row['lag_s']:.1f}"
        shown.append(f"{row['t']:.0f}: {lag} {state}")
    return ", ".join(shown)


# -- the program ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    p.add_argument(
        "--scenario",
        action="append",
        default=[],
        help=f"scenarios to run (repeatable, comma-separated): {', '.join(SCENARIOS)} (default all)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="the tests' sizes: 20 clients per node, 3 s before and 5 s after each fault, faults of 6 to 10 s",
    )
    p.add_argument("--clients-per-node", type=int, default=None, help="WebSocket clients per node (default 100)")
    p.add_argument("--tenants", type=int, default=10, help="tenants (default 10)")
    p.add_argument("--files-per-tenant", type=int, default=3, help="configuration files per tenant (default 3)")
    p.add_argument("--saves-per-s", type=float, default=5.0, help="atomic saves per second (default 5)")
    p.add_argument(
        "--delete-share",
        type=float,
        default=0.0,
        help="share of saves that delete the file (or create it again) (default 0)",
    )
    p.add_argument("--before", type=float, default=None, help="seconds of load before the fault (default 5)")
    p.add_argument("--after", type=float, default=None, help="seconds of load after the fault (default 10)")
    p.add_argument("--hang-s", type=float, default=None, help="hang: seconds Redis stays stopped (default 20)")
    p.add_argument("--cut-s", type=float, default=None, help="cut-*: seconds node b is cut off (default 15)")
    p.add_argument("--slow-s", type=float, default=None, help="slow: seconds the links stay slow (default 30)")
    p.add_argument("--slow-delay", default="0.1,0.3", help="slow: seconds per chunk, LOW,HIGH (default 0.1,0.3)")
    p.add_argument("--redis-down", type=float, default=2.0, help="restart-empty: seconds Redis stays down (default 2)")
    p.add_argument(
        "--quiesce-timeout",
        type=float,
        default=60.0,
        help="seconds allowed at the end for every client to catch up (default 60)",
    )
    p.add_argument("--debounce-ms", type=int, default=None, help="the nodes' --debounce-ms (default: theirs, 50)")
    p.add_argument("--heartbeat", type=float, default=5.0, help="the nodes' ping interval (default 5)")
    p.add_argument("--concurrency", type=int, default=50, help="handshakes in flight (default 50)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: random, printed)")
    p.add_argument("--redis-server", default="redis-server", help="the redis-server program")
    p.add_argument("--json", default="", help="write every scenario's figures, samples and verdict here")
    p.add_argument("--keep-logs", action="store_true", help="keep the nodes', Redis' and the writer's logs")
    args = p.parse_args(argv)
    quick = args.quick
    for name, full, short in (
        ("clients_per_node", 100, 20),
        ("before", 5.0, 3.0),
        ("after", 10.0, 5.0),
        ("hang_s", 20.0, 8.0),
        ("cut_s", 15.0, 6.0),
        ("slow_s", 30.0, 10.0),
    ):
        if getattr(args, name) is None:
            setattr(args, name, short if quick else full)
    names = [n for value in args.scenario for n in value.split(",") if n] or list(SCENARIOS)
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenario(s) {', '.join(unknown)}; choose among {', '.join(SCENARIOS)}")
    args.scenario = names
    try:
        low, high = (float(x) for x in args.slow_delay.split(","))
    except ValueError:
        p.error(f"--slow-delay wants LOW,HIGH in seconds, not {args.slow_delay!r}")
    if not 0 <= low <= high:
        p.error("--slow-delay wants 0 <= LOW <= HIGH")
    args.slow_delay = (low, high)
    if args.clients_per_node * 2 < args.tenants or args.tenants < 1 or args.files_per_tenant < 1:
        p.error("need at least one client per tenant and one file per tenant")
    if args.saves_per_s <= 0:
        p.error("--saves-per-s must be positive")
    if args.seed is None:
        args.seed = random.randrange(1 << 30)
    return args


async def run_all(args: argparse.Namespace, out: dict) -> list[dict]:
    results = []
    for name in args.scenario:
        res = Resources(keep_logs=args.keep_logs)
        log(f"{name}: starting (workdir {res.dir})")
        began = perf_counter()
        try:
            result = await run_scenario(SCENARIOS[name], args, res)
        finally:
            res.cleanup()
        result["workdir"] = str(res.dir)
        result["took_s"] = round(perf_counter() - began, 1)
        log(f"{name}: {'PASS' if result['ok'] else 'FAIL'} in {result['took_s']:.0f} s")
        results.append(result)
        out["scenarios"] = results
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    program = shutil.which(args.redis_server)
    if program is None:
        print(f"faults: error: {args.redis_server} not found (apt-get install redis-server)", file=sys.stderr)
        return 2
    args.redis_server = program
    raise_nofile()
    # The nodes import tornado_cfgpush as this process would (PYTHONPATH, then the installed one):
    # say which, since an editable install elsewhere would be tested instead of this checkout.
    server = importlib.util.find_spec("tornado_cfgpush")
    origin = str(Path(server.origin).parent.parent) if server and server.origin else "not found"
    out: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "args": vars(args), "server": origin}
    log(f"scenarios {', '.join(args.scenario)}; seed {args.seed}; the server's code from {origin}")
    try:
        coro = interruptible(run_all(args, out))
        try:
            import uvloop
        except ImportError:
            results = asyncio.run(coro)
        else:
            results = uvloop.run(coro)
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("faults: interrupted; stopping every process it started", file=sys.stderr)
        return 2
    except Exception:
        traceback.print_exc()
        print("faults: error: a scenario did not complete (its logs are kept with --keep-logs)", file=sys.stderr)
        return 2
    print(render(results))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2, default=str) + "\n")
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

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
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench import checker, targets
from bench.checker import Event
from bench.cluster import Fleet, Folder, Node, RedisProc, interruptible, quiesce, stacks, start_node
from bench.loadgen import perf_counter, raise_nofile
from bench.procs import Resources
from bench.targets import Options
from bench.writer import Writer


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
        help="seconds before a path is written again (default 0: any time)",
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


# -- memory ----------------------------------------------------------------------------------------


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
        quiet = await quiesce(fleet, redis, tenants, args.quiesce_timeout, log)
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

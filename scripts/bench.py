#!/usr/bin/env python3
"""cfgpush's benchmark suite (issue #7): cfgpush against three baselines, one invocation.

Every server runs as its own process pinned to core 0; this process, the load generator (raw
asyncio clients, ``bench/loadgen.py``), is pinned to core 1. Scenarios:

* fanout   N clients of one tenant, M back-to-back events: deliveries/s, server CPU per delivery
* latency  events paced apart: per-delivery and last-client p50/p99
* memory   RSS per idle connection at 10 000 connections (every server)
* idle     cfgpush's CPU at 10 000 idle connections with its 5 s heartbeat
* e2e      a file saved in the config folder -> every client's receipt (cfgpush, filesystem source)
* storm    10 000 clients of a Redis-backed node that restarts: reconnect and catch-up time
* scale    ready time and RSS at 10 000, 50 000 and 100 000 files (5 KB of JSON, 10 per tenant)
           against hashing the tree alone and an empty tree; memory per idle tenant at 10 000
* burst    10 000 files written at once (distinct, then identical contents) with 1 000 clients
           over 100 tenants: last write to last delivery, each event once, the loop's lag; and a
           50 MB file rewritten beside another tenant's small save (issue #12)
* herd     5 000 clients of one tenant, a 20 KB JSON file changes one value: each GETs it from a
           plain Tornado StaticFileHandler, or from cfgpush's files API (If-None-Match), or
           applies the event's patch: time to the last client holding it, server CPU, bytes
           (issue #14)

Servers: ``seed`` (the original design's Tornado handler), ``websockets`` (the library's
server with ``broadcast()``), ``floor`` (a bare asyncio server writing one prepared frame to
every transport) and ``cfgpush`` (``cfgpush-serve`` itself). fanout and latency run every server
interleaved round by round; the table gives medians, ratios and each target met or NOT met.
Timings are measured, never asserted.

    python scripts/bench.py                      # everything, defaults (about 4 minutes)
    python scripts/bench.py --scenario fanout,latency --clients 2000 --events 20 --rounds 3
    python scripts/bench.py --smoke              # about 20 s: tiny sizes, for the tests
    python scripts/bench.py --scenario fanout,latency --chart bench.png --markdown
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench import burst, herd, report, scale, scenarios, targets
from bench.loadgen import raise_nofile
from bench.procs import Resources, pin_self

SCENARIOS = ("fanout", "latency", "memory", "idle", "e2e", "storm", "burst", "scale", "herd")


def _list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _ints(text: str) -> list[int]:
    return [int(part) for part in _list(text)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    p.add_argument(
        "--scenario",
        default="all",
        help=f"comma-separated: {','.join(SCENARIOS)}; all (default); none (with --chart: the chart only)",
    )
    p.add_argument(
        "--servers",
        default=",".join(targets.ALL_SERVERS),
        help="servers of fanout, latency and memory (default: seed,websockets,floor,cfgpush)",
    )
    g = p.add_argument_group("fanout and latency")
    g.add_argument("--clients", type=int, default=2000, help="clients of one tenant (default 2000)")
    g.add_argument("--events", type=int, default=20, help="back-to-back events of fanout (default 20)")
    g.add_argument("--rounds", type=int, default=3, help="interleaved rounds; the median is reported (default 3)")
    g.add_argument("--latency-events", type=int, default=20, help="paced events of latency (default 20)")
    g.add_argument("--interval", type=float, default=0.5, help="seconds between latency events (default 0.5)")
    g = p.add_argument_group("memory and idle")
    g.add_argument("--connections", type=int, default=10_000, help="idle connections (default 10000)")
    g.add_argument("--idle-window", type=float, default=20.0, help="seconds of cfgpush CPU measured (default 20)")
    g.add_argument("--settle", type=float, default=2.0, help="seconds after connecting before RSS is read")
    g = p.add_argument_group("e2e")
    g.add_argument(
        "--e2e-clients",
        default="100,2000",
        help="clients, comma-separated: each a run (default 100,2000; 100 measures the save-to-event "
        "path, 2000 adds the fan-out, which latency measures on its own)",
    )
    g.add_argument("--saves", type=int, default=20, help="measured saves (default 20)")
    g.add_argument("--save-interval", type=float, default=0.5, help="seconds between saves (default 0.5)")
    g.add_argument(
        "--write",
        default="atomic,plain",
        help="how the file is saved, comma-separated: atomic (a temporary file renamed over it), "
        "plain (written in place); each a run (default both)",
    )
    g.add_argument("--debounce-ms", type=int, default=None, help="cfgpush's --debounce-ms (default: its own, 50)")
    g = p.add_argument_group("storm")
    g.add_argument("--storm-clients", type=int, default=10_000, help="clients of the restarted node (default 10000)")
    g.add_argument("--storm-before", type=int, default=3, help="events before the restart (default 3)")
    g.add_argument("--storm-down", type=int, default=5, help="events published while the node is down (default 5)")
    g.add_argument("--storm-during", type=int, default=5, help="events published during the reconnect (default 5)")
    g.add_argument("--storm-timeout", type=float, default=120.0, help="give up after this many seconds")
    g.add_argument("--redis-server", default="redis-server", help="the redis-server program")
    g = p.add_argument_group("burst")
    g.add_argument("--burst-files", type=int, default=10_000, help="files written at once (default 10000)")
    g.add_argument("--burst-clients", type=int, default=1000, help="clients, spread over the tenants (default 1000)")
    g.add_argument("--burst-tenants", type=int, default=100, help="tenants the files are spread over (default 100)")
    g.add_argument(
        "--burst-variants",
        type=_list,
        default=list(burst.VARIANTS),
        help="distinct (every file its own content), identical ({} in every file); default both",
    )
    g.add_argument(
        "--burst-timeout",
        type=float,
        default=120.0,
        help="give up on a burst's deliveries after this many seconds (default 120)",
    )
    g.add_argument("--big-mb", type=float, default=50.0, help="the large file's size in MB (default 50)")
    g.add_argument("--big-rounds", type=int, default=5, help="rounds of the large-file case (default 5; 0: skip)")
    g = p.add_argument_group("herd")
    g.add_argument("--herd-clients", type=int, default=5000, help="clients of the tenant (default 5000)")
    g.add_argument("--herd-kb", type=float, default=20.0, help="size of the changed JSON file in KB (default 20)")
    g = p.add_argument_group("servers and generator")
    g.add_argument(
        "--gen-loop",
        choices=("auto", "asyncio", "uvloop"),
        default="auto",
        help="the generator's loop; auto (default): uvloop when installed, since on asyncio's own "
        "loop the generator saturates its core before the fastest servers do",
    )
    g.add_argument(
        "--server-loop",
        choices=("asyncio", "uvloop"),
        default="asyncio",
        help="every server's loop (cfgpush: --loop uvloop)",
    )
    g.add_argument(
        "--ws-compression",
        action="store_true",
        help="also run cfgpush with --ws-compression (permessage-deflate), offered by the clients",
    )
    g.add_argument(
        "--tls",
        action="store_true",
        help="also run cfgpush with --certfile/--keyfile (a private CA's certificate), its clients on "
        "wss:// (fanout and latency: beside plain cfgpush, as cfgpush+tls; storm: run again over wss://)",
    )
    g.add_argument(
        "--workers",
        type=int,
        default=0,
        help="also run cfgpush with --workers N (cfgpush+Nw, on every core), and on a private Redis as one "
        "process (cfgpush+redis) and with --workers N (cfgpush+Nw+redis) in fanout and latency; storm: run "
        "again with the restarted node as N workers",
    )
    g.add_argument("--heartbeat", type=float, default=5.0, help="servers' ping interval (default 5)")
    g.add_argument("--concurrency", type=int, default=100, help="handshakes in flight (default 100)")
    g = p.add_argument_group("output")
    g.add_argument("--json", default="bench-results.json", help="write the results here (default bench-results.json)")
    g.add_argument("--markdown", action="store_true", help="also print the results as Markdown (for the README)")
    g.add_argument(
        "--chart",
        default="",
        help="PNG: deliveries/s and last-client p99 against clients (and <name>-burst.png: the bursts' "
        "deliveries over time; <name>-scale.png: ready time and RSS against files; <name>-herd.png: the herd)",
    )
    g.add_argument("--chart-clients", type=_ints, default=[250, 500, 1000, 2000, 4000])
    g.add_argument("--chart-latency-events", type=int, default=10)
    g.add_argument("--chart-interval", type=float, default=0.2)
    g.add_argument("--keep-logs", action="store_true", help="keep the servers' logs (their folder is printed)")
    g = p.add_argument_group("scale")
    g.add_argument("--scale-files", type=_ints, default=[10_000, 50_000, 100_000], help="tree sizes, in files")
    g.add_argument("--scale-file-bytes", type=int, default=5000, help="bytes of JSON per file")
    g.add_argument("--scale-idle-tenants", type=int, default=10_000, help="tenants of the idle-tenant memory figure")
    g.add_argument("--scale-timeout", type=float, default=300.0, help="seconds a start may take")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="about 20 s: tiny sizes, one round, every scenario; for tests/test_bench_smoke.py",
    )
    args = p.parse_args(argv)
    args.scenarios = (
        list(SCENARIOS) if args.scenario == "all" else [] if args.scenario == "none" else _list(args.scenario)
    )
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenario {', '.join(sorted(unknown))} (known: {', '.join(SCENARIOS)}, all)")
    args.server_list = _list(args.servers)
    unknown = set(args.server_list) - set(targets.ALL_SERVERS)
    if unknown:
        p.error(f"unknown server {', '.join(sorted(unknown))} (known: {', '.join(targets.ALL_SERVERS)})")
    if args.smoke:
        args.clients, args.events, args.rounds = 20, 3, 1
        args.latency_events, args.interval = 3, 0.05
        args.connections, args.idle_window, args.settle = 40, 1.0, 0.2
        args.saves, args.save_interval, args.e2e_clients = 3, 0.2, "20"
        args.storm_clients, args.storm_before, args.storm_down, args.storm_during = 20, 1, 2, 2
        args.storm_timeout = 60.0
        args.chart_clients, args.chart_latency_events, args.chart_interval = [10, 20], 2, 0.05
        args.burst_files, args.burst_clients, args.burst_tenants, args.burst_timeout = 200, 20, 4, 60.0
        args.big_mb, args.big_rounds = 1.0, 2
        args.scale_files, args.scale_idle_tenants, args.scale_timeout = [100, 300], 200, 60.0
        args.herd_clients, args.herd_kb = 20, 4.0
    if args.gen_loop == "auto":
        try:
            import uvloop  # noqa: F401

            args.gen_loop = "uvloop"
        except ImportError:
            args.gen_loop = "asyncio"
    args.storm_before = max(1, args.storm_before)
    unknown = set(args.burst_variants) - set(burst.VARIANTS)
    if unknown:
        p.error(f"unknown burst variant {', '.join(sorted(unknown))} (known: {', '.join(burst.VARIANTS)})")
    return args


def preflight(args: argparse.Namespace) -> str | None:
    """What cannot work, said before anything starts (None: all set)."""
    wanted = []
    if args.ws_compression:
        wanted.append("--ws-compression")
    if args.tls:
        wanted.append("--certfile")
    if args.workers > 1:
        wanted.append("--workers")
    if args.server_loop != "asyncio":
        wanted.append("--loop")
    uses_cfgpush = "cfgpush" in args.server_list or bool(
        {"idle", "e2e", "storm", "burst", "scale", "herd"} & set(args.scenarios)
    )
    if wanted and uses_cfgpush:
        flags = targets.cfgpush_flags()
        missing = [f for f in wanted if f not in flags]
        if missing:
            return f"this cfgpush-serve has no {' or '.join(missing)} flag (not landed yet?)"
    for loop in {args.gen_loop, args.server_loop} - {"asyncio"}:
        try:
            __import__(loop)
        except ImportError:
            return f"{loop} is not installed (pip install {loop})"
    return None


async def run(args: argparse.Namespace, res: Resources, results: dict) -> None:
    opts = targets.Options(server_loop=args.server_loop, heartbeat=args.heartbeat, debounce_ms=args.debounce_ms)
    servers = list(args.server_list)
    if args.ws_compression and "cfgpush" in servers:
        servers.append(targets.DEFLATE)
    if args.tls and "cfgpush" in servers:
        servers.append(targets.TLS)
    if args.workers > 1 and "cfgpush" in servers:
        servers += [targets.workers_name(args.workers), targets.REDIS_ONE, targets.workers_name(args.workers, True)]
    chosen = set(args.scenarios)
    errors = results["errors"]

    def note(failures: list[str]) -> None:
        for line in failures:
            errors[line.split(":", 1)[0]] = line.split(":", 1)[1].strip()

    def keep(key: str, found: dict | None) -> None:
        """A scenario's results under ``key``, its failures among the run's errors."""
        if found:
            note(found.pop("failures"))
            results[key] = found

    async def attempt(name: str, body):
        try:
            return await body
        except Exception as exc:  # one scenario failing still lets the others run
            traceback.print_exc()
            errors[name] = f"{type(exc).__name__}: {exc}"
            return None

    if chosen & {"fanout", "latency"}:
        found = await attempt(
            "fanout/latency",
            scenarios.fanout_latency(
                res,
                opts,
                servers,
                clients=args.clients,
                events=args.events,
                latency_events=args.latency_events,
                interval=args.interval,
                rounds=args.rounds,
                do_fanout="fanout" in chosen,
                do_latency="latency" in chosen,
                concurrency=args.concurrency,
            ),
        )
        if found:
            note(found.pop("failures"))
            for kind in ("fanout", "latency"):
                if kind in chosen:
                    results[kind] = found
    if chosen & {"memory", "idle"}:
        found = await attempt(
            "memory/idle",
            scenarios.memory_idle(
                res,
                opts,
                servers,
                connections=args.connections,
                warm=min(200, args.connections),
                settle=args.settle,
                idle_window=args.idle_window,
                do_memory="memory" in chosen,
                do_idle="idle" in chosen,
                concurrency=args.concurrency,
            ),
        )
        if found:
            note(found.pop("failures"))
            if "idle" in found:
                found["idle"]["heartbeat_interval_s"] = args.heartbeat
            results.update(found)
    if "e2e" in chosen:
        variants = []
        for clients in [int(c) for c in str(args.e2e_clients).split(",") if c.strip()]:
            for write in [w.strip() for w in args.write.split(",") if w.strip()]:
                found = await attempt(
                    "e2e",
                    scenarios.e2e(
                        res,
                        opts,
                        clients=clients,
                        saves=args.saves,
                        interval=args.save_interval,
                        write=write,
                        concurrency=args.concurrency,
                    ),
                )
                if found:
                    variants.append(found)
        if variants:
            results["e2e"] = variants[0]  # the first run (100 clients, atomic saves), as before
            results["e2e_variants"] = variants
    if "storm" in chosen:
        program = shutil.which(args.redis_server)
        if program is None:
            errors["storm"] = f"{args.redis_server} not found: the storm needs a private Redis"
        else:
            storm_args = {
                "clients": args.storm_clients,
                "before": args.storm_before,
                "down": args.storm_down,
                "during": args.storm_during,
                "concurrency": args.concurrency,
                "redis_program": program,
                "timeout": args.storm_timeout,
            }
            # The plain storm, then again over wss:// (--tls) and with workers (--workers N).
            storms: list[tuple[str, dict]] = [("storm", {})]
            if args.tls:
                storms.append(("storm_tls", {"tls": True}))
            if args.workers > 1:
                storms.append(("storm_workers", {"workers": args.workers}))
            for key, variant in storms:
                found = await attempt(key, scenarios.storm(res, opts, **storm_args, **variant))
                if found:
                    results[key] = found
    if "burst" in chosen:
        found = await attempt(
            "burst",
            burst.run(
                res,
                opts,
                files=args.burst_files,
                clients=args.burst_clients,
                tenants=args.burst_tenants,
                variants=args.burst_variants,
                big_bytes=int(args.big_mb * 1e6),
                big_rounds=args.big_rounds,
                concurrency=args.concurrency,
                timeout=args.burst_timeout,
            ),
        )
        keep("burst", found)
    if "scale" in chosen:
        found = await attempt(
            "scale",
            scale.run(
                res,
                opts,
                sizes=args.scale_files,
                file_bytes=args.scale_file_bytes,
                idle_tenants=args.scale_idle_tenants,
                timeout=args.scale_timeout,
            ),
        )
        keep("scale", found)
    if "herd" in chosen:
        found = await attempt(
            "herd",
            herd.run(
                res,
                opts,
                clients=args.herd_clients,
                size=int(args.herd_kb * 1000),
                concurrency=args.concurrency,
                timeout=20.0 if args.smoke else 120.0,
            ),
        )
        if found:
            results["herd"] = found
    if args.chart:
        found = await attempt(
            "chart",
            scenarios.sweep(
                res,
                opts,
                servers,
                args.chart_clients,
                events=args.events,
                latency_events=args.chart_latency_events,
                interval=args.chart_interval,
                concurrency=args.concurrency,
            ),
        )
        if found:
            results["chart"] = found


async def interruptible(body, results: dict) -> None:
    """Ctrl-C and SIGTERM cancel the run (uvloop does not turn SIGINT into KeyboardInterrupt
    reliably): every scenario's ``finally`` stops its servers, then ``main`` cleans up."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, task.cancel)
    try:
        await body
    except asyncio.CancelledError:
        results["errors"]["interrupted"] = "stopped by Ctrl-C or SIGTERM"
        print("bench: interrupted; stopping every process it started", file=sys.stderr)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = preflight(args)
    if problem:
        print(f"bench: error: {problem}", file=sys.stderr)
        return 2
    # SIGTERM ends the run like Ctrl-C: the finally below stops every process it started.
    signal.signal(signal.SIGTERM, lambda signum, frame: (_ for _ in ()).throw(KeyboardInterrupt()))
    pinned = pin_self()
    nofile = raise_nofile()
    machine = report.machine()
    results: dict = {
        "machine": machine,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "options": {
            "server_loop": args.server_loop,
            "gen_loop": args.gen_loop,
            "pinned": pinned,
            "nofile": nofile,
            "heartbeat_s": args.heartbeat,
            "concurrency": args.concurrency,
            "ws_compression": args.ws_compression,
            "smoke": args.smoke,
        },
        "args": {k: v for k, v in vars(args).items() if k not in ("scenarios", "server_list")},
        "errors": {},
    }
    needed = max(args.connections, args.storm_clients, args.clients, 2 * args.herd_clients) + 200
    if nofile < needed:
        report.warn(f"RLIMIT_NOFILE is {nofile}, under the {needed} sockets this run may open")
    res = Resources(keep_logs=args.keep_logs)
    results["workdir"] = str(res.dir)  # removed at the end unless --keep-logs
    started = time.monotonic()
    try:
        coro = interruptible(run(args, res, results), results)
        if args.gen_loop == "uvloop":
            import uvloop

            uvloop.run(coro)
        else:
            asyncio.run(coro)
    except KeyboardInterrupt:
        results["errors"]["interrupted"] = "stopped by Ctrl-C or SIGTERM"
        print("bench: interrupted; stopping every process it started", file=sys.stderr)
    finally:
        res.cleanup()
    results["duration_s"] = time.monotonic() - started
    results["targets"] = report.targets(results)
    if args.chart and "chart" in results:
        report.chart(results["chart"], args.chart, report.describe_machine(machine))
        print(f"bench: chart written to {args.chart}", file=sys.stderr)
    if args.chart and any(b.get("timeline") for b in (results.get("burst") or {}).get("variants", {}).values()):
        stem, dot, ext = args.chart.rpartition(".")
        burst_png = f"{stem}-burst.{ext}" if dot else f"{args.chart}-burst.png"
        report.burst_chart(results["burst"], burst_png, report.describe_machine(machine))
        print(f"bench: burst chart written to {burst_png}", file=sys.stderr)
    if args.chart and (results.get("scale") or {}).get("sizes"):
        stem, dot, ext = args.chart.rpartition(".")
        scale_png = f"{stem}-scale.{ext}" if dot else f"{args.chart}-scale.png"
        report.scale_chart(results["scale"], scale_png, report.describe_machine(machine))
        print(f"bench: scale chart written to {scale_png}", file=sys.stderr)
    if args.chart and (results.get("herd") or {}).get("modes"):
        stem, dot, ext = args.chart.rpartition(".")
        herd_png = f"{stem}-herd.{ext}" if dot else f"{args.chart}-herd.png"
        report.herd_chart(results["herd"], herd_png, report.describe_machine(machine))
        print(f"bench: herd chart written to {herd_png}", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
    print(report.render(results))
    if args.markdown:
        print(report.render(results, markdown=True))
    print(f"bench: {results['duration_s']:.0f} s; results in {args.json}" if args.json else "", file=sys.stderr)
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())

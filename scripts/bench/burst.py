"""The burst scenario (issue #12): a deployment's ``git checkout`` lands in the config folder.

* ``burst``: ``files`` new files at once, in nested folders spread over ``tenants`` tenants,
  written at disk speed by a process of their own (``writer.py``, on the generator's core),
  while ``clients`` clients (the same number per tenant) are connected to one
  ``cfgpush-serve`` watching the folder. Two variants: ``distinct`` contents, and
  ``identical`` ones (``{}`` in every file, as a template copied per tenant). Figures: from
  the last write to the last delivery; every client's events counted per path against the
  files of its tenant (exactly once); the event loop's lag over the burst, from the server's
  histogram (``lag.py``) when it has one and from the outside probe, both when both exist.
* ``large_file``: one tenant's file of ``size`` bytes rewritten, then another tenant's small
  file saved right after: how much later than a save alone that other tenant's clients get
  their event.

Nothing here asserts a timing; a burst that is not delivered within ``timeout`` is reported
with what did arrive.
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
from typing import Any

from . import lag, targets
from .loadgen import Client, LoadGen, Sink, perf_counter
from .procs import GENERATOR_CPU, Resources
from .scenarios import failure, log
from .targets import HOST, Options
from .writer import Writer

VARIANTS = ("distinct", "identical")
PROBE_TENANT = "lagprobe"  # the probe's tenant has no files: it receives only Pongs
# The probe pings every 10 ms; the server's default allows 20 messages a second, and a loop
# blocked for seconds reads all the pings queued meanwhile within one second. /metrics (the
# lag histogram) needs the admin token unless it is public.
SERVER_FLAGS = ("--max-client-rate", "1000000", "--metrics-public")
PATH_RE = re.compile(rb'"path":\s*"([^"]*)"')
TENANT_RE = re.compile(rb'"tenant_id":\s*"([^"]*)"')
TIMELINE_POINTS = 200


def tenant_name(k: int) -> str:
    return f"t{k:03d}"


def burst_files(files: int, tenants: int, variant: str) -> list[tuple[str, str, str]]:
    """``(path, content, "plain")`` per file: file ``i`` belongs to tenant ``i % tenants``, in
    ``<tenant>/svc<a>/env<b>/``, as a configuration repository's tree is laid out."""
    out = []
    for i in range(files):
        k = i // tenants
        tenant = tenant_name(i % tenants)
        content = "{}\n" if variant == "identical" else json.dumps({"file": i, "limits": {"rate": i % 97}}) + "\n"
        out.append((f"{tenant}/svc{k % 10}/env{k % 3}/f{i:05d}.json", content, "plain"))
    return out


class BurstSink(Sink):
    """Per client, how often each path arrived; every receipt time; Resyncs; strays."""

    def __init__(self, expected: int):
        self.expected = expected  # distinct (client, path) pairs
        self.seen: dict[Client, dict[bytes, int]] = {}
        self.unique = 0
        self.duplicates = 0
        self.crossed = 0  # an event of another tenant than the client's
        self.resyncs = 0
        self.closes: dict[str, int] = {}  # by the server's close code ("none": no close frame)
        self.times: list[float] = []
        self.done = asyncio.get_running_loop().create_future()

    def lost(self, client: Client) -> None:
        key = str(client.close_code) if client.close_code is not None else "none"
        self.closes[key] = self.closes.get(key, 0) + 1

    def change(self, client: Client, payload: bytes, now: float) -> None:
        self.times.append(now)
        tenant = TENANT_RE.search(payload)
        if tenant is None or tenant.group(1).decode() != client.gen.tenant:
            self.crossed += 1
            return
        path = PATH_RE.search(payload).group(1)
        seen = self.seen.get(client)
        if seen is None:
            seen = self.seen[client] = {}
        n = seen.get(path, 0)
        seen[path] = n + 1
        if n:
            self.duplicates += 1
            return
        self.unique += 1
        if self.unique >= self.expected and not self.done.done():
            self.done.set_result(now)

    def other(self, client: Client, payload: bytes, now: float) -> None:
        if payload.startswith(b'{"Resync"'):
            self.resyncs += 1


async def _scrape_lag(target: targets.Target, timeout: float = 60.0) -> dict[float, float] | None:
    try:
        status, body = await target.publisher.get("/metrics", timeout)
    except (TimeoutError, OSError, ConnectionError):
        target.publisher.close()
        return None
    return lag.histogram(body.decode("utf-8", "replace")) if status == 200 else None


def _timeline(times: list[float], start: float, total: int) -> list[list[float]]:
    """``[seconds after the first write, fraction of the expected deliveries]``, at most
    ``TIMELINE_POINTS`` points: the chart's curve."""
    if not times or total <= 0:
        return []
    times = sorted(times)
    step = max(1, len(times) // TIMELINE_POINTS)
    points = [[round(times[i] - start, 4), round((i + 1) / total, 5)] for i in range(step - 1, len(times), step)]
    if points[-1][1] != round(len(times) / total, 5):
        points.append([round(times[-1] - start, 4), round(len(times) / total, 5)])
    return points


async def one_burst(
    res: Resources,
    opts: Options,
    variant: str,
    *,
    files: int,
    clients: int,
    tenants: int,
    concurrency: int,
    timeout: float,
) -> dict:
    config_dir = res.mkdir(f"burst-{variant}")
    names = [tenant_name(k) for k in range(tenants)]
    for name in names:  # the repository as deployed before the checkout
        (config_dir / name).mkdir(exist_ok=True)
        (config_dir / name / "base.json").write_text('{"base": true}\n')
    plan = burst_files(files, tenants, variant)
    per_tenant: dict[str, set[bytes]] = {name: set() for name in names}
    for path, _, _ in plan:
        tenant, rel = path.split("/", 1)
        per_tenant[tenant].add(rel.encode())
    per_client = max(1, clients // tenants)
    expected = sum(len(paths) for paths in per_tenant.values()) * per_client
    target = await targets.start("cfgpush", res, opts, config_dir=config_dir, extra=SERVER_FLAGS)
    writer = Writer(res, config_dir, cpu=GENERATOR_CPU)
    probe = lag.Probe(res, HOST, target.ws_port, PROBE_TENANT, cpu=GENERATOR_CPU)
    sink = BurstSink(expected)
    gens: list[LoadGen] = []
    try:
        await writer.start()
        started = perf_counter()
        for name in names:
            gen = LoadGen(HOST, target.ws_port, sink, tenant=name, welcome=True)
            gens.append(gen)
            await gen.connect(per_client, concurrency=concurrency)
        connect_s = perf_counter() - started
        await probe.start()
        await asyncio.sleep(1.0)  # the probe's idle round trips: its baseline
        metric_before = await _scrape_lag(target)
        t_command = perf_counter()
        written = await writer.write(plan)
        first, last = written["first"], written["last"]
        complete = True
        try:
            await asyncio.wait_for(asyncio.shield(sink.done), max(0.0, t_command + timeout - perf_counter()))
        except TimeoutError:
            complete = False
        end = perf_counter()
        in_time = sink.unique
        await asyncio.sleep(0.5)  # a duplicate after the last one would show here
        metric_after = await _scrape_lag(target)
        samples, unanswered, stopped = await probe.stop()
        last_delivery = max(sink.times) if sink.times else None
        window_end = last_delivery if complete else end
        missing = 0
        clients_short = 0
        for gen in gens:
            want = per_tenant[gen.tenant]
            for client in gen.clients:
                got = sink.seen.get(client, {})
                short = len(want - got.keys())
                missing += short
                clients_short += bool(short)
        lost = sum(gen.stats.lost for gen in gens) + sum(gen.stats.server_closes for gen in gens)
        result = {
            "variant": variant,
            "files": files,
            "tenants": tenants,
            "clients": per_client * tenants,
            "expected": expected,
            "delivered": sink.unique,
            "delivered_in_time": in_time,
            "all_received": complete and missing == 0,
            "missing": missing,
            "clients_missing_events": clients_short,
            "duplicates": sink.duplicates,
            "crossed_tenants": sink.crossed,
            "resyncs": sink.resyncs,
            "lost_connections": lost,
            "server_closes": sum(gen.stats.server_closes for gen in gens),
            "closes_by_code": dict(sink.closes),
            "connect_s": connect_s,
            "write_s": last - first,
            "last_write_to_last_delivery_s": (last_delivery - last) if complete and last_delivery else None,
            "first_write_to_last_delivery_s": (last_delivery - first) if complete and last_delivery else None,
            "gave_up_after_s": None if complete else end - first,
            # Counted after the wait too: a burst that took longer than the timeout says how long.
            "last_delivery_after_last_write_s": (last_delivery - last) if last_delivery else None,
            "lag_metric": lag.window(metric_before, metric_after),
            "lag_probe": lag.probe_window(samples, first, window_end, stopped, unanswered),
            "server_alive": target.proc.alive(),
            "timeline": _timeline(sink.times, first, expected),
        }
        probe_fig = result["lag_probe"]
        metric_fig = result["lag_metric"]
        log(
            f"burst  {variant:9} {files} files, {result['clients']} clients: "
            + (
                f"last write -> last delivery {result['last_write_to_last_delivery_s']:.2f} s"
                if complete
                else f"NOT delivered within {timeout:.0f} s ({in_time} were)"
            )
            + f" ({sink.unique}/{expected}, {sink.duplicates} duplicates, {sink.resyncs} resyncs, {lost} connections "
            f"lost or closed by the server {sink.closes}); loop lag "
            + (
                f"metric p99 {lag.describe_bound(metric_fig['p99_le_s'])}, max {lag.describe_bound(metric_fig['max_le_s'])}; "
                if metric_fig
                else "metric absent; "
            )
            + f"probe p99 {_ms(probe_fig['p99_ms'])}, max {_ms(probe_fig['max_ms'])}"
        )
        return result
    finally:
        probe.kill()
        for gen in gens:
            gen.close_all()
        await writer.close()
        targets.stop(target, res)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


class TimedSink(Sink):
    """Per tenant, the receipt times of each client's k-th event."""

    def __init__(self) -> None:
        self.times: dict[tuple[str, int], list[float]] = {}
        self.waiting: dict[tuple[str, int], tuple[int, asyncio.Future]] = {}

    def change(self, client: Client, payload: bytes, now: float) -> None:
        key = (client.gen.tenant, client.count)
        times = self.times.setdefault(key, [])
        times.append(now)
        want = self.waiting.get(key)
        if want is not None and len(times) >= want[0] and not want[1].done():
            want[1].set_result(max(times))

    def waiter(self, tenant: str, k: int, n: int) -> asyncio.Future:
        future = asyncio.get_running_loop().create_future()
        self.waiting[(tenant, k)] = (n, future)
        if len(self.times.get((tenant, k), ())) >= n:
            future.set_result(max(self.times[(tenant, k)]))
        return future


async def large_file(res: Resources, opts: Options, *, size: int, rounds: int, clients: int, concurrency: int) -> dict:
    """Rounds of: tenant ``small``'s file saved alone (normal), then tenant ``big``'s
    ``size``-byte file rewritten in place followed at once by the same small save (loaded).
    The delay is a loaded save's last-client latency minus the median of the normal ones."""
    config_dir = res.mkdir("large-file")
    small, big = "small", "big"
    small_path, big_path = f"{small}/ui.json", f"{big}/assets.bin"
    writer = Writer(res, config_dir, cpu=GENERATOR_CPU)
    await writer.start()
    target = None
    gens: list[LoadGen] = []
    try:
        await writer.write([(small_path, '{"n": 0}\n', "atomic"), (big_path, {"bytes": size}, "plain")])
        target = await targets.start("cfgpush", res, opts, config_dir=config_dir)
        sink = TimedSink()
        for tenant in (small, big):
            gen = LoadGen(HOST, target.ws_port, sink, tenant=tenant, welcome=True)
            gens.append(gen)
            await gen.connect(clients, concurrency=concurrency)
        normal: list[float] = []
        loaded: list[float] = []
        k_small = k_big = 0
        for rnd in range(rounds + 1):  # round 0 warms up, unmeasured
            k_small += 1
            done = sink.waiter(small, k_small, clients)
            answer = await writer.write([(small_path, f'{{"n": {k_small}, "alone": true}}\n', "atomic")])
            got = await asyncio.wait_for(done, 30)
            if rnd:
                normal.append(got - answer["last"])
            await asyncio.sleep(0.3)
            k_small += 1
            k_big += 1
            done = sink.waiter(small, k_small, clients)
            big_done = sink.waiter(big, k_big, clients)
            answer = await writer.write(
                [(big_path, {"bytes": size}, "plain"), (small_path, f'{{"n": {k_small}, "loaded": true}}\n', "atomic")],
                times=True,
            )
            got = await asyncio.wait_for(done, 60)
            await asyncio.wait_for(big_done, 60)
            if rnd:
                loaded.append(got - answer["times"][1])
            await asyncio.sleep(0.3)
        base = statistics.median(normal)
        delays = [x - base for x in loaded]
        result = {
            "bytes": size,
            "rounds": rounds,
            "clients_per_tenant": clients,
            "normal_ms": [round(x * 1000, 2) for x in normal],
            "loaded_ms": [round(x * 1000, 2) for x in loaded],
            "normal_p50_ms": base * 1000,
            "delay_p50_ms": statistics.median(delays) * 1000,
            "delay_max_ms": max(delays) * 1000,
        }
        log(
            f"large  {size / 1e6:.0f} MB file rewritten: the other tenant's event {result['delay_p50_ms']:.1f} ms "
            f"later than normal (median), {result['delay_max_ms']:.1f} ms at most ({rounds} rounds; normal "
            f"{result['normal_p50_ms']:.1f} ms)"
        )
        return result
    finally:
        for gen in gens:
            gen.close_all()
        await writer.close()
        if target is not None:
            targets.stop(target, res)


async def run(
    res: Resources,
    opts: Options,
    *,
    files: int,
    clients: int,
    tenants: int,
    variants: list[str],
    big_bytes: int,
    big_rounds: int,
    concurrency: int,
    timeout: float,
) -> dict[str, Any]:
    out: dict[str, Any] = {"files": files, "clients": clients, "tenants": tenants, "variants": {}, "failures": []}
    for variant in variants:
        try:
            out["variants"][variant] = await one_burst(
                res,
                opts,
                variant,
                files=files,
                clients=clients,
                tenants=tenants,
                concurrency=concurrency,
                timeout=timeout,
            )
        except Exception as exc:  # one variant failing still lets the others run
            out["failures"].append(failure(f"burst {variant}", exc, None))
    if big_rounds > 0:
        try:
            out["large_file"] = await large_file(
                res,
                opts,
                size=big_bytes,
                rounds=big_rounds,
                clients=min(10, max(1, clients // tenants)),
                concurrency=concurrency,
            )
        except Exception as exc:  # one variant failing still lets the others run
            out["failures"].append(failure("large file", exc, None))
    return out

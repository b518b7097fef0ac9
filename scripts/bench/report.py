"""The results as a text table, the targets of issues #7 and #12 (met / NOT met), Markdown, charts.

Nothing here fails on a figure: a target not met is printed as such, never raised.
"""

from __future__ import annotations

import platform
import sys
from collections.abc import Callable
from typing import Any

GEN_SATURATED = 90.0  # % of the generator's core: past it, the generator set the pace


def machine() -> dict:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    from importlib import metadata

    versions = {}
    for name in ("tornado", "websockets", "uvloop", "tornado_cfgpush"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    import os

    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "system": platform.system(),
        **versions,
    }


def describe_machine(m: dict) -> str:
    return (
        f"{m['cpu']}, {m['cores']} cores, Linux {m['kernel']}, Python {m['python']}, "
        f"Tornado {m['tornado']}, websockets {m['websockets']}, uvloop {m['uvloop']}"
    )


def _f(value: Any, fmt: str = ".1f", none: str = "-") -> str:
    if value is None:
        return none
    if isinstance(value, bool):
        return "yes" if value else "NO"
    return format(value, fmt)


def _n(value: float | None) -> str:
    """A large number with thin-space thousands, as the README's tables."""
    return "-" if value is None else f"{value:,.0f}".replace(",", " ")


# -- targets -----------------------------------------------------------------------------------


def _get(results: dict, *path: str) -> Any:
    node: Any = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b <= 0:
        return None
    return a / b


def targets(results: dict) -> list[dict]:
    """Every target of the issue with its figure; ``met`` is None when not measured."""
    out: list[dict] = []

    def add(
        name: str,
        figure: float | None,
        target: str,
        check: Callable[[float], bool],
        unit: str = "x",
        extra: bool = True,
        text: str | None = None,
    ) -> None:
        met = None if figure is None else bool(check(figure) and extra)
        out.append({"name": name, "figure": figure, "unit": unit, "target": target, "met": met, "text": text})

    cpu = lambda name: _get(results, "fanout", "servers", name, "fanout", "median", "server_us_per_delivery")  # noqa: E731
    add(
        "server CPU per delivery, cfgpush / floor",
        _ratio(cpu("cfgpush"), cpu("floor")),
        "<= 1.25x",
        lambda x: x <= 1.25,
    )
    add(
        "server CPU per delivery, websockets / cfgpush",
        _ratio(cpu("websockets"), cpu("cfgpush")),
        ">= 1.15x",
        lambda x: x >= 1.15,
    )
    add("server CPU per delivery, seed / cfgpush", _ratio(cpu("seed"), cpu("cfgpush")), ">= 3.5x", lambda x: x >= 3.5)
    p99 = lambda name: _get(results, "latency", "servers", name, "latency", "median", "last_client_p99_ms")  # noqa: E731
    add("last-client p99 latency, cfgpush / floor", _ratio(p99("cfgpush"), p99("floor")), "<= 1.5x", lambda x: x <= 1.5)
    mem = lambda name: _get(results, "memory", "servers", name, "kb_per_connection")  # noqa: E731
    add("memory per idle connection, cfgpush", mem("cfgpush"), "<= 12 KB", lambda x: x <= 12.0, " KB")
    peers = [p for p in ("seed", "websockets") if mem(p) is not None]
    if mem("cfgpush") is not None and peers:
        below = all(mem("cfgpush") < mem(p) for p in peers)
        worst = min(mem(p) for p in peers)
        add(
            f"memory per idle connection, cfgpush below {' and '.join(peers)} (lowest peer {worst:.2f} KB)",
            mem("cfgpush"),
            "< every peer but the floor",
            lambda x: below,
            " KB",
        )
    idle = _get(results, "idle", "core_percent_per_1000")
    idle_n = _get(results, "idle", "connections")
    add(
        f"idle CPU at {idle_n} connections, % of a core per 1 000",
        idle,
        "<= 1.5 %",
        lambda x: x <= 1.5,
        " %",
        extra=_get(results, "idle", "open_at_end") == idle_n,
    )
    storm = _get(results, "storm", "seconds_from_listening")
    add(
        "restart storm: all reconnected and caught up (s), none lost",
        storm,
        "<= 15 s, 0 lost",
        lambda x: x <= 15.0,
        " s",
        extra=_get(results, "storm", "lost") == 0,
    )
    for run in results.get("e2e_variants") or ([results["e2e"]] if results.get("e2e") else []):
        if run["clients"] > 100:
            continue  # reported, not a target: writing to 2 000 sockets takes the floor ~30 ms
        add(
            f"save -> every client p99 (ms), {run['write']} saves, {run['clients']} clients",
            run["last_client_p99_ms"],
            "<= 10 ms",
            lambda x: x <= 10,
            " ms",
            extra=bool(run["all_received"]),
        )
    for variant, b in (_get(results, "burst", "variants") or {}).items():
        what = f"burst {variant}, {b['files']} files, {b['clients']} clients"
        exact = b["all_received"] and not (b["duplicates"] or b["crossed_tenants"])
        if b["last_write_to_last_delivery_s"] is not None:
            add(
                f"{what}: last write -> last delivery (s), each event once",
                b["last_write_to_last_delivery_s"],
                "<= 3 s, exactly once",
                lambda x: x <= 3.0,
                " s",
                extra=exact,
            )
        else:
            add(
                f"{what}: NOT all delivered; gave up after (s)",
                b["gave_up_after_s"],
                "<= 3 s, exactly once",
                lambda x: False,
                " s",
            )
        for key, bound, wanted in (("p99", 20.0, "<= 20 ms"), ("max", 100.0, "<= 100 ms")):
            figure, text, how = burst_lag(b, key)
            if figure is not None:
                add(
                    f"{what}: event-loop lag {key} ({how})",
                    figure,
                    wanted,
                    lambda x, bound=bound: x <= bound,
                    " ms",
                    text=text,
                )
    hd = results.get("herd") or {}
    add(
        "herd: bytes for the change, StaticFileHandler GETs / patch in the event",
        hd.get("bytes_ratio"),
        ">= 20x",
        lambda x: x >= 20,
    )
    add(
        "herd: time to the last client holding the new value, StaticFileHandler GETs / patch",
        hd.get("time_ratio"),
        ">= 5x",
        lambda x: x >= 5,
    )
    big = _get(results, "burst", "large_file")
    if big:
        add(
            f"another tenant's event during a {big['bytes'] / 1e6:.0f} MB rewrite: delay, max of {big['rounds']} (ms)",
            big["delay_max_ms"],
            "<= 50 ms",
            lambda x: x <= 50.0,
            " ms",
        )
    sizes = _get(results, "scale", "sizes") or []
    if sizes:
        largest = sizes[-1]
        what = f"{largest['files']} files ({largest['tree_mb']:.0f} MB)"
        add(f"scale: ready after start, {what} (s)", largest["ready_s"], "<= 10 s", lambda x: x <= 10.0, " s")
        add(
            f"scale: RSS when ready, server and its filesystem worker, {what} (MB)",
            largest["rss_mb"] + largest.get("worker_rss_mb", 0.0),
            "<= 400 MB",
            lambda x: x <= 400.0,
            " MB",
        )
        add(
            "scale: every size's change carries its diff",
            float(sum(1 for row in sizes if row["diff"] is True)),
            f"{len(sizes)} of {len(sizes)}",
            lambda x: x == len(sizes),
            "",
        )
    idle = _get(results, "scale", "idle_tenants")
    if idle:
        add(
            f"scale: RSS per idle tenant at {idle['tenants']} tenants (KB)",
            idle["kb_per_tenant"],
            "<= 2 KB",
            lambda x: x <= 2.0,
            " KB",
        )
    return out


def _bound(metric: dict | None, key: str) -> str:
    from .lag import describe_bound

    return describe_bound(metric.get(key)) if metric else "n/a"


def burst_lag(b: dict, key: str) -> tuple[float | None, str | None, str]:
    """The lag figure a target uses: the server's histogram (a bucket bound) when it has one,
    else the outside probe's; with its text and where it comes from."""
    from .lag import describe_bound

    metric = b.get("lag_metric")
    if metric and metric.get(f"{key}_le_s") is not None:
        bound = metric[f"{key}_le_s"]
        return bound * 1000.0, describe_bound(bound), "metric"
    probe = b.get("lag_probe") or {}
    value = probe.get(f"{key}_ms")
    return value, None, "outside probe"


# -- text --------------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]], markdown: bool) -> list[str]:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
        return lines + ["| " + " | ".join(r) + " |" for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]

    def fmt(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs)

    return [fmt(header)] + [fmt(r) for r in rows]


def render(results: dict, markdown: bool = False) -> str:
    out: list[str] = []
    head = (lambda text: out.extend(["", f"**{text}**", ""])) if markdown else (lambda text: out.extend(["", text]))
    m = results["machine"]
    out.append(
        ("Machine: " if markdown else "machine: ")
        + describe_machine(m)
        + f"; server loop {results['options']['server_loop']}, generator loop "
        f"{results['options']['gen_loop']}"
        + (
            "; server and generator pinned to separate cores"
            if results["options"]["pinned"]
            else "; one core: server and generator share it"
        )
    )
    fan = results.get("fanout")
    if fan:
        head(
            f"fanout: {fan['clients']} clients of one tenant x {fan['events']} back-to-back events, "
            f"median of {fan['rounds']} round(s)"
        )
        rows = []
        for name, s in fan["servers"].items():
            f = s["fanout"]
            med = f["median"]
            gen = med.get("generator_cpu_percent")
            rows.append(
                [
                    name,
                    _f(med["server_us_per_delivery"]),
                    _f(med["user_us"]),
                    _f(med["sys_us"]),
                    _n(med["deliveries_per_s"]),
                    f"{f['delivered']}/{f['expected']} " + _f(f["all_received"]),
                    _f(gen, ".0f") + "%" + (" SATURATED" if gen and gen >= GEN_SATURATED else ""),
                ]
            )
        out += _table(
            ["server", "CPU µs/delivery", "user", "sys", "deliveries/s", "all received", "generator CPU"],
            rows,
            markdown,
        )
    lat = results.get("latency")
    if lat:
        head(
            f"latency: {lat['clients']} clients, {lat['latency_events']} events {lat['interval_s'] * 1000:.0f} ms "
            f"apart, publish request to receipt, median of {lat['rounds']} round(s)"
        )
        rows = []
        for name, s in lat["servers"].items():
            l_ = s["latency"]
            med = l_["median"]
            rows.append(
                [
                    name,
                    _f(med["p50_ms"], ".2f"),
                    _f(med["p99_ms"], ".2f"),
                    _f(med["last_client_p50_ms"], ".2f"),
                    _f(med["last_client_p99_ms"], ".2f"),
                    f"{l_['delivered']}/{l_['expected']} " + _f(l_["all_received"]),
                ]
            )
        out += _table(
            ["server", "p50 ms", "p99 ms", "last-client p50 ms", "last-client p99 ms", "all received"], rows, markdown
        )
    for key in ("fanout", "latency"):
        block = results.get(key)
        if block:
            bad = {
                n: c
                for n, s in block["servers"].items()
                for c in s["checks"]
                if c["disorder"] or c["unknown"] or c["lost_connections"] or c["protocol_errors"]
            }
            if bad:
                out.append(f"  NOTE: clients saw anomalies in {key}: {bad}")
            for name, s in block["servers"].items():
                if "deflate" in name and not any(c.get("deflate_negotiated") for c in s["checks"]):
                    out.append(f"  NOTE: {name}: the server did not accept permessage-deflate")
            break
    mem = results.get("memory")
    if mem:
        head(
            f"memory: RSS per idle connection at {mem['connections']} connections "
            f"((RSS with them - RSS before, after a warm-up) / {mem['connections']})"
        )
        rows = [
            [
                name,
                _f(r["kb_per_connection"], ".2f"),
                _n(r["rss_before_kb"]),
                _n(r["rss_after_kb"]),
                _n(r["connections_per_s"]),
                _f(r["server_us_per_handshake"], ".0f"),
                _f(r["generator_cpu_percent_connecting"], ".0f") + "%",
                f"{r['open_at_end']}/{r['connections']}",
            ]
            for name, r in mem["servers"].items()
        ]
        out += _table(
            [
                "server",
                "KB/connection",
                "RSS before KB",
                "RSS after KB",
                "handshakes/s",
                "server CPU µs/handshake",
                "generator CPU",
                "open at end",
            ],
            rows,
            markdown,
        )
    idle = results.get("idle")
    if idle:
        head(
            f"idle: cfgpush, {idle['connections']} idle connections, heartbeat every "
            f"{idle['heartbeat_interval_s']:g} s, {idle['window_s']:.0f} s window"
        )
        out += _table(
            ["server", "% of a core", "% per 1 000 connections", "pings answered", "open at end"],
            [
                [
                    "cfgpush",
                    _f(idle["core_percent"], ".2f"),
                    _f(idle["core_percent_per_1000"], ".3f"),
                    str(idle["pings_answered"]),
                    f"{idle['open_at_end']}/{idle['connections']}",
                ]
            ],
            markdown,
        )
    runs = results.get("e2e_variants") or ([results["e2e"]] if results.get("e2e") else [])
    if runs:
        first = runs[0]
        head(
            f"e2e: a save in the config folder -> every client, {first['saves']} saves "
            f"{first['interval_s'] * 1000:.0f} ms apart, debounce {first['debounce_ms']} ms (a file whose writer "
            "is done is read at once)"
        )
        out += _table(
            [
                "save",
                "clients",
                "p50 ms",
                "p99 ms",
                "every client p50 ms",
                "every client p99 ms",
                "all received",
                "extra events",
            ],
            [
                [
                    run["write"],
                    str(run["clients"]),
                    _f(run["p50_ms"], ".1f"),
                    _f(run["p99_ms"], ".1f"),
                    _f(run["last_client_p50_ms"], ".1f"),
                    _f(run["last_client_p99_ms"], ".1f"),
                    f"{run['delivered']}/{run['expected']} " + _f(run["all_received"]),
                    str(run["extra_events"]),
                ]
                for run in runs
            ],
            markdown,
        )
    for key, over in (("storm", ""), ("storm_tls", " over wss:// (--tls)"), ("storm_workers", " of --workers")):
        st = results.get(key)
        if not st:
            continue
        head(
            f"storm: {st['clients']} clients on a Redis-backed node{over}; SIGTERM, {st['events_while_down']} events "
            f"through a second node while down, {st['events_during_reconnect']} more during the reconnect"
        )
        out += _table(
            [
                "node down s",
                "listening -> all caught up s (p50, p90)",
                "SIGTERM -> all s",
                "node CPU",
                "node µs/reconnect",
                "exact",
                "lost",
                "duplicates",
                "resyncs",
                "failed attempts",
            ],
            [
                [
                    _f(st["down_s"], ".2f"),
                    f"{_f(st['seconds_from_listening'], '.2f')} ({_f(st['caught_up_p50_s'], '.1f')}, "
                    f"{_f(st['caught_up_p90_s'], '.1f')})",
                    _f(st["seconds_from_sigterm"], ".2f"),
                    _f(st["node_cpu_percent"], ".0f") + "%",
                    _f(st["node_us_per_reconnect"], ".0f"),
                    f"{st['exact']}/{st['clients']}",
                    str(st["lost"]),
                    str(st["with_duplicates"]),
                    str(st["resyncs"]),
                    str(st["failed_attempts"]),
                ]
            ],
            markdown,
        )
    sc = results.get("scale")
    if sc and sc.get("sizes"):
        empty = sc["empty"]
        head(
            f"scale: {sc['files_per_tenant']} files of {sc['file_bytes'] / 1000:.0f} KB JSON per tenant, default "
            f"flags, page cache warm; baselines: hashing the tree alone (plain Python), and the server on an "
            f"empty tree (ready {_f(empty['ready_s'], '.2f')} s, RSS {_f(empty['rss_mb'], '.0f')} MB)"
        )
        out += _table(
            [
                "files",
                "tenants",
                "tree MB",
                "ready s",
                "hash alone s",
                "ready / hash",
                "RSS MB",
                "worker RSS MB",
                "RSS - empty MB",
                "RSS / tree",
                "diff",
            ],
            [
                [
                    str(row["files"]),
                    str(row["tenants"]),
                    _f(row["tree_mb"], ".0f"),
                    _f(row["ready_s"], ".2f"),
                    _f(row["hash_s"], ".2f"),
                    _f(row["ready_over_hash"], ".1f") + "x",
                    _f(row["rss_mb"], ".0f"),
                    _f(row.get("worker_rss_mb"), ".0f"),
                    _f(row["rss_over_empty_mb"], ".0f"),
                    _f(row["rss_over_empty_mb"] / row["tree_mb"] if row["tree_mb"] else None, ".2f"),
                    "yes" if row["diff"] is True else "NO" if row["diff"] is False else "timeout",
                ]
                for row in sc["sizes"]
            ],
            markdown,
        )
        idle = sc.get("idle_tenants")
        if idle:
            out.append(
                f"idle tenants: {idle['tenants']} tenants with one event and no client: RSS "
                f"{_f(idle['rss_before_mb'], '.0f')} -> {_f(idle['rss_after_mb'], '.0f')} MB, "
                f"{_f(idle['kb_per_tenant'], '.2f')} KB per tenant"
            )
    bu = results.get("burst")
    if bu and bu.get("variants"):
        head(
            f"burst: {bu['files']} files written at once in nested folders over {bu['tenants']} tenants, "
            f"{bu['clients']} clients; event-loop lag from the server's histogram (metric) and the outside "
            f"probe (round trip of a Ping every 10 ms, minus the idle one)"
        )
        rows = []
        for variant, b in bu["variants"].items():
            metric, probe = b.get("lag_metric"), b.get("lag_probe") or {}
            rows.append(
                [
                    variant,
                    _f(b["write_s"], ".2f"),
                    _f(
                        b["last_write_to_last_delivery_s"],
                        ".2f",
                        none=f"over {b['gave_up_after_s']:.0f} s" if b.get("gave_up_after_s") else "-",
                    ),
                    f"{b.get('delivered_in_time', b['delivered'])}/{b['expected']} " + _f(b["all_received"]),
                    str(b["duplicates"]),
                    str(b["crossed_tenants"]),
                    str(b["resyncs"]),
                    str(b["lost_connections"]),
                    f"{_bound(metric, 'p99_le_s')} / {_f(probe.get('p99_ms'), '.1f')} ms",
                    f"{_bound(metric, 'max_le_s')} / {_f(probe.get('max_ms'), '.1f')} ms",
                ]
            )
        out += _table(
            [
                "variant",
                "write s",
                "last write -> last delivery s",
                "delivered in time",
                "duplicates",
                "crossed tenants",
                "resyncs",
                "connections lost",
                "lag p99 metric / probe",
                "lag max metric / probe",
            ],
            rows,
            markdown,
        )
        for variant, b in bu["variants"].items():
            if not b["all_received"]:
                out.append(
                    f"  NOTE: {variant}: {b['delivered']} of {b['expected']} delivered in the end, the last "
                    f"{_f(b.get('last_delivery_after_last_write_s'), '.1f')} s after the last write; "
                    f"connections closed by the server, by code: {b.get('closes_by_code')}"
                )
    hd = results.get("herd")
    if hd and hd.get("modes"):
        head(
            f"herd: {hd['clients']} clients of one tenant, a {hd['file_bytes'] / 1000:.0f} KB JSON file changes one "
            f"value; from the save to the last client holding the new value"
        )
        names = {
            "static": "GET from Tornado StaticFileHandler",
            "cfgpush": "GET from cfgpush (If-None-Match, gzip)",
            "patch": "patch in the event",
        }
        rows = []
        for mode, m in hd["modes"].items():
            rows.append(
                [
                    names.get(mode, mode),
                    f"{m['holding']}/{hd['clients']}",
                    _f((m["last_client_s"] or 0) * 1000, ".0f"),
                    _f(m["server_cpu_s"], ".2f"),
                    _f(m["bytes"] / 1e6, ".2f"),
                    str(m["failures"]),
                ]
            )
        out += _table(["each client", "holding", "last client ms", "server CPU s", "MB sent", "failed"], rows, markdown)
    big = (bu or {}).get("large_file")
    if big:
        head(
            f"large file: a {big['bytes'] / 1e6:.0f} MB file of one tenant rewritten, another tenant's small "
            f"file saved right after; {big['rounds']} rounds"
        )
        out += _table(
            ["small save alone, p50 ms", "delay p50 ms", "delay max ms", "loaded ms per round"],
            [
                [
                    _f(big["normal_p50_ms"], ".1f"),
                    _f(big["delay_p50_ms"], ".1f"),
                    _f(big["delay_max_ms"], ".1f"),
                    ", ".join(f"{x:.1f}" for x in big["loaded_ms"]),
                ]
            ],
            markdown,
        )
    sw = results.get("chart")
    if sw:
        head(
            f"chart: {sw['events']} back-to-back events (deliveries/s), then {sw['latency_events']} events "
            f"{sw['interval_s'] * 1000:.0f} ms apart (last-client p99), one round per point"
        )
        names = list(sw["servers"])
        rows = []
        for i, size in enumerate(sw["sizes"]):
            row = [str(size)]
            for name in names:
                p = sw["servers"][name][i] if i < len(sw["servers"][name]) else None
                row.append(
                    "-" if p is None else f"{_n(p['deliveries_per_s'])}/s, {_f(p['last_client_p99_ms'], '.1f')} ms"
                )
            rows.append(row)
        out += _table(["clients"] + names, rows, markdown)
    tg = [t for t in results.get("targets") or [] if t["figure"] is not None]
    if tg:
        head("targets (issues #7 and #12)")
        rows = []
        for t in tg:
            unit = t["unit"]
            fig = (
                "-"
                if t["figure"] is None
                else t.get("text") or (f"{t['figure']:.2f}x" if unit == "x" else f"{t['figure']:.2f}{unit}")
            )
            met = "n/a" if t["met"] is None else ("met" if t["met"] else "NOT met")
            rows.append([t["name"], fig, t["target"], met])
        out += _table(["target", "figure", "wanted", ""], rows, markdown)
    if results.get("errors"):
        head("errors")
        out += [f"{'* ' if markdown else '  '}{k}: {v}" for k, v in results["errors"].items()]
    return "\n".join(out).lstrip("\n") + "\n"


# -- chart -------------------------------------------------------------------------------------


def chart(points: dict, path: str, title: str) -> None:
    """Deliveries/s and last-client p99 against the number of clients; one line per server."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, series in points["servers"].items():
        xs = [p["clients"] for p in series]
        left.plot(xs, [p["deliveries_per_s"] for p in series], marker="o", label=name)
        right.plot(
            xs,
            [p["last_client_p99_ms"] if p["last_client_p99_ms"] is not None else float("nan") for p in series],
            marker="o",
            label=name,
        )
    for ax, label in ((left, "deliveries per second"), (right, "last-client p99 latency (ms)")):
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(points["sizes"])
        ax.set_xticklabels([str(s) for s in points["sizes"]])
        ax.set_ylim(bottom=0)
        ax.set_xlabel("clients in one tenant")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    left.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def burst_chart(burst: dict, path: str, title: str) -> None:
    """Deliveries of each burst variant against the seconds since its first write."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for variant, b in burst["variants"].items():
        points = b.get("timeline") or []
        if points:
            (line,) = ax.plot([p[0] for p in points], [100.0 * p[1] for p in points], label=f"{variant} contents")
            ax.axvline(b["write_s"], color=line.get_color(), linestyle="--", linewidth=0.8)  # its last write
    ax.axvline(0, color="grey", linewidth=0.8)
    ax.set_xlabel("seconds after the first write (dashed: the last write)")
    ax.set_ylabel("deliveries, % of expected")
    ax.set_ylim(0, 105)
    ax.grid(True, alpha=0.3)
    ax.legend()
    ax.set_title(
        f"{burst['files']} files at once, {burst['clients']} clients over {burst['tenants']} tenants", fontsize=10
    )
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def scale_chart(scale: dict, path: str, title: str) -> None:
    """Ready time and RSS against the tree's files, beside hashing the tree alone."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = scale["sizes"]
    files = [0] + [row["files"] for row in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8))
    left.plot(files, [scale["empty"]["ready_s"]] + [row["ready_s"] for row in rows], "o-", label="cfgpush: /readyz 200")
    left.plot(files[1:], [row["hash_s"] for row in rows], "o--", label="reading and hashing alone")
    left.set_xlabel("files (5 KB JSON, 10 per tenant)")
    left.set_ylabel("seconds after start")
    left.legend()
    right.plot(
        files, [scale["empty"]["rss_mb"]] + [row["rss_mb"] for row in rows], "o-", label="cfgpush RSS when ready"
    )
    right.plot(files[1:], [row["tree_mb"] for row in rows], "o--", label="the tree on disk")
    right.set_xlabel("files")
    right.set_ylabel("MB")
    right.legend()
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def warn(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def herd_chart(herd: dict, path: str, title: str) -> None:
    """The herd's three ways side by side: time to the last client, server CPU, bytes sent."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = {
        "static": "GET from\nStaticFileHandler",
        "cfgpush": "GET from cfgpush\n(If-None-Match, gzip)",
        "patch": "patch in\nthe event",
    }
    modes = [m for m in ("static", "cfgpush", "patch") if m in herd["modes"]]
    labels = [names[m] for m in modes]
    panels = [
        ("last client holds the new value, s", [herd["modes"][m]["last_client_s"] or 0 for m in modes]),
        ("server CPU, s", [herd["modes"][m]["server_cpu_s"] for m in modes]),
        ("sent, MB", [herd["modes"][m]["bytes"] / 1e6 for m in modes]),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6))
    colors = ["#9aa3b5", "#5b7bd5", "#2f9e62"][: len(modes)]
    for ax, (what, values) in zip(axes, panels, strict=True):
        bars = ax.bar(labels, values, color=colors)
        for bar, value in zip(bars, values, strict=True):
            ax.annotate(
                f"{value:.2f}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax.set_title(what, fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(
        f"herd: {herd['clients']} clients of one tenant, a {herd['file_bytes'] / 1000:.0f} KB JSON file changes one value\n{title}",
        fontsize=8,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

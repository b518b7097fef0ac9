"""Keeps the benchmark scripts working: tiny runs that count, never time.

``scripts/bench.py --smoke`` runs every scenario against every server with a handful of
clients; the test checks the accounting (every delivery counted, once, in order; every
scenario and server present; the JSON and the chart written) and that the run left no
process and no temporary folder behind. No timing is asserted anywhere.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from tornado_cfgpush.testing import need_program

from .scriptrun import SCRIPTS, run_script

SERVERS = ("seed", "websockets", "floor", "cfgpush")
SCENARIOS = ("fanout", "latency", "memory", "idle", "e2e", "storm", "burst", "scale", "herd")
# The smoke run takes 15 to 25 s on two busy cores; pytest's own timeout is 120 s.
RUN_TIMEOUT = 100


def run_bench(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return run_script("bench.py", args, cwd, RUN_TIMEOUT)


def test_bench_smoke_runs_every_scenario_and_accounts_for_every_delivery(tmp_path):
    need_program("redis-server")  # the storm scenario's private Redis
    out, chart = tmp_path / "bench.json", tmp_path / "bench.png"
    # The chart needs matplotlib (the [bench] extra, not [test]): drawn when it is there.
    charted = importlib.util.find_spec("matplotlib") is not None
    done = run_bench(
        ["--smoke", "--json", str(out), "--markdown"] + (["--chart", str(chart)] if charted else []), tmp_path
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(out.read_text())
    assert result["errors"] == {}
    assert not Path(result["workdir"]).exists()  # logs, config folder, Redis' folder: gone
    if charted:
        assert chart.stat().st_size > 0
    args = result["args"]
    clients, events, latency_events = args["clients"], args["events"], args["latency_events"]

    for scenario in SCENARIOS:
        assert scenario in result, scenario
    for name in SERVERS:
        fanout = result["fanout"]["servers"][name]["fanout"]
        assert [r["delivered"] for r in fanout["rounds"]] == [clients * events] * args["rounds"], name
        assert fanout["all_received"], name
        latency = result["latency"]["servers"][name]["latency"]
        assert [r["delivered"] for r in latency["rounds"]] == [clients * latency_events] * args["rounds"], name
        for check in result["fanout"]["servers"][name]["checks"]:  # no duplicate, gap or stray frame
            assert (check["disorder"], check["unknown"], check["lost_connections"], check["protocol_errors"]) == (
                0,
                0,
                0,
                0,
            ), (name, check)
        memory = result["memory"]["servers"][name]
        assert memory["open_at_end"] == memory["connections"] == args["connections"], name
        assert isinstance(memory["kb_per_connection"], float), name
        for point in result["chart"]["servers"][name] if charted else ():
            assert point["all_received"], (name, point)

    idle = result["idle"]
    assert idle["open_at_end"] == idle["connections"] == args["connections"]
    assert {run["write"] for run in result["e2e_variants"]} == {"atomic", "plain"}
    for run in result["e2e_variants"]:
        assert run["delivered"] == run["expected"] == int(args["e2e_clients"]) * args["saves"]
        assert run["extra_events"] == 0  # one event per save, whatever the editor does
    storm = result["storm"]
    assert storm["all_caught_up"]
    assert storm["exact"] == storm["clients"] == args["storm_clients"]  # every event, once, in order
    assert (storm["lost"], storm["with_duplicates"], storm["with_gaps"], storm["resyncs"]) == (0, 0, 0, 0)

    burst = result["burst"]
    assert set(burst["variants"]) == {"distinct", "identical"}
    for variant, b in burst["variants"].items():  # every file's event reached every client of its tenant, once
        assert b["delivered"] == b["expected"] == args["burst_files"] * (args["burst_clients"] // args["burst_tenants"])
        assert (b["all_received"], b["duplicates"], b["crossed_tenants"], b["missing"]) == (True, 0, 0, 0), variant
        assert b["lag_probe"]["samples"] > 0, variant
    assert len(burst["large_file"]["loaded_ms"]) == args["big_rounds"]

    scale = result["scale"]  # every size started, was ready, and its change carried a diff
    assert [row["files"] for row in scale["sizes"]] == args["scale_files"]
    for row in scale["sizes"]:
        assert row["written"] > 0 and row["ready_s"] > 0 and row["rss_mb"] > 0 and row["diff"] is True, row
        assert row["tenants"] * scale["files_per_tenant"] == row["files"]
    assert scale["empty"]["rss_mb"] > 0 and scale["idle_tenants"]["tenants"] == args["scale_idle_tenants"]
    herd = result["herd"]  # every client held the new value, in each of the three ways
    assert set(herd["modes"]) == {"static", "cfgpush", "patch"}
    for mode, m in herd["modes"].items():
        assert (m["all_hold"], m["failures"]) == (True, 0), (mode, m)
    assert herd["modes"]["patch"]["patch_checked"] is True and herd["modes"]["patch"]["http_bytes"] == 0
    assert herd["modes"]["cfgpush"]["statuses"] == {"200": args["herd_clients"]}

    names = {t["name"] for t in result["targets"]}
    assert any("cfgpush / floor" in n for n in names) and any("storm" in n for n in names)
    assert any("burst identical" in n for n in names) and any("MB rewrite" in n for n in names)
    assert any(n.startswith("scale: ready after start") for n in names)
    assert "targets (issues #7 and #12)" in done.stdout and "| server |" in done.stdout  # the table and its Markdown


def test_resume_benchmark_runs():
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / "bench_resume.py"), "--events", "50", "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    assert done.returncode == 0, done.stderr
    assert "replay of 50 events" in done.stdout

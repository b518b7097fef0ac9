"""The soak (scripts/soak.py) in one minute: two real nodes on a private Redis, one shared
folder, clients with churn, bursts, a node restart and a Redis restart; the checker's verdict.

The run is small (200 clients over 20 tenants) so that it passes on two shared cores; what it
asserts is the checker's verdict and that the load really happened, never a timing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tornado_cfgpush.testing import need_program

from .scriptrun import run_script

DURATION = 60
# Setup, the minute, the catch-up at the end and the checker: about 75 s on two busy cores.
RUN_TIMEOUT = 210
# Any path may be written again at any time: two nodes watching one folder publish each
# version once and never an older one after a newer (issue #19, point 1).
SMALL = [
    "--duration",
    str(DURATION),
    "--clients",
    "200",
    "--tenants",
    "20",
    "--files-per-tenant",
    "5",
    "--burst-every",
    "10",
    "--burst-files",
    "100",
    "--edits-per-s",
    "3",
    "--churn-per-s",
    "5",
    "--warmup",
    "10",
    "--quiesce-timeout",
    "45",
]


@pytest.mark.timeout(RUN_TIMEOUT + 30)
def test_soak_smoke_a_minute_of_churn_bursts_and_restarts_is_exact(tmp_path):
    need_program("redis-server")
    out = tmp_path / "soak.json"
    done = run_script("soak.py", [*SMALL, "--json", str(out)], tmp_path, RUN_TIMEOUT)
    stdout, stderr = done.stdout, done.stderr
    assert out.exists(), f"exit {done.returncode}; stderr:\n{stderr[-4000:]}"
    result = json.loads(out.read_text())
    verdict = result["verdict"]
    assert verdict["ok"] and done.returncode == 0, stdout + stderr[-3000:]
    assert not Path(result["workdir"]).exists()  # nodes' logs, Redis' folder, the config folder: gone
    assert result["quiesced"] and result["connected_at_end"] == 200

    # The load really happened: events reached every kind of client, through every incident.
    counts, load = verdict["counts"], result["load"]
    assert counts["clients"] == 200 and counts["clients_connected_at_end"] == 200
    assert load["bursts"] >= 5 and load["edits"] > 0 and load["deletes"] > 0
    assert counts["events"] > 300 and counts["deliveries"] > 3000
    assert load["drops"] > 50 and load["connections"] > 200 + load["drops"] // 2
    incidents = [i["what"] for i in result["incidents"]]
    assert any("node b restart" in i for i in incidents) and any("redis restart" in i for i in incidents)
    assert {key.split("#")[0] for key in result["rss"]} == {"a", "b"} and "b#2" in result["rss"]
    assert "verdict: PASS" in stdout

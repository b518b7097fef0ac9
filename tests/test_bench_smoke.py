"""Keeps scripts/bench_fanout.py working: a tiny run, no timing asserted."""
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_fanout.py"


def test_fanout_benchmark_runs_and_accounts_for_every_delivery(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--clients", "20", "--events", "3", "--rounds", "1",
                           "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    for impl in ("seed", "cfgpush"):
        assert [r["deliveries"] for r in result["results"][impl]] == [60]
    assert "less server CPU per delivery" in done.stdout


def test_resume_benchmark_runs():
    script = SCRIPT.parent / "bench_resume.py"
    done = subprocess.run([sys.executable, str(script), "--events", "50", "--rounds", "1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "replay of 50 events" in done.stdout

"""The tests' TCP proxy: ``FaultProxy`` of scripts/bench/tcpproxy.py (delay, hold and release,
drop, freeze), the one implementation the fault suite (scripts/faults.py) uses too.
``FreezableProxy`` is its older name."""

from __future__ import annotations

import sys
from pathlib import Path

SCRIPTS = str(Path(__file__).resolve().parent.parent / "scripts")
if SCRIPTS not in sys.path:
    sys.path.insert(0, SCRIPTS)

from bench.tcpproxy import FaultProxy  # noqa: E402

FreezableProxy = FaultProxy

__all__ = ["FaultProxy", "FreezableProxy"]

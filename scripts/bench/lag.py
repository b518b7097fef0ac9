"""Event-loop lag during a window, two ways: the server's own histogram, and a probe from outside.

* ``cfgpush_event_loop_lag_seconds`` on ``/metrics`` (a Prometheus histogram of a timer's
  lateness, sampled every 10 ms): scraped before and after the window, the bucket deltas give
  the window's sample count, its p99 and its max, each as "at most this bucket's bound".
  Servers without the metric give None.
* ``Probe``: a WebSocket client of its own process (``python lag.py probe ...``), pinned to the
  generator's core, that sends ``"Ping"`` every 10 ms and times each ``"Pong"``. A blocked loop
  answers late: the lateness of a pong is its round trip minus the median round trip of an
  idle server (measured before the window). The server must allow 100 client messages per
  second (``--max-client-rate``). The probe answers the server's pings like any client.

``window(...)`` and ``probe_window(...)`` turn either into the same figures: samples, p99, max.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import sys
import time
from collections import deque
from pathlib import Path

LAG_METRIC = "cfgpush_event_loop_lag_seconds"
# The probe's answer is one JSON line of up to a few MB (every sample).
PIPE_LIMIT = 64 << 20
PROBE_INTERVAL = 0.01
_BUCKET = re.compile(r'^(\w+)_bucket\{(?:[^}]*,)?le="([^"]+)"(?:,[^}]*)?\}\s+([0-9.eE+-]+)\s*$', re.M)


def histogram(text: str, name: str = LAG_METRIC) -> dict[float, float] | None:
    """``{upper bound: cumulative count}`` of histogram ``name`` in a /metrics page; None if absent."""
    found: dict[float, float] = {}
    for metric, le, value in _BUCKET.findall(text):
        if metric == name:
            bound = math.inf if le == "+Inf" else float(le)
            found[bound] = found.get(bound, 0.0) + float(value)
    return found or None


def window(before: dict[float, float] | None, after: dict[float, float] | None) -> dict | None:
    """Samples, p99 and max of the window between two scrapes, as bucket bounds (``inf``: over
    the largest finite bucket)."""
    if before is None or after is None:
        return None
    bounds = sorted(after)
    delta = [after[b] - before.get(b, 0.0) for b in bounds]  # cumulative counts
    total = delta[-1] if delta else 0.0
    if total <= 0:
        return {"samples": 0, "p99_le_s": None, "max_le_s": None}

    def bound_for(count: float) -> float:
        return next(b for b, c in zip(bounds, delta, strict=True) if c >= count)

    return {"samples": int(total), "p99_le_s": bound_for(0.99 * total), "max_le_s": bound_for(total)}


def describe_bound(seconds: float | None, top: float = 10.0) -> str:
    """``≤ 20 ms``; ``> 10 s`` past ``top``, the largest finite bucket."""
    if seconds is None:
        return "-"
    if math.isinf(seconds):
        return f"> {top:g} s"
    return f"≤ {seconds * 1000:g} ms"


# -- the probe -----------------------------------------------------------------------------------


def probe_window(samples: list[list[float]], start: float, end: float, stopped: float, unanswered: list[float]) -> dict:
    """From the probe's ``[sent, round trip]`` samples: the idle round trip (median of those sent
    before ``start``), and over the pings sent in ``[start, end]`` the lateness p99 and max.
    A ping still unanswered when the probe stopped counts as late by at least ``stopped - sent``."""
    idle = sorted(rtt for sent, rtt in samples if sent < start)
    baseline = idle[len(idle) // 2] if idle else 0.0
    late = [max(0.0, rtt - baseline) for sent, rtt in samples if start <= sent <= end]
    late += [stopped - sent for sent in unanswered if start <= sent <= end]
    late.sort()
    if not late:
        return {"samples": 0, "baseline_ms": baseline * 1000, "p99_ms": None, "max_ms": None, "unanswered": 0}
    p99 = late[min(len(late) - 1, math.ceil(0.99 * len(late)) - 1)]
    return {
        "samples": len(late),
        "baseline_ms": baseline * 1000,
        "p99_ms": p99 * 1000,
        "max_ms": late[-1] * 1000,
        "unanswered": sum(1 for sent in unanswered if start <= sent <= end),
    }


class Probe:
    """The parent's side: ``await start()`` (connected and pinging), later ``await stop()``
    gives ``(samples, unanswered, stopped_at)``: ``stopped_at`` is when the probe's connection
    closed, if the server closed it, else when it was stopped."""

    def __init__(self, res, host: str, port: int, tenant: str, cpu: int | None = None):
        self.res, self.host, self.port, self.tenant, self.cpu = res, host, port, tenant, cpu
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, timeout: float = 30.0) -> None:
        from .procs import TWO_CORES

        cmd = [sys.executable, __file__, "probe", self.host, str(self.port), self.tenant]
        with open(self.res.log_path("lag-probe"), "ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                *cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=err, limit=PIPE_LIMIT
            )
        if self.cpu is not None and TWO_CORES:
            try:
                os.sched_setaffinity(self.proc.pid, {self.cpu})
            except OSError:
                pass
        self.res.cleanups.append(self.kill)
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)  # "ready" once welcomed
        if not line.startswith(b"ready"):
            raise RuntimeError(f"the lag probe did not connect: {line!r}")

    async def stop(self, timeout: float = 120.0) -> tuple[list[list[float]], list[float], float]:
        self.proc.stdin.write(b"stop\n")
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        await self.proc.wait()
        found = json.loads(line)
        return found["samples"], found["unanswered"], found["stopped"]

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass


async def _probe(host: str, port: int, tenant: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.loadgen import LoadGen, Sink

    loop = asyncio.get_running_loop()
    sent: deque[float] = deque()
    samples: list[list[float]] = []

    closed: list[float] = []

    class Pongs(Sink):
        def other(self, client, payload: bytes, now: float) -> None:
            if payload == b'"Pong"' and sent:
                at = sent.popleft()
                samples.append([at, now - at])

        def lost(self, client) -> None:  # what was unanswered then was late at least until now
            closed.append(time.perf_counter())

    gen = LoadGen(host, port, Pongs(), tenant=tenant, welcome=True)
    client = await gen.open_one()
    print("ready", flush=True)

    def tick(when: float) -> None:
        if client.open:
            sent.append(time.perf_counter())
            client.send_text(b'"Ping"')
        loop.call_at(when + PROBE_INTERVAL, tick, when + PROBE_INTERVAL)

    loop.call_soon(tick, loop.time())
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.readline()  # "stop" (or the parent went away)
    stopped = closed[0] if closed else time.perf_counter()
    print(
        json.dumps({"samples": samples, "unanswered": list(sent), "stopped": stopped, "closed": bool(closed)}),
        flush=True,
    )
    client.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["probe"]:
        asyncio.run(_probe(sys.argv[2], int(sys.argv[3]), sys.argv[4]))

"""Is the event loop free? A timer's lateness, sampled every 10 ms.

Every delivery, heartbeat and handshake of every tenant runs on one event loop; when something
holds it, everyone waits. The lag (how late a timer fires) is observed into the
``cfgpush_event_loop_lag_seconds`` histogram, and a lag over ``DEGRADED_AFTER`` starts an
episode: one warning when it starts, one line when it ends (after ``CALM_FOR`` seconds under
the bound), and ``/readyz`` says ``degraded`` with the reason meanwhile.

Cost: one timer callback per interval (a few microseconds), whatever the load.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger("cfgpush.loop")

INTERVAL = 0.01
DEGRADED_AFTER = 1.0
CALM_FOR = 5.0
LAG_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class LoopLag:
    def __init__(
        self,
        observe: Callable[[float], None] | None = None,
        *,
        interval: float = INTERVAL,
        degraded_after: float = DEGRADED_AFTER,
        calm_for: float = CALM_FOR,
    ):
        self._observe = observe
        self.interval = interval
        self.degraded_after = degraded_after
        self.calm_for = calm_for
        self.worst = 0.0  # the largest lag seen since start
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._expected = 0.0
        self._episode_worst: float | None = None  # None: no episode
        self._last_bad = 0.0

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._expected = self._loop.time() + self.interval
        self._timer = self._loop.call_at(self._expected, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        lag = max(0.0, now - self._expected)
        if self._observe is not None:
            self._observe(lag)
        if lag > self.worst:
            self.worst = lag
        if lag > self.degraded_after:
            self._last_bad = now
            if self._episode_worst is None:
                self._episode_worst = lag
                log.warning("the event loop was blocked for %.2f s: every client waited meanwhile", lag)
            else:
                self._episode_worst = max(self._episode_worst, lag)
        elif self._episode_worst is not None and now - self._last_bad >= self.calm_for:
            log.info("the event loop is responsive again (worst lag of the episode %.2f s)", self._episode_worst)
            self._episode_worst = None
        # The next sample one interval from now: after a stall, no burst of catch-up ticks.
        self._expected = max(self._expected + self.interval, now + self.interval / 2)
        self._timer = loop.call_at(self._expected, self._tick)

    def degraded_reason(self) -> str | None:
        """Why the node is degraded (an episode is on), or None."""
        if self._episode_worst is None:
            return None
        return (
            f"event loop lag over {self.degraded_after:g} s "
            f"(worst {self._episode_worst:.2f} s, within the last {self.calm_for:g} s)"
        )

"""cfgpush-ticker: an example event source for cfgpush.

Every ``CFGPUSH_TICKER_INTERVAL`` seconds (default 10) it reports that ``ticker.json``
of tenant ``CFGPUSH_TICKER_TENANT`` (default ``demo``) was modified. Useful to see
events flow end to end without touching a file, and as the smallest complete plugin.
"""

from __future__ import annotations

import asyncio
import os

from tornado_cfgpush import Emit, hookimpl

__version__ = "1.0.0"

DEFAULT_TENANT = "demo"
DEFAULT_INTERVAL = 10.0


class Ticker:
    name = "ticker"

    def __init__(self, tenant_id: str = DEFAULT_TENANT, interval: float = DEFAULT_INTERVAL):
        self.tenant_id = tenant_id
        self.interval = interval

    async def run(self, emit: Emit) -> None:
        # Runs until the server cancels it at shutdown; the CancelledError just propagates.
        tick = 0
        while True:
            await asyncio.sleep(self.interval)
            tick += 1
            await emit(
                {"tenant_id": self.tenant_id, "change_type": "modified", "path": "ticker.json", "meta": {"tick": tick}}
            )


def interval_from(text: str) -> float:
    """``CFGPUSH_TICKER_INTERVAL``: a positive number of seconds."""
    try:
        interval = float(text)
    except ValueError:
        interval = 0.0
    if not 0 < interval < float("inf"):
        raise ValueError(f"CFGPUSH_TICKER_INTERVAL must be a positive number of seconds, not {text!r}")
    return interval


@hookimpl
def cfgpush_register_sources(settings) -> list[Ticker]:
    tenant_id = os.environ.get("CFGPUSH_TICKER_TENANT", DEFAULT_TENANT)
    interval = interval_from(os.environ.get("CFGPUSH_TICKER_INTERVAL", str(DEFAULT_INTERVAL)))
    return [Ticker(tenant_id, interval)]

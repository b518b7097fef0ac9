"""Connection limits of ``/ws`` and ``/events`` together: server-wide, per address, per tenant.

A subscriber takes a ``Slot`` after every other check passed and gives it back exactly once,
whatever ends the connection (``Slot.release`` is idempotent): counts never leak. Everything
runs on the IOLoop, so plain integers suffice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .settings import Settings


class LimitReached(Exception):
    """Refused: ``status`` 503 (server-wide) or 429 (per address, per tenant)."""

    def __init__(self, status: int, reason: str, scope: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.scope = scope


class Slot:
    __slots__ = ("_limits", "ip", "tenant_id", "released")

    def __init__(self, limits: ConnectionLimits, ip: str, tenant_id: str):
        self._limits = limits
        self.ip = ip
        self.tenant_id = tenant_id
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._limits._release(self)


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


class ConnectionLimits:
    def __init__(self, total: int, per_ip: int, per_tenant: int):
        self.max_total = total
        self.max_per_ip = per_ip
        self.max_per_tenant = per_tenant
        self.total = 0
        self.by_ip: dict[str, int] = {}
        self.by_tenant: dict[str, int] = {}
        self.refused: dict[str, int] = {"server": 0, "ip": 0, "tenant": 0}
        self.closed = False  # shutting down: no new connection

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(settings.max_connections, settings.max_connections_per_ip, settings.max_connections_per_tenant)

    def close(self) -> None:
        """No slot any more (the server is shutting down). A request can still arrive on a
        connection that was open before (a proxy's keep-alive connection to us): it gets 503,
        not a subscription that the shutdown would cut a moment later."""
        self.closed = True

    def acquire(self, ip: str, tenant_id: str) -> Slot:
        """A slot for one connection, or ``LimitReached`` (nothing is counted then)."""
        if self.closed:
            self.refused["server"] += 1
            raise LimitReached(503, "the server is shutting down; retry later or elsewhere", "server")
        if self.max_total and self.total >= self.max_total:
            self.refused["server"] += 1
            raise LimitReached(503, "the server has reached its connection limit; retry later or elsewhere", "server")
        if self.max_per_ip and self.by_ip.get(ip, 0) >= self.max_per_ip:
            self.refused["ip"] += 1
            raise LimitReached(429, "too many connections from your address", "ip")
        if self.max_per_tenant and self.by_tenant.get(tenant_id, 0) >= self.max_per_tenant:
            self.refused["tenant"] += 1
            raise LimitReached(429, "too many connections for this tenant", "tenant")
        self.total += 1
        self.by_ip[ip] = self.by_ip.get(ip, 0) + 1
        self.by_tenant[tenant_id] = self.by_tenant.get(tenant_id, 0) + 1
        return Slot(self, ip, tenant_id)

    def _release(self, slot: Slot) -> None:
        self.total -= 1
        _decrement(self.by_ip, slot.ip)
        _decrement(self.by_tenant, slot.tenant_id)

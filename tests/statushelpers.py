"""What the status APIs answer for a tenant nobody is connected to and nothing was published for
(``GET /api/v1/tenants/<id>``, and each row of ``GET /api/v1/tenants``): one shape, one place."""

from __future__ import annotations


def quiet_status(tenant_id: str) -> dict:
    return {
        "tenant_id": tenant_id,
        "connections": 0,
        "connections_by_transport": {},
        "observers": 0,
        "clients": 0,
        "last_event_id": None,
        "converged": 0,
        "failed": 0,
        "failures": [],
        "invalid": [],
    }

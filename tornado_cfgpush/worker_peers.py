"""What one worker asks the others, under ``--workers N``: their metrics, a tenant's connections.

Each worker answers its siblings on a unix socket in the workers' private folder
(``metrics-<index>.sock``): one JSON line asks, the answer follows, then the connection closes.
The worker a request reaches asks the others (a worker that is restarting is left out, and comes
back at the next request) and answers for all of them:

* ``/metrics``: the union of every worker's series, each with a ``worker`` label
  (``sum without (worker) (...)`` gives the server's totals, as for the nodes of a cluster);
* ``GET /api/v1/tenants/<id>``: the tenant's connections, observers, clients and converged
  clients summed over the workers (converged against the one newest event id, which every
  worker shares);
* ``GET /api/v1/tenants`` (the dashboard's list): the tenants any worker knows, each summed
  likewise, and the connections of all.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from .metrics import Metrics
from .summary import TOP_REASONS
from .workerinfo import Worker

log = logging.getLogger("cfgpush.workers")

PEER_TIMEOUT = 2.0


class Peers:
    """This worker's answers to its siblings, and its questions to them."""

    def __init__(
        self,
        worker: Worker,
        metrics: Metrics,
        tenant: Callable[[str, str | None], dict[str, Any]],
        tenants: Callable[[bool], list[str]],
        connections: Callable[[], int],
    ):
        self.worker = worker
        self.metrics = metrics
        self.tenant = tenant  # (tenant id, newest event id) -> this worker's summary (as_json)
        self.tenants = tenants  # (with clients only) -> the tenants this worker knows
        self.connections = connections  # -> this worker's open connections
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        path = self.worker.metrics_socket()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # left by this worker's previous run
        self._server = await asyncio.start_unix_server(self._answer, path=str(path))
        self.metrics.peers = self.all_metrics

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

    async def _answer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(PEER_TIMEOUT):
                question = json.loads(await reader.readline() or b"{}")
            kind = question.get("q")
            if kind == "tenant":
                writer.write(json.dumps(self.tenant(question["t"], question.get("last"))).encode())
            elif kind == "tenants":
                writer.write(json.dumps(self.tenants(bool(question.get("c")))).encode())
            elif kind == "page":
                summaries = [self.tenant(t, last) for t, last in zip(question["t"], question["last"], strict=True)]
                writer.write(json.dumps({"summaries": summaries, "connections": self.connections()}).encode())
            else:
                writer.write(self.metrics.exposition())
            await writer.drain()
        except (OSError, ValueError, KeyError, TimeoutError):
            pass
        finally:
            writer.close()

    async def _ask_all(self, question: dict[str, Any]) -> list[tuple[int, bytes]]:
        others = [i for i in range(self.worker.count) if i != self.worker.index]
        found = await asyncio.gather(*(self._ask(i, question) for i in others))
        return [(i, body) for i, body in zip(others, found, strict=True) if body]

    async def _ask(self, index: int, question: dict[str, Any]) -> bytes | None:
        try:
            async with asyncio.timeout(PEER_TIMEOUT):
                reader, writer = await asyncio.open_unix_connection(str(self.worker.metrics_socket(index)))
                try:
                    writer.write(json.dumps(question).encode() + b"\n")
                    return await reader.read()
                finally:
                    writer.close()
        except (OSError, TimeoutError) as exc:
            log.debug("no answer from worker %d: %s", index, exc)
            return None

    async def all_metrics(self, own: bytes) -> bytes:
        parts = [(str(self.worker.index), own)]
        parts += [(str(i), body) for i, body in await self._ask_all({"q": "metrics"})]
        return merge_expositions(parts)

    async def tenant_summary(self, own: dict[str, Any]) -> dict[str, Any]:
        """``own`` (this worker's summary of a tenant) plus every other worker's."""
        answers = await self._ask_all({"q": "tenant", "t": own["tenant_id"], "last": own["last_event_id"]})
        summaries = [own]
        for _, body in answers:
            with contextlib.suppress(ValueError):
                summaries.append(json.loads(body))
        return merge_summaries(summaries)

    async def known_tenants(self, own: list[str], with_clients: bool) -> list[str]:
        """``own`` (this worker's tenants) and every other worker's, sorted, once each."""
        names = set(own)
        for _, body in await self._ask_all({"q": "tenants", "c": with_clients}):
            with contextlib.suppress(ValueError):
                names.update(json.loads(body))
        return sorted(names)

    async def page(
        self, own: list[dict[str, Any]], tenants: list[str], last: list[str | None], connections: int
    ) -> tuple[list[dict[str, Any]], int]:
        """A page of the tenant list over every worker: each tenant's summaries merged, and the
        open connections of all."""
        pages = [own]
        for _, body in await self._ask_all({"q": "page", "t": tenants, "last": last}):
            with contextlib.suppress(ValueError, KeyError):
                answer = json.loads(body)
                if len(answer["summaries"]) == len(tenants):
                    pages.append(answer["summaries"])
                    connections += answer["connections"]
        return [merge_summaries([page[i] for page in pages]) for i in range(len(tenants))], connections


def merge_summaries(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """One tenant's summaries of several workers (same tenant and newest id) together: counts
    summed, apply-failure reasons counted over all (the most common first), the gate's refused
    files once each (every worker with sources lists the same)."""
    merged = dict(summaries[0])
    by_transport: dict[str, int] = {}
    reasons: dict[str, int] = {}
    invalid: dict[tuple[Any, Any], dict[str, Any]] = {}
    for summary in summaries:
        for transport, n in summary["connections_by_transport"].items():
            by_transport[transport] = by_transport.get(transport, 0) + n
        for failure in summary.get("failures", ()):
            reasons[failure["reason"]] = reasons.get(failure["reason"], 0) + failure["clients"]
        for entry in summary.get("invalid", ()):
            invalid.setdefault((entry.get("path"), entry.get("pointer")), entry)
    merged["connections_by_transport"] = by_transport
    for key in ("connections", "observers", "clients", "converged", "failed"):
        merged[key] = sum(summary.get(key, 0) for summary in summaries)
    if "failures" in merged:
        top = sorted(reasons.items(), key=lambda item: -item[1])[:TOP_REASONS]
        merged["failures"] = [{"reason": reason, "clients": n} for reason, n in top]
    if "invalid" in merged:
        merged["invalid"] = list(invalid.values())
    return merged


class _Merged(Collector):
    def __init__(self, families: list[Metric]):
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def merge_expositions(parts: list[tuple[str, bytes]]) -> bytes:
    """One exposition of several workers' (``(worker label, text)``), each sample labelled."""
    merged: dict[str, Metric] = {}
    for label, body in parts:
        for family in text_string_to_metric_families(body.decode("utf-8")):
            target = merged.get(family.name)
            if target is None:
                target = merged[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                target.samples.append(sample._replace(labels={**sample.labels, "worker": label}))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(list(merged.values())))
    return generate_latest(registry)

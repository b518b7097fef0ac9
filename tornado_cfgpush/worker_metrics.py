"""``/metrics`` under ``--workers N``: any worker's answer covers every worker.

Each worker serves its own exposition on a unix socket in the workers' private folder
(``metrics-<index>.sock``: connect, read to the end). The worker a scrape reaches reads its
siblings' (a worker that is restarting is left out, and comes back at the next scrape) and
answers the union, each series with a ``worker`` label: ``sum by (...)`` gives the server's
totals, as for the nodes of a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from .metrics import Metrics
from .workerinfo import Worker

log = logging.getLogger("cfgpush.metrics")

PEER_TIMEOUT = 2.0


async def serve_metrics(worker: Worker, metrics: Metrics) -> asyncio.AbstractServer:
    """This worker's exposition for its siblings; and ``metrics.peers`` set to read theirs."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(metrics.exposition())
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    path = worker.metrics_socket()
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # left by this worker's previous run
    server = await asyncio.start_unix_server(answer, path=str(path))

    async def peers(own: bytes) -> bytes:
        others = [i for i in range(worker.count) if i != worker.index]
        found = await asyncio.gather(*(_read(worker, i) for i in others))
        parts = [(str(worker.index), own)] + [(str(i), body) for i, body in zip(others, found, strict=True) if body]
        return merge_expositions(parts)

    metrics.peers = peers
    return server


async def _read(worker: Worker, index: int) -> bytes | None:
    try:
        async with asyncio.timeout(PEER_TIMEOUT):
            reader, writer = await asyncio.open_unix_connection(str(worker.metrics_socket(index)))
            try:
                return await reader.read()
            finally:
                writer.close()
    except (OSError, TimeoutError) as exc:
        log.debug("no metrics from worker %d: %s", index, exc)
        return None


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

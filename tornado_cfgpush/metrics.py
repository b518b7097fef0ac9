"""``/metrics``: what the service already counts, in the Prometheus text format.

Nothing here runs per recipient. The hub counts deliveries, slow-client and heartbeat closes
in plain integers; the source runner counts restarts; ``CfgPush.publish`` counts published
and rejected events once per event. A custom collector reads those numbers when Prometheus
scrapes, and the delivery-latency histogram is observed once per event (not per client).

Tenant labels are off by default: one series per tenant does not scale to large fleets.
``--metrics-tenant-labels`` adds a ``tenant`` label to connections, published events and
deliveries; a tenant's counters are then forgotten once it has had no event for
``--history-ttl`` (as the broker forgets it), and at most ``MAX_TENANT_SERIES`` tenants are
counted at once (the least recently active go first).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from . import __version__
from .loop_health import LAG_BUCKETS
from .summary import count_by_transport, failing, is_observer, top_reasons

if TYPE_CHECKING:  # pragma: no cover
    from .events import Event
    from .ports import Metered
    from .tls import CertificateReloader

TRANSPORTS = ("ws", "sse")
# Fan-out of one event to every local connection of its tenant: microseconds for a few
# clients, milliseconds for thousands.
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

# With --metrics-tenant-labels: tenants whose counters are kept at once.
MAX_TENANT_SERIES = 10_000

# Reasons of cfgpush_events_rejected_total.
INVALID = "invalid"
BROKER_UNAVAILABLE = "broker_unavailable"
RATE_LIMITED = "rate_limited"  # the publish API, past a token's budget (429)
INVALID_CONTENT = "invalid_content"  # content the validation gate refused (or not the checksum's)


class Metrics:
    """One service's metrics: its own registry (no process-wide global), read at scrape time."""

    def __init__(self, core: Metered):
        self.core = core
        self.tenant_labels = bool(core.settings.metrics_tenant_labels)
        self.tenant_ttl = core.settings.history_ttl
        self.clock = time.monotonic  # of the per-tenant series' expiry (a test may replace it)
        # With --certfile: the pair in use and its reloads (tls.CertificateReloader; app.serve sets it).
        self.tls: CertificateReloader | None = None
        # Under --workers: (this worker's exposition) -> every worker's, merged.
        self.peers: Callable[[bytes], Awaitable[bytes]] | None = None
        # (source,) or (source, tenant) -> count; (source, reason) -> count.
        self.published_events: dict[tuple[str, ...], int] = {}
        self.rejected_events: dict[tuple[str, str], int] = {}
        self.deliveries_by_tenant: dict[str, int] = {}
        # The files API (--serve-content): answers by status code, and body bytes sent.
        self.file_requests: dict[str, int] = {}
        self.file_bytes = 0
        # With tenant labels: tenant -> (monotonic time its counters last moved, its sources),
        # least recently moved first: what expiry and the MAX_TENANT_SERIES bound drop.
        self._tenant_series: OrderedDict[str, tuple[float, set[str]]] = OrderedDict()
        self.started = time.time()
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "cfgpush_delivery_seconds",
            "Time to hand one event to every local connection of its tenant (per event, not per client)",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.loop_lag = Histogram(
            "cfgpush_event_loop_lag_seconds",
            "How late a timer sampled every 10 ms fires: how long every client waits for the event loop",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_ServiceCollector(self))
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        core.hub.observe_deliveries(self.delivered)

    # -- called once per event ----------------------------------------------------------------

    def published(self, source: str, tenant_id: str) -> None:
        key = (source, tenant_id) if self.tenant_labels else (source,)
        self.published_events[key] = self.published_events.get(key, 0) + 1
        if self.tenant_labels:
            self._moved(tenant_id, source)

    def rejected(self, source: str, reason: str) -> None:
        key = (source, reason)
        self.rejected_events[key] = self.rejected_events.get(key, 0) + 1

    def file_request(self, status: int, body_bytes: int = 0) -> None:
        """One answer of the files API."""
        key = str(status)
        self.file_requests[key] = self.file_requests.get(key, 0) + 1
        self.file_bytes += body_bytes

    def delivered(self, event: Event, recipients: int, seconds: float) -> None:
        """The hub's observer: once per event that had at least one local recipient."""
        self.latency.observe(seconds)
        if self.tenant_labels:
            tenant = event.tenant_id
            self.deliveries_by_tenant[tenant] = self.deliveries_by_tenant.get(tenant, 0) + recipients
            self._moved(tenant, None)

    # -- per-tenant series ----------------------------------------------------------------------

    def _moved(self, tenant_id: str, source: str | None) -> None:
        series = self._tenant_series
        entry = series.pop(tenant_id, None)
        sources = entry[1] if entry is not None else set()
        if source is not None:
            sources.add(source)
        series[tenant_id] = (self.clock(), sources)
        self.forget_idle_tenants()

    def forget_idle_tenants(self) -> None:
        """Drop the counters of tenants idle for ``--history-ttl`` (the least recently active
        come first, so this stops at the first active one), and past ``MAX_TENANT_SERIES``
        those of the least recently active. A forgotten tenant's series start again from
        zero if it comes back, which Prometheus reads as a counter reset."""
        series = self._tenant_series
        idle_since = self.clock() - self.tenant_ttl
        while series:
            tenant_id, (moved, sources) = next(iter(series.items()))
            if moved >= idle_since and len(series) <= MAX_TENANT_SERIES:
                break
            del series[tenant_id]
            self.deliveries_by_tenant.pop(tenant_id, None)
            for source in sources:
                self.published_events.pop((source, tenant_id), None)

    def tenant_series(self) -> int:
        """Tenants whose counters are kept (with tenant labels)."""
        return len(self._tenant_series)

    def exposition(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)

    async def scrape(self) -> bytes:
        """What ``/metrics`` answers: this process's exposition, or under ``--workers`` every
        worker's (tornado_cfgpush.worker_peers sets ``peers``)."""
        own = self.exposition()
        return own if self.peers is None else await self.peers(own)


class _ServiceCollector(Collector):
    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return []  # built at scrape time; nothing to check for clashes

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        m.forget_idle_tenants()
        core = m.core
        hub = core.hub
        labels = ["transport", "tenant"] if m.tenant_labels else ["transport"]
        connections = GaugeMetricFamily("cfgpush_connections", "Open client connections", labels=labels)
        counts: dict[tuple[str, ...], int] = {}
        if not m.tenant_labels:
            counts = {(t,): 0 for t in TRANSPORTS}
        tenants = 0
        # Clients whose latest Ack says they could not apply an event (summary.py's ``failing``
        # without the newest event, which only the broker knows, asynchronously).
        failed = GaugeMetricFamily(
            "cfgpush_apply_failed_clients",
            "Clients whose latest Ack reports that applying an event failed"
            + (" (tenant labels: by tenant, with its most common reasons)" if m.tenant_labels else ""),
            labels=["tenant", "reason"] if m.tenant_labels else None,
        )
        failed_total = 0
        for tenant_id in list(hub.tenants()):
            conns = hub.connections(tenant_id)
            if conns:
                tenants += 1
            # The connections' one count (summary.py), as the status APIs report them.
            for transport, count in count_by_transport(conns).items():
                key = (transport, tenant_id) if m.tenant_labels else (transport,)
                counts[key] = counts.get(key, 0) + count
            errors = [e for e in (failing(sub) for sub in conns if not is_observer(sub)) if e is not None]
            failed_total += len(errors)
            if m.tenant_labels and errors:
                for why, n in top_reasons(errors):
                    failed.add_metric([tenant_id, why], n)
        for series, value in sorted(counts.items()):
            connections.add_metric(list(series), value)
        yield connections
        if not m.tenant_labels:
            failed.add_metric([], failed_total)
        yield failed
        yield GaugeMetricFamily(
            "cfgpush_tenants_with_clients", "Tenants with at least one open connection", value=tenants
        )

        published = CounterMetricFamily(
            "cfgpush_events_published",
            "Events accepted and published, by source",
            labels=["source", "tenant"] if m.tenant_labels else ["source"],
        )
        for series, value in sorted(m.published_events.items()):
            published.add_metric(list(series), value)
        yield published
        rejected = CounterMetricFamily(
            "cfgpush_events_rejected",
            "Events refused, by source and reason (invalid: the schema refused it; broker_unavailable: "
            "each attempt that could not be published)",
            labels=["source", "reason"],
        )
        for key, value in sorted(m.rejected_events.items()):
            rejected.add_metric(list(key), value)
        yield rejected

        if m.tenant_labels:
            deliveries = CounterMetricFamily("cfgpush_deliveries", "Events handed to a connection", labels=["tenant"])
            for tenant_id, value in sorted(m.deliveries_by_tenant.items()):
                deliveries.add_metric([tenant_id], value)
            yield deliveries
        else:
            yield CounterMetricFamily("cfgpush_deliveries", "Events handed to a connection", value=hub.deliveries)
        tls = m.tls
        if tls is not None:
            if tls.not_after is not None:
                yield GaugeMetricFamily(
                    "cfgpush_tls_certificate_expiry_timestamp_seconds",
                    "When the TLS certificate in use expires (Unix time): alert well before it",
                    value=tls.not_after,
                )
            reloads = CounterMetricFamily(
                "cfgpush_tls_reloads",
                "Changed --certfile/--keyfile pairs: loaded, or refused (the previous pair kept)",
                labels=["result"],
            )
            reloads.add_metric(["loaded"], tls.reloads)
            reloads.add_metric(["refused"], tls.failures)
            yield reloads
        yield CounterMetricFamily(
            "cfgpush_slow_client_disconnects",
            "Connections closed with 1013: unsent backlog over --max-backlog-bytes",
            value=hub.slow_closes,
        )
        yield CounterMetricFamily(
            "cfgpush_heartbeat_closes",
            "Connections dropped after --heartbeat-timeout of silence",
            value=hub.heartbeat_closes,
        )
        closes = CounterMetricFamily("cfgpush_connection_closes", "Connections ended, by reason", labels=["reason"])
        for reason, value in hub.closes.items():
            closes.add_metric([reason.label], value)
        yield closes

        files = CounterMetricFamily(
            "cfgpush_file_requests",
            "Requests of the files API (GET /api/v1/tenants/<tenant>/files...), by status",
            labels=["status"],
        )
        for status, value in sorted(m.file_requests.items()):
            files.add_metric([status], value)
        yield files
        yield CounterMetricFamily(
            "cfgpush_file_bytes_sent", "Body bytes the files API sent (compressed where it was)", value=m.file_bytes
        )

        runner = core.runner
        restarts = CounterMetricFamily(
            "cfgpush_source_restarts", "Event sources restarted after a crash", labels=["source"]
        )
        up = GaugeMetricFamily("cfgpush_source_up", "1 while the event source runs", labels=["source"])
        lag = GaugeMetricFamily(
            "cfgpush_source_publish_lag_seconds",
            "How long the oldest change of the source has waited to be published",
            labels=["source"],
        )
        if runner is not None:
            for source in runner.sources:
                restarts.add_metric([source.name], runner.restarts.get(source.name, 0))
                up.add_metric([source.name], 1 if source.name in runner.running else 0)
                lag.add_metric([source.name], runner.publish_lag(source))
        yield restarts
        yield up
        yield lag
        yield GaugeMetricFamily(
            "cfgpush_broker_up", "1 when the broker is reachable", value=0 if core.broker.readiness() else 1
        )
        state = core.broker.state()
        yield GaugeMetricFamily(
            "cfgpush_broker_tenants",
            "Tenants the broker keeps state for in this process (embedded: history and "
            "idempotence record; Redis: delivery cursors of tenants with local clients)",
            value=state.tenants,
        )
        if state.history_bytes is not None:
            yield GaugeMetricFamily(
                "cfgpush_history_bytes",
                "What the embedded broker's kept history and idempotence records count for against --history-max-bytes",
                value=state.history_bytes,
            )
            yield GaugeMetricFamily(
                "cfgpush_history_max_bytes", "--history-max-bytes", value=core.settings.history_max_bytes
            )
        dropped = CounterMetricFamily(
            "cfgpush_broker_tenants_dropped",
            "Tenants' records the broker dropped (expired: no event for --history-ttl; "
            "memory: past --history-max-bytes)",
            labels=["reason"],
        )
        for why, value in sorted(state.dropped.items()):
            dropped.add_metric([why], value)
        yield dropped
        if state.history_bytes is not None:
            yield CounterMetricFamily(
                "cfgpush_history_evicted_events",
                "Events dropped from the history before --history-ttl to stay within "
                "--history-max-bytes (the oldest of all tenants first)",
                value=state.evicted_events,
            )
        info = GaugeMetricFamily("cfgpush_build_info", "The running version", labels=["version", "broker"])
        info.add_metric([__version__, "redis" if core.settings.broker else "memory"], 1)
        yield info
        yield GaugeMetricFamily("cfgpush_start_time_seconds", "Start of this service, Unix time", value=m.started)

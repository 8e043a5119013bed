"""Controller metrics for Prometheus, served at the admin API's /metrics.

The registry is passed in, never a global one. Events are counted by
observers: XdsMetrics of the protocol engine, HealthMetrics of the probes,
AdminMetrics of admin requests (an aiohttp middleware in admin/metrics.py).
State (connected proxies, open streams, generation, backend verdicts) is read
by a collector at scrape time, so nothing can drift from the truth.
Push-to-ACK is measured to the ACK, not to the send.

Every labelled counter that can stay at zero (NACKs above all) is created
for each known label value at start, so a dashboard shows 0, not "no data".
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, SummaryMetricFamily
from prometheus_client.registry import Collector

from xds_server.health.verdict import CONTROLLER, BackendHealth, ProbeResult
from xds_server.model.health_checker import HealthChecker
from xds_server.model.intent import Health
from xds_server.resources import SHORT_NAMES
from xds_server.telemetry.models import ModelTraffic
from xds_server.xds.observe import StreamInfo
from xds_server.xds.status import ProxyStatus

PREFIX = "xds_server"
CONVERGENCE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15)
BUILD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)
PROBE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
ADMIN_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60)
STREAM_KINDS = ("ads", "cds", "eds", "lds", "rds")


def _short(type_url: str) -> str:
    return SHORT_NAMES.get(type_url, "other")


class XdsMetrics:
    """Counts protocol events; an XdsObserver."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.responses = Counter(
            f"{PREFIX}_xds_responses", "xDS responses sent", ["type"], registry=registry
        )
        self.acks = Counter(f"{PREFIX}_xds_acks", "xDS ACKs received", ["type"], registry=registry)
        self.nacks = Counter(
            f"{PREFIX}_xds_nacks",
            "xDS NACKs received (config rejected)",
            ["type"],
            registry=registry,
        )
        self.stale = Counter(
            f"{PREFIX}_xds_stale_nonces",
            "requests ignored for carrying a stale nonce",
            ["type"],
            registry=registry,
        )
        self.streams = Counter(
            f"{PREFIX}_xds_streams_opened", "xDS streams opened", ["kind"], registry=registry
        )
        self.convergence = Histogram(
            f"{PREFIX}_xds_push_to_ack_seconds",
            "time from sending a response to receiving its ACK",
            ["type"],
            buckets=CONVERGENCE_BUCKETS,
            registry=registry,
        )
        self._sent_at: dict[tuple[int, str], float] = {}
        for short in SHORT_NAMES.values():
            for counter in (self.responses, self.acks, self.nacks, self.stale):
                counter.labels(short)
        for kind in STREAM_KINDS:
            self.streams.labels(kind)

    def stream_opened(self, info: StreamInfo) -> None:
        self.streams.labels(info.kind).inc()

    def stream_closed(self, info: StreamInfo) -> None:
        for key in [k for k in self._sent_at if k[0] == info.stream_id]:
            del self._sent_at[key]

    def response_sent(
        self, info: StreamInfo, type_url: str, version: str, names: Sequence[str], generation: int
    ) -> None:
        self.responses.labels(_short(type_url)).inc()
        self._sent_at[(info.stream_id, type_url)] = time.monotonic()

    def acked(self, info: StreamInfo, type_url: str, version: str, generation: int) -> None:
        self.acks.labels(_short(type_url)).inc()
        sent = self._sent_at.pop((info.stream_id, type_url), None)
        if sent is not None:
            self.convergence.labels(_short(type_url)).observe(time.monotonic() - sent)

    def nacked(
        self, info: StreamInfo, type_url: str, version: str, message: str, generation: int
    ) -> None:
        self.nacks.labels(_short(type_url)).inc()
        self._sent_at.pop((info.stream_id, type_url), None)

    def up_to_date(self, info: StreamInfo, type_url: str, generation: int) -> None:
        pass

    def stale_nonce(self, info: StreamInfo, type_url: str) -> None:
        self.stale.labels(_short(type_url)).inc()


class PublishMetrics:
    """Snapshot builds: how long, and how many."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.build = Histogram(
            f"{PREFIX}_snapshot_build_seconds",
            "translate + serialize + check of one snapshot",
            buckets=BUILD_BUCKETS,
            registry=registry,
        )

    def observe_build(self, seconds: float) -> None:
        self.build.observe(seconds)


class HealthMetrics:
    """Probe durations and outcomes per backend; a HealthObserver."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.duration = Histogram(
            f"{PREFIX}_probe_duration_seconds",
            "duration of one health probe (connect included), pass or fail",
            ["backend"],
            buckets=PROBE_BUCKETS,
            registry=registry,
        )
        self.probes = Counter(
            f"{PREFIX}_probes",
            "health probes by outcome",
            ["backend", "result"],
            registry=registry,
        )
        self.changes = Counter(
            f"{PREFIX}_health_verdict_changes",
            "health verdict changes by the verdict reached",
            ["backend", "verdict"],
            registry=registry,
        )

    def probed(self, name: str, result: ProbeResult) -> None:
        self.duration.labels(name).observe(result.elapsed_s)
        self.probes.labels(name, "pass" if result.ok else "fail").inc()

    def verdict_changed(
        self, name: str, previous: Health, current: Health, result: ProbeResult
    ) -> None:
        self.changes.labels(name, str(current)).inc()


class AdminMetrics:
    """Admin API requests by route template (never the raw path: unbounded), method, status."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            f"{PREFIX}_admin_requests",
            "admin API requests answered",
            ["route", "method", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            f"{PREFIX}_admin_request_duration_seconds",
            "time to answer an admin API request",
            ["route", "method"],
            buckets=ADMIN_BUCKETS,
            registry=registry,
        )

    def answered(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.duration.labels(route, method).observe(seconds)


@dataclass(frozen=True)
class StateReaders:
    """Where the scrape-time collector reads the controller's state."""

    generation: Callable[[], int]
    connected_proxies: Callable[[], int]
    open_streams: Callable[[], int]
    nacked_proxies: Callable[[], int]
    # (service, backend, verdict) for every backend of the current intent
    backend_verdicts: Callable[[], Iterable[tuple[str, str, Health]]]
    # the OpenAI front door's totals per declared model (telemetry/models.py)
    model_traffic: Callable[[], Iterable[ModelTraffic]] = tuple
    # (service, backend, proxies whose outlier detection ejects it now) (telemetry/passive.py)
    ejecting_proxies: Callable[[], Iterable[tuple[str, str, int]]] = tuple
    # (service, backend, ejections seen since start: one per proxy and ejection)
    ejections_seen: Callable[[], Iterable[tuple[str, str, int]]] = tuple
    # (service, backend, state) for every backend with a health state (checked_by)
    backend_states: Callable[[], Iterable[tuple[str, str, BackendHealth]]] = tuple


class StateCollector(Collector):
    def __init__(self, readers: StateReaders) -> None:
        self._readers = readers

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | SummaryMetricFamily]:
        r = self._readers
        yield GaugeMetricFamily(
            f"{PREFIX}_snapshot_generation", "generation of the published snapshot", r.generation()
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_connected_proxies", "proxies with an open xDS stream", r.connected_proxies()
        )
        yield GaugeMetricFamily(f"{PREFIX}_xds_open_streams", "open xDS streams", r.open_streams())
        yield GaugeMetricFamily(
            f"{PREFIX}_proxies_with_nack",
            "connected proxies whose latest response of some type was rejected",
            r.nacked_proxies(),
        )
        yield self._backends()
        yield from checker_families(r.backend_states())
        yield from passive_families(r.ejecting_proxies(), r.ejections_seen())
        yield from model_families(self._readers.model_traffic())

    def _backends(self) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            f"{PREFIX}_backend_healthy",
            "controller probe verdict: 1 healthy, 0 unhealthy or not probed yet",
            labels=["service", "backend"],
        )
        for service, backend, verdict in self._readers.backend_verdicts():
            family.add_metric([service, backend], 1.0 if verdict is Health.HEALTHY else 0.0)
        return family


def checker_families(
    states: Iterable[tuple[str, str, BackendHealth]],
) -> Iterator[GaugeMetricFamily]:
    """Who checks each backend: label `checker` is "controller" or "envoy" (the
    Envoys' node ids are not labels: proxies come and go, the label set must stay
    bounded; the health report names them)."""
    labels = ["service", "backend", "checker"]
    counted = GaugeMetricFamily(
        f"{PREFIX}_backend_checkers",
        "checkers whose results the backend's verdict rests on, by kind",
        labels=labels,
    )
    latest = GaugeMetricFamily(
        f"{PREFIX}_backend_last_report_timestamp_seconds",
        "when the newest result of that kind of checker arrived (epoch seconds)",
        labels=labels,
    )
    for service, backend, state in states:
        # The report times of the checkers that count, by kind (controller | envoy).
        by_kind: dict[str, list[float]] = {kind.value: [] for kind in HealthChecker}
        for checker in state.checked_by:
            kind = CONTROLLER if checker == CONTROLLER else HealthChecker.ENVOY.value
            if (at := state.reported_at.get(checker)) is not None:
                by_kind[kind].append(at)
        for kind, times in by_kind.items():
            counted.add_metric([service, backend, kind], len(times))
            if times:
                latest.add_metric([service, backend, kind], max(times))
    yield from (counted, latest)


def passive_families(
    ejecting: Iterable[tuple[str, str, int]], seen: Iterable[tuple[str, str, int]]
) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
    """Envoy's passive view per backend: labels service and backend only (never a
    node id: proxies come and go, the label set must stay bounded)."""
    labels = ["service", "backend"]
    gauge = GaugeMetricFamily(
        f"{PREFIX}_backend_ejecting_proxies",
        "connected proxies whose outlier detection ejects the backend, as last read",
        labels=labels,
    )
    for service, backend, count in ejecting:
        gauge.add_metric([service, backend], count)
    counter = CounterMetricFamily(
        f"{PREFIX}_outlier_ejections_seen",
        "outlier ejections seen in the proxies' admin readings (one per proxy and ejection)",
        labels=labels,
    )
    for service, backend, count in seen:
        counter.add_metric([service, backend], count)
    yield from (gauge, counter)


def model_families(
    traffic: Iterable[ModelTraffic],
) -> Iterator[CounterMetricFamily | SummaryMetricFamily]:
    """The front door per model, read from Envoy's route stats: labels model and
    service, one series per declared model (a bounded set), zeros included."""
    labels = ["model", "service"]
    requests = CounterMetricFamily(
        f"{PREFIX}_model_requests",
        "OpenAI front door requests Envoy answered, by the body's model",
        labels=labels,
    )
    failed = CounterMetricFamily(
        f"{PREFIX}_model_failed_requests",
        "OpenAI front door requests answered with a 5xx, by model",
        labels=labels,
    )
    streamed = CounterMetricFamily(
        f"{PREFIX}_model_streamed_responses",
        "OpenAI front door requests with stream: true, by model",
        labels=labels,
    )
    upstream = SummaryMetricFamily(
        f"{PREFIX}_model_upstream_seconds",
        "Envoy's upstream time per attempt (to the response's end), by model",
        labels=labels,
    )
    durations = SummaryMetricFamily(
        f"{PREFIX}_model_stream_duration_seconds",
        "upstream time of streamed answers (first byte sent to last byte received), by model",
        labels=labels,
    )
    for t in traffic:
        values = [t.model, t.service]
        requests.add_metric(values, t.requests)
        failed.add_metric(values, t.errors)
        streamed.add_metric(values, t.streamed)
        upstream.add_metric(values, int(t.upstream_count), t.upstream_ms_sum / 1000)
        durations.add_metric(values, int(t.streamed_count), t.streamed_ms_sum / 1000)
    yield from (requests, failed, streamed, upstream, durations)


def rejecting(proxies: Iterable[ProxyStatus]) -> int:
    """Proxies whose latest response of some type was NACKed (nothing newer sent since)."""
    return sum(
        1
        for p in proxies
        if any(
            s.last_nack is not None and s.last_nack.version == s.version_sent
            for s in p.types.values()
        )
    )


class ControllerMetrics:
    """Every controller metric, registered in the one registry passed in."""

    def __init__(self, registry: CollectorRegistry, readers: StateReaders) -> None:
        self.registry = registry
        self.xds = XdsMetrics(registry)
        self.publish = PublishMetrics(registry)
        self.health = HealthMetrics(registry)
        self.admin = AdminMetrics(registry)
        registry.register(StateCollector(readers))

"""GET /api/v1/router/metrics: the spec's routing metrics, every figure read from Envoy.

A TrafficSampler reads the admin API of every connected proxy (its address
comes from the proxy's node metadata) every SAMPLE_INTERVAL_S, and once more
when the metrics are asked for, into a TrafficBook (xds_server/telemetry/traffic.py),
which keeps monotonic totals across Envoy's counter resets. `report` shapes
the book, the latest readings and the failover events into the spec's JSON;
the OpenAPI description (admin/metrics.py) defines every figure.

Where the totals live is the sampler's `Ledger`: `MemoryLedger` (the book
itself) or, with a Redis store, `RedisLedger` (xds_server/telemetry/shared.py),
which keeps the totals and each proxy's last reading in Redis, so they survive
a controller restart and several replicas add to the same totals. Each replica
reads only the proxies connected to it (an Envoy holds one ADS stream, so it is
read by exactly one replica), never every proxy of the fleet.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

from xds_server.model.intent import Intent, Service
from xds_server.telemetry.envoy_stats import RQ_TIME, TrafficReading
from xds_server.telemetry.failover import FailoverEvent, summary
from xds_server.telemetry.models import model_traffic, models_report
from xds_server.telemetry.traffic import BackendTotals, Point, TrafficBook
from xds_server.timefmt import iso_utc

log = logging.getLogger("xds_server.metrics")

# What each block counts, said in the answer itself: a retried request is one
# client request but two upstream attempts, so the distribution can sum higher.
COUNTED_REQUESTS = "client requests: a retried request counts once"
COUNTED_ATTEMPTS = (
    "upstream attempts: every try, retries included, so total_attempts can exceed "
    "routing_metrics.total_requests"
)


def report(
    book: TrafficBook,
    readings: Sequence[TrafficReading],
    intent: Intent,
    events: Iterable[FailoverEvent],
    now: float,
    service: Service | None = None,
) -> dict[str, Any]:
    """The spec's routing metrics, for every service or only `service`."""
    services = intent.services if service is None else (service,)
    names = {s.name for s in services}
    return {
        "routing_metrics": routing_metrics(book, names, now),
        "load_balancing": load_balancing(book, intent, services),
        "circuit_breakers": circuit_breakers(book, readings, services),
        "failover_events": summary(events),
        "proxies": proxies_read(readings),
        "models": models_report(
            t for t in model_traffic(book, intent) if service is None or t.service in names
        ),
    }


def routing_metrics(book: TrafficBook, clusters: set[str], now: float) -> dict[str, Any]:
    total = book.cluster_total("upstream_rq_completed", clusters)
    failed = book.failed(clusters)
    overloaded = book.cluster_total("upstream_rq_pending_overflow", clusters)
    overloaded += book.cluster_total("upstream_rq_active_overflow", clusters)
    window = book.window(now)
    return {
        "counted": COUNTED_REQUESTS,
        "total_requests": int(total),
        "successful_requests": int(total - failed),
        "failed_requests": int(failed),
        "overloaded_requests": int(overloaded),
        "success_rate": round(100 * (total - failed) / total, 2) if total else None,
        **windowed(window, clusters),
        "since": iso_utc(book.first_reading_at) if book.first_reading_at else None,
    }


def windowed(window: tuple[Point, Point] | None, clusters: set[str]) -> dict[str, Any]:
    """Rates over the window: requests per second and mean upstream response time.

    Envoy records upstream_rq_time in whole milliseconds, truncated: a backend on
    loopback mostly records 0, and the mean over a window can be a few hundredths
    of a millisecond. Hence three decimals: rounded to one, such a mean read as
    0.0, as if nothing had been measured."""
    if window is None:
        return {"avg_response_time_ms": None, "requests_per_second": None, "window_s": 0.0}
    first, last = window
    span = last.at - first.at
    requests = last.total("upstream_rq_completed", clusters) - first.total(
        "upstream_rq_completed", clusters
    )
    timed = last.total(f"{RQ_TIME}_count", clusters) - first.total(f"{RQ_TIME}_count", clusters)
    spent = last.total(f"{RQ_TIME}_sum", clusters) - first.total(f"{RQ_TIME}_sum", clusters)
    return {
        "avg_response_time_ms": round(spent / timed, 3) if timed > 0 else None,
        "requests_per_second": round(requests / span, 2),
        "window_s": round(span, 1),
    }


def load_balancing(
    book: TrafficBook, intent: Intent, services: Sequence[Service]
) -> dict[str, Any]:
    distribution: dict[str, dict[str, Any]] = {}
    variances: dict[str, float | None] = {}
    for service in services:
        shares = service_shares(book, service)
        distribution.update(shares)
        variances[service.name] = variance([s["percentage"] for s in shares.values()])
    measured = [v for s, v in variances.items() if v is not None and _spread(intent, s)]
    only = services[0] if len(services) == 1 else None
    return {
        "strategy": str(intent.strategy_of(only) if only else intent.default_strategy),
        "strategies": {s.name: str(intent.strategy_of(s)) for s in services},
        "counted": COUNTED_ATTEMPTS,
        "total_attempts": sum(share["requests"] for share in distribution.values()),
        "backend_distribution": distribution,
        "distribution_variance": max(measured) if measured else None,
        "distribution_variance_by_service": variances,
    }


def service_shares(book: TrafficBook, service: Service) -> dict[str, dict[str, Any]]:
    """Requests each backend took (every attempt, retries included) and its share
    of the service's requests, in percent."""
    taken = {b.name: _totals(book, service.name, b.name).rq_total for b in service.backends}
    total = sum(taken.values())
    return {
        name: {
            "requests": int(count),
            "percentage": round(100 * count / total, 2) if total else 0.0,
            "service": service.name,
        }
        for name, count in taken.items()
    }


def variance(percentages: Sequence[float]) -> float | None:
    """Population variance of the backends' shares, in percentage points squared:
    0.0 is a perfectly even split. None when the service took no requests."""
    if not percentages or sum(percentages) == 0:
        return None
    return round(statistics.pvariance(percentages), 2)


def circuit_breakers(
    book: TrafficBook, readings: Sequence[TrafficReading], services: Sequence[Service]
) -> dict[str, dict[str, Any]]:
    """Per backend: open while some proxy's outlier detection ejects it; failures
    counted by Envoy (5xx answers and failed connects) since the controller started."""
    read = [r for r in readings if r.error is None]
    breakers = {}
    for service in services:
        for backend in service.backends:
            totals = _totals(book, service.name, backend.name)
            breakers[backend.name] = {
                "status": breaker_state(read, service.name, backend.name),
                "failure_count": int(totals.rq_error),
                "last_failure": iso_utc(totals.last_failure_at) if totals.last_failure_at else None,
            }
    return breakers


def breaker_state(readings: Sequence[TrafficReading], cluster: str, backend: str) -> str:
    if not readings:
        return "unknown"
    ejected = any(
        h.health.get("failed_outlier_check")
        for r in readings
        for h in r.hosts
        if h.cluster == cluster and h.hostname == backend
    )
    return "open" if ejected else "closed"


def proxies_read(readings: Sequence[TrafficReading]) -> dict[str, Any]:
    return {
        "read": sorted(r.node_id for r in readings if r.error is None),
        "unreadable": [
            {"node_id": r.node_id, "envoy_admin": r.envoy_admin, "error": r.error}
            for r in readings
            if r.error is not None
        ],
    }


def _totals(book: TrafficBook, cluster: str, backend: str) -> BackendTotals:
    return book.backends.get((cluster, backend), BackendTotals())


def _spread(intent: Intent, name: str) -> bool:
    service = intent.service(name)
    return service is not None and len(service.backends) > 1

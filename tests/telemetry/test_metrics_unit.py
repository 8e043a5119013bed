"""Routing metrics and controller metrics without Envoy: counter accounting across
resets, the report's figures, failover timing, structured log lines, /metrics and
ROUTER_METRICS_ENABLED=false."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp
import pytest

from tests.factories import local_settings, running_controller
from xds_server.app import Controller
from xds_server.cache import Snapshot
from xds_server.health.local import LocalHealth
from xds_server.health.verdict import ProbeResult
from xds_server.model.intent import Backend, Health, Intent, Service
from xds_server.resources import CLUSTER, ENDPOINT
from xds_server.telemetry.envoy_stats import HostStats, TrafficReading, parse_cluster_stats
from xds_server.telemetry.failover import FailoverEvent, FailoverTracker, summary
from xds_server.telemetry.logs import JsonFormatter, XdsEventLog
from xds_server.telemetry.routing import report
from xds_server.telemetry.traffic import TrafficBook
from xds_server.xds.observe import StreamInfo
from xds_server.xds.status import ProxyRegistry

QDRANT = Service(
    "qdrant",
    ("/api/v1/vectors/",),
    (Backend("qdrant-primary", "127.0.0.1", 1), Backend("qdrant-secondary", "127.0.0.1", 2)),
)
INTENT = Intent(services=(QDRANT,))


def host(name: str, total: int, error: int = 0, **health: object) -> HostStats:
    counters = {"rq_total": total, "rq_success": total - error, "rq_error": error}
    return HostStats("qdrant", name, f"{name}:1", counters, health)


def reading(
    *hosts: HostStats, built: str = "t0", node: str = "envoy-a", **clusters: float
) -> TrafficReading:
    return TrafficReading(
        node,
        "127.0.0.1:9901",
        hosts=hosts,
        clusters={("qdrant", k): v for k, v in clusters.items()},
        built={"qdrant": built},
    )


def book_of(*readings: TrafficReading, step_s: float = 1.0) -> TrafficBook:
    book = TrafficBook()
    for i, each in enumerate(readings):
        book.apply([each], {"qdrant"}, at=i * step_s, wall=1_700_000_000.0 + i)
    return book


def backend_total(book: TrafficBook, name: str, counter: str = "rq_total") -> float:
    return float(getattr(book.backends[("qdrant", name)], counter))


# --- accounting across Envoy's counter resets ------------------------------------------------


def test_growth_counts_and_first_sight_counts_in_full() -> None:
    """A host first seen counts its whole value; afterwards only its growth counts."""
    book = book_of(reading(host("qdrant-primary", 5)), reading(host("qdrant-primary", 12)))
    assert backend_total(book, "qdrant-primary") == 12


def test_cluster_rebuild_counts_the_new_hosts_in_full() -> None:
    """After a rebuild (last_updated changed) the host restarted from 0: its whole
    value counts even when it already grew past the old one."""
    book = book_of(
        reading(host("qdrant-primary", 10), built="t0"),
        reading(host("qdrant-primary", 15), built="t1"),
    )
    assert backend_total(book, "qdrant-primary") == 25


def test_a_counter_that_went_down_restarted() -> None:
    """A smaller value than last time means the counter restarted (Envoy restart)."""
    book = book_of(reading(upstream_rq_completed=40), reading(upstream_rq_completed=3), step_s=1.0)
    assert book.cluster_total("upstream_rq_completed") == 43


def test_a_stat_that_vanished_and_came_back_counts_in_full() -> None:
    """upstream_rq_5xx disappears with the old cluster; when it comes back it started at 0."""
    book = book_of(reading(upstream_rq_5xx=4), reading(), reading(upstream_rq_5xx=6), step_s=1.0)
    assert book.failed() == 10


def test_unreadable_proxies_and_foreign_clusters_are_not_counted() -> None:
    """A reading with an error adds nothing; clusters outside the intent are ignored."""
    book = TrafficBook()
    broken = TrafficReading("envoy-b", None, error="refused")
    admin = TrafficReading(
        "envoy-a", "x", clusters={("xds-server-admin", "upstream_rq_completed"): 9}
    )
    book.apply([broken, admin, reading(upstream_rq_completed=2)], {"qdrant"}, 0.0, 0.0)
    assert book.cluster_total("upstream_rq_completed") == 2


def test_proxies_are_summed() -> None:
    """Two proxies' counters for the same backend add up."""
    book = TrafficBook()
    a = reading(host("qdrant-primary", 3), node="envoy-a")
    b = reading(host("qdrant-primary", 4), node="envoy-b")
    book.apply([a, b], {"qdrant"}, 0.0, 0.0)
    assert backend_total(book, "qdrant-primary") == 7


def test_rates_cover_only_the_last_window() -> None:
    """Requests per second are over the last WINDOW_S: a burst two minutes ago
    does not count, the last second's 10 requests do."""
    book = TrafficBook()
    for at, completed in ((0.0, 0), (1.0, 500), (120.0, 500), (121.0, 510)):
        book.apply([reading(upstream_rq_completed=completed)], {"qdrant"}, at, at)
    body = report(book, [], INTENT, [], now=121.0)["routing_metrics"]
    assert (body["requests_per_second"], body["window_s"]) == (10.0, 1.0)
    assert body["total_requests"] == 510


def test_prometheus_text_parsing_keeps_only_the_known_cluster_figures() -> None:
    """Envoy's Prometheus lines -> (cluster, figure); histogram sum/count kept, buckets not."""
    text = "\n".join(
        [
            "# TYPE envoy_cluster_upstream_rq_completed counter",
            'envoy_cluster_upstream_rq_completed{envoy_cluster_name="qdrant"} 12',
            'envoy_cluster_upstream_rq_time_bucket{envoy_cluster_name="qdrant",le="5"} 3',
            'envoy_cluster_upstream_rq_time_sum{envoy_cluster_name="qdrant"} 30.5',
            'envoy_cluster_upstream_rq_time_count{envoy_cluster_name="qdrant"} 3',
            'envoy_cluster_upstream_cx_total{envoy_cluster_name="qdrant"} 3',
        ]
    )
    assert parse_cluster_stats(text) == {
        ("qdrant", "upstream_rq_completed"): 12,
        ("qdrant", "upstream_rq_time_sum"): 30.5,
        ("qdrant", "upstream_rq_time_count"): 3,
    }


# --- the report ----------------------------------------------------------------------------------


def test_report_figures() -> None:
    """Totals, success rate, window rates, shares, variance, breaker state and failures."""
    first = reading(
        host("qdrant-primary", 0),
        host("qdrant-secondary", 0),
        upstream_rq_completed=0,
        upstream_rq_time_sum=0,
        upstream_rq_time_count=0,
    )
    last = reading(
        host("qdrant-primary", 60, error=2, failed_outlier_check=True),
        host("qdrant-secondary", 40),
        upstream_rq_completed=100,
        upstream_rq_5xx=4,
        upstream_rq_pending_overflow=1,
        upstream_rq_active_overflow=1,
        upstream_rq_time_sum=500.0,
        upstream_rq_time_count=100,
    )
    book = book_of(first, last, step_s=4.0)
    body = report(book, [last], INTENT, [], now=4.0)
    assert body["routing_metrics"] | {"since": None} == {
        "counted": "client requests: a retried request counts once",
        "total_requests": 100,
        "successful_requests": 96,
        "failed_requests": 4,
        "overloaded_requests": 2,
        "success_rate": 96.0,
        "avg_response_time_ms": 5.0,
        "requests_per_second": 25.0,
        "window_s": 4.0,
        "since": None,
    }
    lb = body["load_balancing"]
    # Attempts, retries included: 60 + 40 here (a test below has retries).
    assert lb["counted"].startswith("upstream attempts") and lb["total_attempts"] == 100
    assert lb["backend_distribution"]["qdrant-primary"] == {
        "requests": 60,
        "percentage": 60.0,
        "service": "qdrant",
    }
    assert lb["distribution_variance"] == 100.0  # shares 60 / 40: (10^2 + 10^2) / 2
    primary = body["circuit_breakers"]["qdrant-primary"]
    assert (primary["status"], primary["failure_count"]) == ("open", 2)
    assert primary["last_failure"].startswith("2023-11-14T22:13:21")
    assert body["circuit_breakers"]["qdrant-secondary"]["status"] == "closed"
    assert body["proxies"] == {"read": ["envoy-a"], "unreadable": []}


def test_mean_response_time_below_a_millisecond_is_not_rounded_away() -> None:
    """Envoy records whole milliseconds: on loopback most requests record 0 and the
    mean can be 0.04 ms. It stays visible, and a window in which Envoy flushed no
    histogram sample (count unchanged) has no mean (null), not 0.0."""
    zero = {"upstream_rq_time_sum": 0, "upstream_rq_time_count": 0}
    flushed = {"upstream_rq_time_sum": 4.0, "upstream_rq_time_count": 100}
    for figures, expected in ((flushed, 0.04), (zero, None)):
        first = reading(host("qdrant-primary", 0), upstream_rq_completed=0, **zero)
        last = reading(host("qdrant-primary", 100), upstream_rq_completed=100, **figures)
        body = report(book_of(first, last, step_s=1.0), [last], INTENT, [], now=1.0)
        assert body["routing_metrics"]["avg_response_time_ms"] == expected


def test_retries_make_attempts_exceed_client_requests_and_the_answer_says_so() -> None:
    """74 client requests, 10 of which failed once on the primary and were retried
    on the secondary: 74 requests, 84 attempts, each block naming what it counts."""
    first = reading(host("qdrant-primary", 0), host("qdrant-secondary", 0), upstream_rq_completed=0)
    last = reading(
        host("qdrant-primary", 30, error=10),
        host("qdrant-secondary", 54),
        upstream_rq_completed=74,
    )
    body = report(book_of(first, last), [last], INTENT, [], now=1.0)
    requests, lb = body["routing_metrics"], body["load_balancing"]
    assert (requests["total_requests"], lb["total_attempts"]) == (74, 84)
    assert sum(b["requests"] for b in lb["backend_distribution"].values()) == 84
    assert "client requests" in requests["counted"]
    assert "retries included" in lb["counted"] and "total_requests" in lb["counted"]


def test_report_without_traffic_or_proxies_says_so() -> None:
    """No reading: no rates (null), no variance (null), breakers unknown."""
    body = report(TrafficBook(), [], INTENT, [], now=0.0)
    assert body["routing_metrics"]["success_rate"] is None
    assert body["routing_metrics"]["requests_per_second"] is None
    assert body["load_balancing"]["distribution_variance"] is None
    assert body["circuit_breakers"]["qdrant-primary"]["status"] == "unknown"


# --- failover events ------------------------------------------------------------------------------


def test_failover_summary_counts_successes_and_averages_their_times() -> None:
    """Successful events are counted apart; the average is over timed events; the
    last failover is the latest event; events are counted by source."""
    events = [
        FailoverEvent("failover_test", "qdrant-primary", 100.0, True, 120.0),
        FailoverEvent("circuit_breaker_test", "qdrant-primary", 200.0, True, 80.0),
        FailoverEvent("failover_test", "qdrant-primary", 300.0, False, None),
    ]
    figures = summary(events)
    assert figures["total_failovers"] == 3
    assert figures["successful_failovers"] == 2
    assert figures["avg_failover_time_ms"] == 100.0
    assert figures["last_failover"] == "1970-01-01T00:05:00.000Z"
    assert figures["by_source"] == {
        "health_check": 0,
        "failover_test": 2,
        "circuit_breaker_test": 1,
    }


def stream(node: str = "envoy-a") -> StreamInfo:
    return StreamInfo(stream_id=1, kind="ads", node_id=node, node_cluster="c", envoy_admin=None)


def empty_snapshot(generation: int) -> Snapshot:
    return Snapshot(generation=generation, types={})


@pytest.fixture
def tracked() -> tuple[FailoverTracker, ProxyRegistry, Any, dict[str, Health]]:
    from xds_server.cache import SnapshotCache

    cache, proxies = SnapshotCache(), ProxyRegistry()
    verdicts: dict[str, Health] = {"qdrant-secondary": Health.HEALTHY}
    tracker = FailoverTracker(cache, proxies, lambda: INTENT, lambda: verdicts)
    return tracker, proxies, cache, verdicts


FAILED = ProbeResult(ok=False, definitive=True, elapsed_s=0.001, at=0.0, error="HTTP 503")


async def test_verdict_failover_is_timed_to_the_last_ack(
    tracked: tuple[FailoverTracker, ProxyRegistry, Any, dict[str, Health]],
) -> None:
    """From the verdict change until the proxy ACKed the next generation: the
    event is successful (a backup was healthy) and its time covers both waits."""
    tracker, proxies, cache, _ = tracked
    info = stream()
    proxies.stream_opened(info)
    runner = asyncio.create_task(tracker.run())
    try:
        tracker.verdict_changed("qdrant-primary", Health.HEALTHY, Health.UNHEALTHY, FAILED)
        await asyncio.sleep(0.05)
        await cache.publish(empty_snapshot(1))
        proxies.response_sent(info, ENDPOINT, "v1", ["qdrant"], 1)
        await asyncio.sleep(0.05)
        assert not tracker.events  # not ACKed yet
        proxies.acked(info, ENDPOINT, "v1", 1)
        proxies.up_to_date(info, CLUSTER, 1)
        await asyncio.sleep(0.01)
    finally:
        runner.cancel()
    [event] = tracker.events
    assert event.successful and event.backend == "qdrant-primary"
    assert event.failover_time_ms is not None and 100 <= event.failover_time_ms < 1000


async def test_verdict_failover_without_backup_fails_and_without_proxy_is_no_event(
    tracked: tuple[FailoverTracker, ProxyRegistry, Any, dict[str, Health]],
) -> None:
    """With the only other backend unhealthy the failover is unsuccessful; with no
    proxy connected no traffic moved, so there is no event at all."""
    tracker, proxies, cache, verdicts = tracked
    tracker.verdict_changed("qdrant-primary", Health.HEALTHY, Health.UNHEALTHY, FAILED)
    assert not tracker._pending  # no proxy connected
    info = stream()
    proxies.stream_opened(info)
    verdicts["qdrant-secondary"] = Health.UNHEALTHY
    runner = asyncio.create_task(tracker.run())
    try:
        tracker.verdict_changed("qdrant-primary", Health.HEALTHY, Health.UNHEALTHY, FAILED)
        await asyncio.sleep(0.01)
        await cache.publish(empty_snapshot(1))
        proxies.response_sent(info, ENDPOINT, "v1", ["qdrant"], 1)
        proxies.acked(info, ENDPOINT, "v1", 1)
        await asyncio.sleep(0.01)
    finally:
        runner.cancel()
    [event] = tracker.events
    assert not event.successful and event.failover_time_ms is not None


# --- structured logs ----------------------------------------------------------------------------


def test_json_log_lines_carry_proxy_id_and_version() -> None:
    """With the JSON formatter an ACK is one JSON object with node_id, type and version."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("xds_server.xds")
    handler, level = Keep(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        XdsEventLog().acked(stream("envoy-7"), CLUSTER, "abc123", 4)
        XdsEventLog().nacked(stream("envoy-7"), ENDPOINT, "def456", "bad endpoint", 5)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    ack, nack = (json.loads(JsonFormatter().format(r)) for r in records)
    assert ack["node_id"] == "envoy-7" and ack["version"] == "abc123" and ack["type"] == "cds"
    assert ack["level"] == "debug" and ack["generation"] == 4 and ack["ack"] is True
    assert nack["level"] == "warning" and nack["ack"] is False and nack["type"] == "eds"
    assert "bad endpoint" in nack["message"]


# --- /metrics and the switch ---------------------------------------------------------------------


async def get(controller: Controller, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://{controller.admin_address}{path}") as response,
    ):
        return response.status, await response.text()


async def test_prometheus_metrics_use_route_templates_and_show_zero_nacks() -> None:
    """/metrics is Prometheus text: NACK counters exist at 0 per type, verdicts per
    backend, and admin requests are labelled by route template, not raw path."""
    async with running_controller(local_settings()) as controller:
        assert (await get(controller, "/api/v1/router/services/qdrant/backends"))[0] == 200
        assert (await get(controller, "/no/such/path"))[0] == 404
        status, text = await get(controller, "/metrics")
    assert status == 200
    lines = set(text.splitlines())
    assert 'xds_server_xds_nacks_total{type="cds"} 0.0' in lines
    assert "xds_server_connected_proxies 0.0" in lines
    assert any(line.startswith("xds_server_snapshot_build_seconds_count") for line in lines)
    assert 'xds_server_backend_healthy{backend="qdrant-primary",service="qdrant"} 0.0' in lines
    template = (
        'xds_server_admin_requests_total{method="GET",'
        'route="/api/v1/router/services/{service}/backends",status="200"} 1.0'
    )
    assert template in lines, [x for x in lines if "admin_requests_total" in x]
    unmatched = 'xds_server_admin_requests_total{method="GET",route="unmatched",status="404"} 1.0'
    assert unmatched in lines, [x for x in lines if "admin_requests_total" in x]


async def test_metrics_disabled_turns_endpoints_and_collection_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """ROUTER_METRICS_ENABLED=false: /metrics and /api/v1/router/metrics answer 404
    JSON, no observer counts, no sampler runs, the registry stays empty."""
    monkeypatch.setenv("ROUTER_METRICS_ENABLED", "false")
    settings = local_settings()
    assert settings.metrics_enabled is False
    async with running_controller(settings) as controller:
        assert controller.telemetry is None
        for path in ("/metrics", "/api/v1/router/metrics"):
            status, text = await get(controller, path)
            assert status == 404 and "ROUTER_METRICS_ENABLED" in json.loads(text)["detail"]
        assert list(controller.registry.collect()) == []
        assert isinstance(controller.health, LocalHealth)
        assert controller.health.checker.observers == []

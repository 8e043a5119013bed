"""Per-model figures of the OpenAI front door (telemetry/models.py) without Envoy:
Envoy's route-stat lines parsed, counted in the book, shaped per model."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from xds_server.model.intent import Backend, Intent, Service
from xds_server.telemetry.envoy_stats import ROUTE_KEY, TrafficReading, parse_cluster_stats
from xds_server.telemetry.models import model_traffic, route_keys
from xds_server.telemetry.prometheus import ControllerMetrics, StateReaders
from xds_server.telemetry.routing import report
from xds_server.telemetry.traffic import TrafficBook

PHI3 = Service("phi3", ("/p/",), (Backend("phi3", "127.0.0.1", 1),), models=("phi3", "phi3:mini"))
HERMES = Service("hermes", ("/h/",), (Backend("hermes", "127.0.0.1", 2),), models=("hermes",))
QDRANT = Service("qdrant", ("/q/",), (Backend("q", "127.0.0.1", 3),))
INTENT = Intent(services=(PHI3, HERMES, QDRANT))


def route_line(name: str, route: str, value: float, **labels: str) -> str:
    tags = [f'{k}="{v}"' for k, v in labels.items()]
    tags += ['envoy_virtual_host="router"', f'envoy_route="{route}"']
    return f"envoy_vhost_route_{name}{{{','.join(tags)}}} {value}"


ENVOY_TEXT = "\n".join(
    [
        "# TYPE envoy_vhost_route_upstream_rq_completed counter",
        route_line("upstream_rq_completed", "openai_model_phi3", 7),
        route_line("upstream_rq_completed", "openai_stream_phi3", 3),
        route_line("upstream_rq_completed", "openai_model_phi3_mini", 1),
        route_line("upstream_rq_xx", "openai_model_phi3", 2, envoy_response_code_class="5"),
        route_line("upstream_rq_xx", "openai_model_phi3", 5, envoy_response_code_class="2"),
        route_line("upstream_rq_time_sum", "openai_model_phi3", 70),
        route_line("upstream_rq_time_count", "openai_model_phi3", 7),
        route_line("upstream_rq_time_sum", "openai_stream_phi3", 6000),
        route_line("upstream_rq_time_count", "openai_stream_phi3", 3),
        route_line("upstream_rq_time_bucket", "openai_stream_phi3", 3, le="5000"),
        route_line("upstream_rq_timeout", "openai_model_phi3", 9),
        'envoy_cluster_upstream_rq_completed{envoy_cluster_name="phi3"} 11',
    ]
)


def test_route_stats_are_parsed_next_to_the_cluster_figures() -> None:
    """5xx comes from the tagged upstream_rq_xx; buckets and other counters are dropped."""
    parsed = parse_cluster_stats(ENVOY_TEXT)
    assert parsed == {
        ("phi3", "upstream_rq_completed"): 11,
        (ROUTE_KEY + "openai_model_phi3", "upstream_rq_completed"): 7,
        (ROUTE_KEY + "openai_stream_phi3", "upstream_rq_completed"): 3,
        (ROUTE_KEY + "openai_model_phi3_mini", "upstream_rq_completed"): 1,
        (ROUTE_KEY + "openai_model_phi3", "upstream_rq_5xx"): 2,
        (ROUTE_KEY + "openai_model_phi3", "upstream_rq_time_sum"): 70,
        (ROUTE_KEY + "openai_model_phi3", "upstream_rq_time_count"): 7,
        (ROUTE_KEY + "openai_stream_phi3", "upstream_rq_time_sum"): 6000,
        (ROUTE_KEY + "openai_stream_phi3", "upstream_rq_time_count"): 3,
    }


def book() -> TrafficBook:
    counted = TrafficBook()
    reading = TrafficReading("envoy-a", "127.0.0.1:9901", clusters=parse_cluster_stats(ENVOY_TEXT))
    clusters = {s.name for s in INTENT.services} | route_keys(INTENT)
    counted.apply([reading], clusters, at=0.0, wall=1_700_000_000.0)
    return counted


def test_figures_per_declared_model_streams_apart() -> None:
    """Every declared model, in config order, zeros included; streamed answers are
    part of the model's requests and also counted on their own."""
    body = report(book(), [], INTENT, [], now=0.0)
    assert body["models"]["by_model"] == {
        "phi3": {
            "service": "phi3",
            "requests": 10,
            "failed_requests": 2,
            "avg_upstream_time_ms": 607.0,  # (70 + 6000) / 10
            "streamed_responses": 3,
            "avg_stream_duration_ms": 2000.0,
        },
        "phi3:mini": {
            "service": "phi3",
            "requests": 1,
            "failed_requests": 0,
            "avg_upstream_time_ms": None,
            "streamed_responses": 0,
            "avg_stream_duration_ms": None,
        },
        "hermes": {
            "service": "hermes",
            "requests": 0,
            "failed_requests": 0,
            "avg_upstream_time_ms": None,
            "streamed_responses": 0,
            "avg_stream_duration_ms": None,
        },
    }
    # The service's own routing_metrics are its cluster's, untouched by the route keys.
    assert body["routing_metrics"]["total_requests"] == 11


def test_one_services_report_has_only_its_models() -> None:
    body = report(book(), [], INTENT, [], now=0.0, service=HERMES)
    assert list(body["models"]["by_model"]) == ["hermes"]


def test_route_stats_of_undeclared_models_are_not_counted() -> None:
    """The label set is bounded by the config: a route Envoy still reports for a
    model no longer declared is not in the book."""
    fewer = Intent(services=(HERMES,))
    counted = TrafficBook()
    reading = TrafficReading("e", "a", clusters=parse_cluster_stats(ENVOY_TEXT))
    counted.apply([reading], route_keys(fewer), at=0.0, wall=0.0)
    assert counted.clusters == {}
    assert [t.model for t in model_traffic(counted, fewer)] == ["hermes"]


def test_prometheus_families_per_model() -> None:
    registry = CollectorRegistry()
    traffic = model_traffic(book(), INTENT)
    readers = StateReaders(
        generation=lambda: 0,
        connected_proxies=lambda: 0,
        open_streams=lambda: 0,
        nacked_proxies=lambda: 0,
        backend_verdicts=lambda: (),
        model_traffic=lambda: traffic,
    )
    ControllerMetrics(registry, readers)
    lines = set(generate_latest(registry).decode().splitlines())
    for line in (
        'xds_server_model_requests_total{model="phi3",service="phi3"} 10.0',
        'xds_server_model_requests_total{model="hermes",service="hermes"} 0.0',
        'xds_server_model_failed_requests_total{model="phi3",service="phi3"} 2.0',
        'xds_server_model_streamed_responses_total{model="phi3",service="phi3"} 3.0',
        'xds_server_model_stream_duration_seconds_sum{model="phi3",service="phi3"} 6.0',
        'xds_server_model_stream_duration_seconds_count{model="phi3",service="phi3"} 3.0',
        'xds_server_model_upstream_seconds_count{model="phi3:mini",service="phi3"} 0.0',
    ):
        assert line in lines, sorted(x for x in lines if "model" in x)

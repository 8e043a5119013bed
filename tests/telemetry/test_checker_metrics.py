"""Who checks each backend, in Prometheus: counts and newest report per kind of checker."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from tests.factories import FAST_POLICY, passed
from xds_server.health.verdict import BackendHealth
from xds_server.model.intent import Health
from xds_server.telemetry.prometheus import ControllerMetrics, StateReaders


def test_checkers_by_kind_without_node_ids() -> None:
    """A backend the controller probes: one controller checker; one two Envoys report
    on: two envoy checkers, the newest report's time; no node id ever becomes a label."""
    probed = BackendHealth()
    probed.record(passed(), FAST_POLICY)
    delegated = BackendHealth(Health.HEALTHY, checked_by=("envoy-a", "envoy-b"))
    delegated.reported_at = {"envoy-a": 100.0, "envoy-b": 130.0, "envoy-gone": 200.0}
    registry = CollectorRegistry()
    ControllerMetrics(
        registry,
        StateReaders(
            generation=lambda: 1,
            connected_proxies=lambda: 2,
            open_streams=lambda: 2,
            nacked_proxies=lambda: 0,
            backend_verdicts=tuple,
            backend_states=lambda: [("svc", "svc-a", probed), ("svc", "svc-b", delegated)],
        ),
    )
    text = generate_latest(registry).decode()
    count = "xds_server_backend_checkers"
    assert f'{count}{{backend="svc-a",checker="controller",service="svc"}} 1.0' in text
    assert f'{count}{{backend="svc-a",checker="envoy",service="svc"}} 0.0' in text
    assert f'{count}{{backend="svc-b",checker="envoy",service="svc"}} 2.0' in text
    assert f'{count}{{backend="svc-b",checker="controller",service="svc"}} 0.0' in text
    latest = "xds_server_backend_last_report_timestamp_seconds"
    assert f'{latest}{{backend="svc-b",checker="envoy",service="svc"}} 130.0' in text
    assert "envoy-a" not in text and "envoy-gone" not in text

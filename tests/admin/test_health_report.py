"""The health report (GET /api/v1/health): the spec's shape, grouping and overall verdict."""

from __future__ import annotations

import re

from tests.factories import FAST_POLICY, definitive, passed, spec_intent
from tests.telemetry.test_passive import ejecting, host
from xds_server.admin.health_report import health_report
from xds_server.health.verdict import BackendHealth, ProbeResult, summarize
from xds_server.model.intent import Backend, Intent, Service
from xds_server.telemetry.envoy_stats import TrafficReading
from xds_server.telemetry.passive import PassiveView


def states(**results: ProbeResult) -> dict[str, BackendHealth]:
    out = {}
    for name, result in results.items():
        out[name.replace("_", "-")] = state = BackendHealth()
        state.record(result, FAST_POLICY)
    return out


def test_report_has_the_spec_shape_grouped_with_short_keys() -> None:
    """Groups by display group; 'qdrant-primary' shows as 'primary'; real figures."""
    probed = states(qdrant_primary=passed(), qdrant_secondary=passed(), phi3=passed())
    report = health_report(spec_intent(), probed)
    assert set(report["health_status"]) == {"qdrant", "external"}  # type: ignore[arg-type]
    qdrant = report["health_status"]["qdrant"]  # type: ignore[index]
    assert set(qdrant) == {"primary", "secondary"}
    entry = qdrant["primary"]
    assert entry["status"] == "healthy" and entry["response_time_ms"] == 1.0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["last_check"])
    assert entry["checked_by"] == ["controller"]
    assert entry["last_report"] == {"controller": entry["last_check"]}
    external = report["health_status"]["external"]  # type: ignore[index]
    assert external["hermes"] == {
        "status": "unknown",
        "response_time_ms": None,
        "last_check": None,
        "checked_by": [],
        "last_report": {},
        "ejected_by": [],
    }
    assert (report["total_backends"], report["healthy_backends"]) == (4, 3)
    assert (report["unhealthy_backends"], report["unknown_backends"]) == (0, 1)


def test_unknown_backends_degrade_but_do_not_make_a_service_unhealthy() -> None:
    """Not yet probed: overall 'degraded' at best, never 'unhealthy' on its own."""
    assert summarize(spec_intent(), {}).overall == "degraded"
    everything = states(
        qdrant_primary=passed(), qdrant_secondary=passed(), phi3=passed(), hermes=passed()
    )
    assert summarize(spec_intent(), everything).overall == "healthy"


def test_a_service_without_a_serving_backend_makes_overall_unhealthy() -> None:
    """Both qdrant backends unhealthy: qdrant and the overall verdict are 'unhealthy';
    one of them unhealthy: 'degraded'."""
    one_down = states(qdrant_primary=definitive(), qdrant_secondary=passed())
    assert summarize(spec_intent(), one_down).services["qdrant"] == "degraded"
    both_down = states(qdrant_primary=definitive(), qdrant_secondary=definitive())
    summary = summarize(spec_intent(), both_down)
    assert summary.services["qdrant"] == "unhealthy" and summary.overall == "unhealthy"
    assert (summary.unhealthy, summary.unknown) == (2, 2)


def test_colliding_short_keys_fall_back_to_full_names() -> None:
    """Two services of one group with backends 'a-x' and 'b-x': 'x' once, then the full name."""
    intent = Intent(
        services=(
            Service("a", ("/a/",), (Backend("a-x", "127.0.0.1", 1),), group="g"),
            Service("b", ("/b/",), (Backend("b-x", "127.0.0.1", 1),), group="g"),
        )
    )
    assert set(health_report(intent, {})["health_status"]["g"]) == {"x", "b-x"}  # type: ignore[index]


def test_each_backend_names_the_proxies_ejecting_it_and_since_when() -> None:
    """`ejected_by` lists every proxy whose outlier detection ejects the backend, by
    node id, with the first reading's time as `since`; [] for the others."""
    passive = PassiveView()
    intent = spec_intent()
    readings = [
        ejecting("envoy-b", "qdrant", "qdrant-primary"),
        ejecting("envoy-a", "qdrant", "qdrant-primary"),
        TrafficReading("envoy-c", "127.0.0.1:1", hosts=(host("qdrant", "qdrant-primary"),)),
    ]
    passive.observe(readings, intent.services, wall=1_700_000_000.25)
    report = health_report(intent, {}, passive=passive)
    qdrant = report["health_status"]["qdrant"]  # type: ignore[index]
    assert qdrant["primary"]["ejected_by"] == [
        {"node": "envoy-a", "since": "2023-11-14T22:13:20.250Z"},
        {"node": "envoy-b", "since": "2023-11-14T22:13:20.250Z"},
    ]
    assert qdrant["secondary"]["ejected_by"] == []

"""Envoy's passive view (telemetry/passive.py): which proxy ejects which backend,
since when, kept from one sampler reading to the next, and its Prometheus series."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from tests.factories import spec_intent
from xds_server.telemetry.envoy_stats import HostStats, TrafficReading
from xds_server.telemetry.passive import Ejection, PassiveView
from xds_server.telemetry.prometheus import ControllerMetrics, StateReaders

SERVICES = spec_intent().services
T0 = 1_700_000_000.0


def host(cluster: str, name: str, *, ejected: bool = False) -> HostStats:
    """A host as parse_clusters makes it; Envoy writes the flag only when it is set."""
    health = {"eds_health_status": "HEALTHY", **({"failed_outlier_check": True} if ejected else {})}
    return HostStats(cluster, name, "127.0.0.1:1", health=health)


def ejecting(node: str, cluster: str, *names: str) -> TrafficReading:
    """A readable proxy whose outlier detection ejects `names` of `cluster`."""
    return TrafficReading(
        node, "127.0.0.1:1", hosts=tuple(host(cluster, n, ejected=True) for n in names)
    )


def clean(node: str) -> TrafficReading:
    return TrafficReading(node, "127.0.0.1:1", hosts=(host("qdrant", "qdrant-primary"),))


def test_since_is_the_first_reading_that_saw_the_ejection_and_recovery_drops_it() -> None:
    """An ejection keeps the time it was first seen across readings; a reading of that
    proxy without the flag ends it; each appearance counts once."""
    view = PassiveView()
    view.observe([ejecting("a", "qdrant", "qdrant-primary")], SERVICES, T0)
    view.observe([ejecting("a", "qdrant", "qdrant-primary")], SERVICES, T0 + 2)
    assert view.ejected_by("qdrant-primary") == [Ejection("a", T0)]
    assert view.ejected("qdrant-primary") and not view.ejected("qdrant-secondary")
    view.observe([clean("a")], SERVICES, T0 + 4)
    assert view.ejected_by("qdrant-primary") == [] and not view.ejected("qdrant-primary")
    view.observe([ejecting("a", "qdrant", "qdrant-primary")], SERVICES, T0 + 6)
    assert view.ejected_by("qdrant-primary") == [Ejection("a", T0 + 6)]
    assert ("qdrant", "qdrant-primary", 2) in view.seen(SERVICES)


def test_an_unreadable_proxy_keeps_its_entries_and_a_gone_one_drops_them() -> None:
    """An admin that did not answer is not a recovery (nor a new ejection later);
    a proxy absent from the reading (disconnected) ejects nothing any more."""
    view = PassiveView()
    view.observe(
        [ejecting("a", "qdrant", "qdrant-primary"), ejecting("b", "qdrant", "qdrant-primary")],
        SERVICES,
        T0,
    )
    blip = TrafficReading("a", "127.0.0.1:1", error="no answer within the read timeout")
    view.observe([blip, ejecting("b", "qdrant", "qdrant-primary")], SERVICES, T0 + 2)
    assert view.ejected_by("qdrant-primary") == [Ejection("a", T0), Ejection("b", T0)]
    view.observe([ejecting("a", "qdrant", "qdrant-primary")], SERVICES, T0 + 4)
    assert view.ejected_by("qdrant-primary") == [Ejection("a", T0)]
    assert ("qdrant", "qdrant-primary", 2) in view.seen(SERVICES)
    assert ("qdrant", "qdrant-primary", 1) in view.ejecting(SERVICES)


def test_only_a_backend_of_its_own_service_cluster_counts() -> None:
    """A host named like a backend in another cluster (the front door's, the admin
    cluster) is not that backend."""
    view = PassiveView()
    view.observe([ejecting("a", "embedding", "qdrant-primary")], SERVICES, T0)
    assert not view.ejected("qdrant-primary")


def test_the_first_proxy_to_eject_a_backend_asks_for_an_early_probe_once() -> None:
    """`on_first` hears a backend when its first ejection appears, not again while
    some proxy still ejects it, and again after it was readmitted everywhere."""
    heard: list[str] = []
    view = PassiveView(on_first=heard.append)
    view.observe([ejecting("a", "qdrant", "qdrant-primary")], SERVICES, T0)
    view.observe(
        [ejecting("a", "qdrant", "qdrant-primary"), ejecting("b", "qdrant", "qdrant-primary")],
        SERVICES,
        T0 + 2,
    )
    assert heard == ["qdrant-primary"]
    view.observe([clean("a"), clean("b")], SERVICES, T0 + 4)
    view.observe([ejecting("b", "qdrant", "qdrant-primary")], SERVICES, T0 + 6)
    assert heard == ["qdrant-primary", "qdrant-primary"]


def test_prometheus_has_the_ejecting_proxies_gauge_and_the_seen_counter() -> None:
    """Per backend, labels service and backend only (no node id): the proxies ejecting
    it now, and ejections seen since start; zeros for the others."""
    view = PassiveView()
    view.observe(
        [ejecting("a", "qdrant", "qdrant-primary"), ejecting("b", "qdrant", "qdrant-primary")],
        SERVICES,
        T0,
    )
    registry = CollectorRegistry()
    readers = StateReaders(
        generation=lambda: 1,
        connected_proxies=lambda: 2,
        open_streams=lambda: 2,
        nacked_proxies=lambda: 0,
        backend_verdicts=tuple,
        ejecting_proxies=lambda: view.ejecting(SERVICES),
        ejections_seen=lambda: view.seen(SERVICES),
    )
    ControllerMetrics(registry, readers)
    text = generate_latest(registry).decode()
    gauge = "xds_server_backend_ejecting_proxies"
    assert f'{gauge}{{backend="qdrant-primary",service="qdrant"}} 2.0' in text
    assert f'{gauge}{{backend="qdrant-secondary",service="qdrant"}} 0.0' in text
    seen = "xds_server_outlier_ejections_seen_total"
    assert f'{seen}{{backend="qdrant-primary",service="qdrant"}} 2.0' in text
    assert "node" not in "".join(line for line in text.splitlines() if "eject" in line)

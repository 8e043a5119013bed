"""translate/hds.py: the HealthCheckSpecifier for one Envoy. One cluster per
assigned backend named after it, every resolved address, the controller's
policy as Envoy counts it, HTTP with the probe's Host, gRPC health for gRPC
services, TLS as the backend's CDS cluster reaches it."""

from __future__ import annotations

from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.service.health.v3 import hds_pb2
from google.protobuf import json_format

from xds_server.health.verdict import HealthPolicy
from xds_server.model.intent import Backend, Intent, Protocol, Service
from xds_server.model.upstream_tls import UpstreamTls
from xds_server.resources import CLUSTER
from xds_server.translate import translate
from xds_server.translate.hds import cluster_health_check, health_check_specifier

POLICY = HealthPolicy(interval_s=2.5, timeout_s=0.75, healthy_threshold=4, unhealthy_threshold=5)
REPORT_S = 1.5
CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIB...\n-----END CERTIFICATE-----\n"


def intent() -> Intent:
    return Intent(
        services=(
            Service(
                "web",
                ("/web/",),
                (
                    Backend("web-1", "10.0.0.1", 8080, health_path="/ready"),
                    Backend("web-0", "web.internal", 80),
                    Backend("web-v6", "::1", 9000),
                ),
            ),
            Service(
                "rpc",
                (),
                (Backend("rpc-0", "127.0.0.1", 50051),),
                protocol=Protocol.GRPC,
                grpc_health_service="pkg.Svc",
            ),
            Service(
                "secure",
                ("/s/",),
                (Backend("tls-0", "api.example", 443, tls=UpstreamTls(ca_pem=CA_PEM)),),
            ),
        )
    )


def specifier(
    assigned: list[str], addresses: dict[str, tuple[str, ...]] | None = None
) -> hds_pb2.HealthCheckSpecifier:
    return health_check_specifier(intent(), assigned, POLICY, REPORT_S, addresses or {})


def by_name(spec: hds_pb2.HealthCheckSpecifier) -> dict[str, hds_pb2.ClusterHealthCheck]:
    return {c.cluster_name: c for c in spec.cluster_health_checks}


def addresses_of(check: hds_pb2.ClusterHealthCheck) -> list[tuple[str, int]]:
    return [
        (e.address.socket_address.address, e.address.socket_address.port_value)
        for locality in check.locality_endpoints
        for e in locality.endpoints
    ]


def test_one_cluster_per_assigned_backend_sorted_with_the_report_interval() -> None:
    """Only the assigned backends, named after them so reports map back; unknown
    names are skipped; the specifier's interval is the report interval."""
    spec = specifier(["web-1", "rpc-0", "not-in-intent"])
    assert [c.cluster_name for c in spec.cluster_health_checks] == ["rpc-0", "web-1"]
    assert spec.interval.ToMilliseconds() == 1500


def test_the_policy_is_envoys_as_it_is() -> None:
    """Interval, timeout and thresholds as configured. An HDS cluster never carries
    traffic, so Envoy waits no_traffic_healthy_interval (the interval) after a
    passed check and no_traffic_interval (the confirmation gap: 2.5 / (5 - 1) -
    0.75 s, below 0 here, so Envoy's floor of 50 ms) after a failed or pending one;
    Envoy's default for both is 60 s."""
    (check,) = by_name(specifier(["web-1"]))["web-1"].health_checks
    assert check.interval.ToMilliseconds() == 2500
    assert check.no_traffic_healthy_interval.ToMilliseconds() == 2500
    assert check.no_traffic_interval.ToMilliseconds() == 50
    assert check.unhealthy_edge_interval == check.healthy_edge_interval == check.no_traffic_interval
    assert check.timeout.ToMilliseconds() == 750
    assert (check.healthy_threshold.value, check.unhealthy_threshold.value) == (4, 5)
    assert not check.HasField("initial_jitter")  # the first check runs at once


def test_a_failed_check_is_confirmed_within_one_interval() -> None:
    """With room for it (30 s, 3 failures, 5 s timeout) the gap after a failed check
    is the controller's: 30 / 2 - 5 = 10 s, so the third failure ends by 30 s."""
    policy = HealthPolicy(interval_s=30.0, timeout_s=5.0, unhealthy_threshold=3)
    spec = health_check_specifier(intent(), ["web-1"], policy, 1.0)
    (check,) = spec.cluster_health_checks[0].health_checks
    assert check.no_traffic_interval.ToMilliseconds() == 10_000
    assert check.no_traffic_healthy_interval.ToMilliseconds() == 30_000


def test_http_backends_get_their_health_path_and_the_probes_host() -> None:
    checks = by_name(specifier(["web-1", "web-v6"]))
    web = checks["web-1"].health_checks[0]
    assert web.WhichOneof("health_checker") == "http_health_check"
    assert (web.http_health_check.path, web.http_health_check.host) == ("/ready", "10.0.0.1:8080")
    assert checks["web-v6"].health_checks[0].http_health_check.host == "[::1]:9000"
    assert addresses_of(checks["web-1"]) == [("10.0.0.1", 8080)]
    assert not checks["web-1"].transport_socket_matches


def test_a_dns_name_is_checked_at_every_address_with_its_name_as_host() -> None:
    resolved = {"web.internal": ("10.1.0.1", "10.1.0.2", "fd00::3")}
    check = by_name(specifier(["web-0"], resolved))["web-0"]
    assert len(check.locality_endpoints) == 1
    assert addresses_of(check) == [("10.1.0.1", 80), ("10.1.0.2", 80), ("fd00::3", 80)]
    assert check.health_checks[0].http_health_check.host == "web.internal"  # port 80: default


def test_a_name_without_addresses_is_left_to_the_controller() -> None:
    assert by_name(specifier(["web-0"], {})) == {}
    assert (
        cluster_health_check(intent().services[0], intent().services[0].backends[1], POLICY) is None
    )


def test_grpc_backends_get_grpc_health_of_their_service() -> None:
    (check,) = by_name(specifier(["rpc-0"]))["rpc-0"].health_checks
    assert check.WhichOneof("health_checker") == "grpc_health_check"
    assert check.grpc_health_check.service_name == "pkg.Svc"
    assert check.grpc_health_check.authority == "127.0.0.1:50051"
    assert not check.HasField("transport_socket_match_criteria")


def test_tls_backends_reuse_their_cds_transport_socket() -> None:
    """The ClusterHealthCheck carries the very TransportSocketMatch of the backend's CDS
    cluster, and the health check picks it by its criteria."""
    resolved = {"api.example": ("10.2.0.1",)}
    check = by_name(specifier(["tls-0"], resolved))["tls-0"]
    cds = translate(intent(), addresses=resolved)[CLUSTER]["secure"]
    assert list(check.transport_socket_matches) == list(cds.transport_socket_matches)
    (match,) = check.transport_socket_matches
    (health,) = check.health_checks
    assert dict(health.transport_socket_match_criteria) == dict(match.match)
    context = tls_pb2.UpstreamTlsContext()
    assert match.transport_socket.typed_config.Unpack(context)
    assert context.sni == "api.example"
    assert health.http_health_check.host == "api.example"  # 443: https's default
    assert not health.tls_options.alpn_protocols


def test_a_grpc_backend_over_tls_offers_h2() -> None:
    tls = UpstreamTls(ca_pem=CA_PEM, sni="rpc.example")
    service = Service(
        "rpc", (), (Backend("rpc-t", "10.0.0.9", 443, tls=tls),), protocol=Protocol.GRPC
    )
    check = cluster_health_check(service, service.backends[0], POLICY)
    assert check is not None
    assert list(check.health_checks[0].tls_options.alpn_protocols) == ["h2"]
    assert (
        check.health_checks[0].transport_socket_match_criteria.fields["tls"].string_value == "rpc-t"
    )


def test_the_specifier_is_deterministic_and_survives_the_wire() -> None:
    """Equal inputs in any order give equal bytes; the bytes parse back; the fields
    Envoy's validation requires are set (cluster name, a health check, its timeout,
    interval and thresholds, a checker)."""
    names = ["web-1", "rpc-0", "tls-0", "web-0"]
    resolved = {"web.internal": ("10.1.0.2", "10.1.0.1"), "api.example": ("10.2.0.1",)}
    first = specifier(names, resolved).SerializeToString(deterministic=True)
    assert specifier(names[::-1], resolved).SerializeToString(deterministic=True) == first
    parsed = hds_pb2.HealthCheckSpecifier.FromString(first)
    json_format.MessageToJson(parsed)  # every Any inside resolves
    assert len(parsed.cluster_health_checks) == 4
    for cluster in parsed.cluster_health_checks:
        assert cluster.cluster_name
        (check,) = cluster.health_checks
        assert check.timeout.ToNanoseconds() > 0 and check.interval.ToNanoseconds() > 0
        assert check.HasField("unhealthy_threshold") and check.HasField("healthy_threshold")
        assert check.WhichOneof("health_checker") in {"http_health_check", "grpc_health_check"}

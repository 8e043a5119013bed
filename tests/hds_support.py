"""HDS for the tests: an owner that records what the sessions tell it, and a
small HealthCheckSpecifier built by hand (the real one is the translator's)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from envoy.config.core.v3 import address_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2
from envoy.service.health.v3 import hds_pb2

from xds_server.xds.hds import EndpointHealth, HdsNode, HealthReport


@dataclass
class RecordingOwner:
    """An HdsOwner that keeps every call, in order."""

    joined: list[HdsNode] = field(default_factory=list)
    left: list[HdsNode] = field(default_factory=list)
    reports: list[tuple[str, HealthReport]] = field(default_factory=list)

    def node_joined(self, node: HdsNode) -> None:
        self.joined.append(node)

    def node_left(self, node: HdsNode) -> None:
        self.left.append(node)

    def reported(self, node_id: str, report: HealthReport) -> None:
        self.reports.append((node_id, report))

    def latest(self, node_id: str) -> HealthReport | None:
        """The node's latest report, None before its first."""
        return next((r for n, r in reversed(self.reports) if n == node_id), None)

    def status(self, node_id: str, cluster: str, port: int) -> str | None:
        """What the node's latest report says of the endpoint on `port`."""
        for endpoint in (self.latest(node_id) or {}).get(cluster, []):
            if endpoint.port == port:
                return endpoint.status
        return None


def http_specifier(
    cluster: str,
    endpoints: Sequence[tuple[str, int]],
    *,
    path: str = "/health",
    interval_s: int = 1,
    report_interval_s: int = 1,
) -> hds_pb2.HealthCheckSpecifier:
    """One cluster of `endpoints` (host, port), probed with HTTP GET `path` every
    `interval_s` (also without traffic), one failure or success flipping it;
    reports every `report_interval_s`."""
    check = health_check_pb2.HealthCheck(
        http_health_check=health_check_pb2.HealthCheck.HttpHealthCheck(path=path),
    )
    check.timeout.FromSeconds(1)
    check.interval.FromSeconds(interval_s)
    check.no_traffic_interval.FromSeconds(interval_s)
    check.unhealthy_threshold.value = 1
    check.healthy_threshold.value = 1
    locality = hds_pb2.LocalityEndpoints(
        endpoints=[
            endpoint_components_pb2.Endpoint(
                address=address_pb2.Address(
                    socket_address=address_pb2.SocketAddress(address=host, port_value=port)
                )
            )
            for host, port in endpoints
        ]
    )
    specifier = hds_pb2.HealthCheckSpecifier(
        cluster_health_checks=[
            hds_pb2.ClusterHealthCheck(
                cluster_name=cluster, health_checks=[check], locality_endpoints=[locality]
            )
        ]
    )
    specifier.interval.FromSeconds(report_interval_s)
    return specifier


def report_of(
    cluster: str, endpoints: Sequence[tuple[str, int, int]]
) -> hds_pb2.HealthCheckRequestOrEndpointHealthResponse:
    """An EndpointHealthResponse as Envoy 1.40 sends it: (host, port, HealthStatus)
    per endpoint, by cluster and locality and in the legacy flat list too."""
    healths = [
        hds_pb2.EndpointHealth(
            endpoint=endpoint_components_pb2.Endpoint(
                address=address_pb2.Address(
                    socket_address=address_pb2.SocketAddress(address=host, port_value=port)
                )
            ),
            health_status=status,
        )
        for host, port, status in endpoints
    ]
    response = hds_pb2.EndpointHealthResponse(
        endpoints_health=healths,
        cluster_endpoints_health=[
            hds_pb2.ClusterEndpointsHealth(
                cluster_name=cluster,
                locality_endpoints_health=[
                    hds_pb2.LocalityEndpointsHealth(endpoints_health=healths)
                ],
            )
        ],
    )
    return hds_pb2.HealthCheckRequestOrEndpointHealthResponse(endpoint_health_response=response)


__all__ = ["EndpointHealth", "RecordingOwner", "http_specifier", "report_of"]

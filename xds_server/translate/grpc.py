"""Intent -> what proxyless gRPC clients need for each `protocol: grpc` service.

A gRPC client given the target `xds:///<service>` asks, by name and never by
wildcard (docs/xds-protocol.md rule 18), for:

- LDS: a Listener named after the service whose `api_listener` holds an
  HttpConnectionManager: RDS over ADS, the router as its last filter;
- RDS: a RouteConfiguration, also named after the service, with one virtual
  host whose domain is the service name (gRPC matches it against the target);
- CDS and EDS: the service's own cluster and ClusterLoadAssignment, as
  clusters.py and endpoints.py build them, with two changes gRPC needs:
  every locality carries a weight and a name (gRPC drops a locality without a
  weight as "assigned no load"), and the cluster speaks HTTP/2 upstream so
  that the Envoy routes of a gRPC service, if it has any, reach its backends.

What gRPC clients would reject or silently mishandle is refused, with the field
path, by the intent's own rules (model/rules.py, `grpc_problems`); the
translator raises ConfigError then, so nothing is published. Ring hash for gRPC
hashes on a `header` (or `filter_state io.grpc.channel_id`) policy (gRFC A42).

Flagged, not refused (documented in the README): gRPC implements only the
success-rate and failure-percentage outlier detection (gRFC A50), so the
spec's consecutive-5xx circuit breaker does not eject backends for gRPC
clients; of the circuit breakers only max_requests applies (gRFC A32); route
`timeout` is ignored (gRFC A31), hence the service's request_timeout goes to
`max_stream_duration` below; and gRPC retries only on gRPC status codes (gRFC
A44), so only those of the service's `retry_on` reach its clients.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import TypeVar

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import protocol_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import api_listener_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2 as upstream_http_pb2
from google.protobuf import wrappers_pb2
from google.protobuf.message import Message

from xds_server.model.intent import Health, Intent, Policies, Protocol, Service, Strategy
from xds_server.model.rules import check_grpc
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, Resources
from xds_server.translate.clusters import service_cluster
from xds_server.translate.common import ads_config_source, duration, packed
from xds_server.translate.endpoints import (
    NO_ADDRESSES,
    Addresses,
    load_assignment,
    resolved_of,
)
from xds_server.translate.listeners import ROUTER_FILTER
from xds_server.translate.memo import Memory

HTTP_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
# gRPC retries only on gRPC status codes (gRFC A44); UNAVAILABLE means the call
# did not reach the application, so retrying it is safe: the default.
GRPC_RETRY_ON = "unavailable"
# The retry_on conditions gRPC clients implement (gRFC A44); they ignore the rest.
GRPC_RETRY_CODES = frozenset(
    {"cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"}
)

M = TypeVar("M", bound=Message)


# ---- the overlay the translator applies ----------------------------------------------


def with_grpc_services(
    intent: Intent,
    health: Mapping[str, Health],
    resources: Mapping[str, Mapping[str, Message]],
    memory: Memory,
    addresses: Addresses = NO_ADDRESSES,
) -> Resources:
    """`resources` plus, for every gRPC service, its API listener and route
    configuration, and its cluster and endpoints in the form gRPC accepts.
    New dicts and copied messages: the inputs are never changed. Each builder
    is remembered per service on exactly what it reads (translate.memo)."""
    check_grpc(intent)
    services = [s for s in intent.services if s.protocol is Protocol.GRPC]
    policies = intent.policies
    extra: dict[str, dict[str, Message]] = {CLUSTER: {}, ENDPOINT: {}, LISTENER: {}, ROUTE: {}}
    for s in services:
        strategy = intent.strategy_of(s)
        verdicts = tuple(health.get(b.name) for b in s.backends)
        extra[CLUSTER][s.name] = memory.grpc_clusters.get(
            s.name, (s, strategy, policies), partial(grpc_cluster, s, strategy, policies)
        )
        extra[ENDPOINT][s.name] = memory.grpc_assignments.get(
            s.name,
            (s, verdicts, resolved_of(s, addresses)),
            partial(grpc_load_assignment, s, health, addresses),
        )
        extra[LISTENER][s.name] = memory.grpc_listeners.get(
            s.name, (s.name,), partial(api_listener, s)
        )
        extra[ROUTE][s.name] = memory.grpc_routes.get(
            s.name, (s, policies), partial(grpc_route_configuration, s, policies)
        )
    types = [*resources, *(t for t in extra if t not in resources)]
    return {t: {**resources.get(t, {}), **extra.get(t, {})} for t in types}


# ---- LDS and RDS ---------------------------------------------------------------------


def api_listener(service: Service) -> listener_pb2.Listener:
    """No address: a gRPC client's listener is the channel itself."""
    return listener_pb2.Listener(
        name=service.name,
        api_listener=api_listener_pb2.ApiListener(
            api_listener=packed(api_connection_manager(service))
        ),
    )


def api_connection_manager(service: Service) -> hcm_pb2.HttpConnectionManager:
    # gRPC NACKs an HCM without the router as its last filter, and accepts RDS
    # only from ADS (or "self").
    return hcm_pb2.HttpConnectionManager(
        stat_prefix=service.name,
        rds=hcm_pb2.Rds(config_source=ads_config_source(), route_config_name=service.name),
        http_filters=[
            hcm_pb2.HttpFilter(name=ROUTER_FILTER, typed_config=packed(router_pb2.Router()))
        ],
    )


def grpc_route_configuration(service: Service, policies: Policies) -> route_pb2.RouteConfiguration:
    """Every method of the target goes to the service's cluster."""
    return route_pb2.RouteConfiguration(
        name=service.name,
        virtual_hosts=[
            rc_pb2.VirtualHost(
                name=service.name,
                domains=[service.name],  # the target's authority: xds:///<service>
                routes=[
                    rc_pb2.Route(
                        match=rc_pb2.RouteMatch(prefix="/"),
                        route=grpc_route_action(service, policies),
                    )
                ],
            )
        ],
    )


def grpc_route_action(service: Service, policies: Policies) -> rc_pb2.RouteAction:
    # gRPC ignores `timeout`; it caps each call's deadline at
    # grpc_timeout_header_max if set, else max_stream_duration (gRFC A31): both
    # carry the service's own limit, so either reader caps alike; 0 is no limit.
    limit = duration(policies.request_timeout_of(service))
    action = rc_pb2.RouteAction(
        cluster=service.name,
        max_stream_duration=rc_pb2.RouteAction.MaxStreamDuration(
            max_stream_duration=limit, grpc_timeout_header_max=limit
        ),
        # Read by ring_hash only; a call without the header hashes randomly.
        hash_policy=[
            rc_pb2.RouteAction.HashPolicy(
                header=rc_pb2.RouteAction.HashPolicy.Header(header_name=service.hash_header)
            )
        ],
    )
    # gRPC NACKs num_retries 0: with retries off, or nothing gRPC can retry
    # on, no policy at all.
    retry_on = grpc_retry_on(service)
    if policies.max_retries > 0 and retry_on:
        action.retry_policy.CopyFrom(grpc_retry_policy(policies, retry_on))
    return action


def grpc_retry_on(service: Service) -> str:
    """The gRPC status codes of the service's retry_on, in its order; its HTTP
    conditions and status codes serve only Envoy's routes of the service."""
    if service.retry_on is None:
        return GRPC_RETRY_ON
    return ",".join(dict.fromkeys(c for c in service.retry_on if c in GRPC_RETRY_CODES))


def grpc_retry_policy(policies: Policies, retry_on: str = GRPC_RETRY_ON) -> rc_pb2.RetryPolicy:
    """gRPC caps attempts at 5 whatever num_retries says (gRFC A44)."""
    return rc_pb2.RetryPolicy(
        retry_on=retry_on,
        num_retries=wrappers_pb2.UInt32Value(value=policies.max_retries),
        retry_back_off=rc_pb2.RetryPolicy.RetryBackOff(
            base_interval=duration(policies.retry_delay_s)
        ),
    )


# ---- CDS and EDS ---------------------------------------------------------------------


def grpc_cluster(service: Service, strategy: Strategy, policies: Policies) -> cluster_pb2.Cluster:
    """The service's cluster, talking HTTP/2 to its backends when Envoy routes to it."""
    cluster = _copy(service_cluster(service, strategy, policies), cluster_pb2.Cluster())
    options = upstream_http_pb2.HttpProtocolOptions(
        explicit_http_config=upstream_http_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=protocol_pb2.Http2ProtocolOptions()
        )
    )
    cluster.typed_extension_protocol_options[HTTP_OPTIONS].Pack(options, deterministic=True)
    return cluster


def grpc_load_assignment(
    service: Service, health: Mapping[str, Health], addresses: Addresses = NO_ADDRESSES
) -> endpoint_pb2.ClusterLoadAssignment:
    """Weighted strategies are refused for gRPC, so every endpoint weighs 1.

    gRPC ignores a locality without load_balancing_weight and NACKs one without
    a locality; Envoy ignores locality weights unless told otherwise, so both
    read the same resource alike. One named locality per priority."""
    assignment = _copy(
        load_assignment(service, False, health, addresses), endpoint_pb2.ClusterLoadAssignment()
    )
    for group in assignment.endpoints:
        group.locality.sub_zone = f"priority-{group.priority}"
        group.load_balancing_weight.value = 1
    return assignment


def _copy(message: M, into: M) -> M:
    # The builders' messages may be shared (memoized): change only a copy.
    into.CopyFrom(message)
    return into

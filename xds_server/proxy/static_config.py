"""The same resources as a static Envoy bootstrap: no xDS at all.

Used for the load benchmark's baseline (the same Envoy with the same
resources loaded statically) and to have Envoy itself validate translator
output (`envoy --mode validate`) in tests.
"""

from __future__ import annotations

from typing import Any

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf import json_format

from xds_server.model.edge import Edge
from xds_server.model.intent import SocketAddress
from xds_server.proxy.bootstrap import STATS_FLUSH_S
from xds_server.proxy.overload import exempt_admin, overload_manager
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, Resources
from xds_server.translate.common import address_of, socket_address
from xds_server.translate.listeners import HCM_FILTER


def static_bootstrap(
    resources: Resources, admin: SocketAddress, edge: Edge | None = None
) -> dict[str, Any]:
    """`edge`: the overload manager's limits, as make_bootstrap takes them."""
    clusters = [_static_cluster(c, resources[ENDPOINT]) for c in resources[CLUSTER].values()]
    listeners = [_static_listener(lst, resources[ROUTE]) for lst in resources[LISTENER].values()]
    return {
        "node": {"id": "envoy-static", "cluster": "xds-server"},
        "admin": exempt_admin({"address": _dict(address_of(admin))}),
        # as the xDS bootstrap, so the benchmark's baseline has the same limits
        "overload_manager": overload_manager(edge or Edge()),
        "stats_flush_interval": f"{STATS_FLUSH_S:g}s",  # as the xDS bootstrap: a fair baseline
        "static_resources": {
            "clusters": [_dict(c) for c in clusters],
            "listeners": [_dict(lst) for lst in listeners],
            # router.tls: the same certificate, as static secrets
            "secrets": [_dict(s) for s in resources.get(SECRET, {}).values()],
        },
    }


def _static_cluster(cluster: Any, endpoints: Any) -> cluster_pb2.Cluster:
    static = cluster_pb2.Cluster()
    static.CopyFrom(cluster)
    if static.type == cluster_pb2.Cluster.EDS:
        name = static.eds_cluster_config.service_name or static.name
        static.ClearField("eds_cluster_config")
        static.type = cluster_pb2.Cluster.STATIC
        assignment = endpoints.get(name, endpoint_pb2.ClusterLoadAssignment(cluster_name=name))
        static.load_assignment.CopyFrom(assignment)
    return static


def _static_listener(listener: Any, route_configs: Any) -> listener_pb2.Listener:
    static = listener_pb2.Listener()
    static.CopyFrom(listener)
    if static.HasField("api_listener"):
        static = _served_api_listener(static)
    for chain in static.filter_chains:
        if chain.HasField("transport_socket"):
            _static_secrets(chain.transport_socket)
        for network_filter in chain.filters:
            hcm = hcm_pb2.HttpConnectionManager()
            if network_filter.typed_config.Unpack(hcm) and hcm.HasField("rds"):
                routes = route_pb2.RouteConfiguration()
                routes.CopyFrom(route_configs[hcm.rds.route_config_name])
                hcm.route_config.CopyFrom(routes)
                network_filter.typed_config.Pack(hcm)
    return static


def _static_secrets(socket: Any) -> None:
    """The same TLS context, naming the static secrets: an SdsSecretConfig without
    sds_config refers to `static_resources.secrets`."""
    context = tls_pb2.DownstreamTlsContext()
    if not socket.typed_config.Unpack(context):
        return
    common = context.common_tls_context
    for config in common.tls_certificate_sds_secret_configs:
        config.ClearField("sds_config")
    common.validation_context_sds_secret_config.ClearField("sds_config")
    if not common.validation_context_sds_secret_config.name:
        common.ClearField("validation_context_sds_secret_config")
    socket.typed_config.Pack(context)


def _served_api_listener(listener: listener_pb2.Listener) -> listener_pb2.Listener:
    """A proxyless gRPC client's API listener, as an ordinary listener on a
    loopback port, so that Envoy checks its connection manager and routes.
    (Envoy's server build has no API listener extension; over LDS it skips
    API listeners with a warning.)"""
    return listener_pb2.Listener(
        name=listener.name,
        address=socket_address("127.0.0.1", 0),
        filter_chains=[
            listener_components_pb2.FilterChain(
                filters=[
                    listener_components_pb2.Filter(
                        name=HCM_FILTER, typed_config=listener.api_listener.api_listener
                    )
                ]
            )
        ],
    )


def _dict(message: Any) -> dict[str, Any]:
    result: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return result

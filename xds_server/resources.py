"""Resource type URLs, the names the translator gives resources, and their order."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeAlias

from google.protobuf.message import Message

CLUSTER = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ENDPOINT = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
LISTENER = "type.googleapis.com/envoy.config.listener.v3.Listener"
ROUTE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
SECRET = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

# Make-before-break order for ADS (docs/xds-protocol.md rules 24 and 39): clusters
# and their endpoints exist before the listeners and routes that reference them,
# and the listener's certificate (SDS) before the listener that presents it.
ADS_ORDER: tuple[str, ...] = (CLUSTER, ENDPOINT, SECRET, LISTENER, ROUTE)

# Types whose SotW responses carry the complete set: a missing name means
# deletion (docs/xds-protocol.md rule 14). EDS and RDS responses may carry only
# what changed (docs/xds-protocol.md rule 15).
FULL_STATE_TYPES: frozenset[str] = frozenset({CLUSTER, LISTENER})

# Types served only by name: a wildcard (`*`) subscribes to nothing. A Secret
# holds a private key; no client gets one it did not name
# (docs/xds-protocol.md rule 39).
NAMED_ONLY_TYPES: frozenset[str] = frozenset({SECRET})

SHORT_NAMES: Mapping[str, str] = {
    CLUSTER: "cds",
    ENDPOINT: "eds",
    LISTENER: "lds",
    ROUTE: "rds",
    SECRET: "sds",
}

LISTENER_NAME = "router"
ROUTE_CONFIG_NAME = "router"
# The listener's SDS secrets (translate/secrets.py).
EDGE_CERTIFICATE_SECRET = "router-edge-certificate"
EDGE_CLIENT_CA_SECRET = "router-edge-client-ca"
ADMIN_CLUSTER = "xds-server-admin"
ADMIN_PREFIX = "/api/v1/router/"
OVERALL_HEALTH_PATH = "/api/v1/health"
# Set by Envoy on every request it routes to the admin API, replacing any the
# client sent: the client's address as Envoy determined it (admin/client.py).
CLIENT_ADDRESS_HEADER = "x-router-client-address"

# type URL -> resource name -> message. The translator's output, the cache's input.
Resources: TypeAlias = Mapping[str, Mapping[str, Message]]

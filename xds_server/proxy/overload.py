"""Envoy's overload manager, as both bootstraps (xDS and static) carry it.

The bootstrap half of "Configuring Envoy as an edge proxy"
(https://www.envoyproxy.io/docs/envoy/latest/configuration/best_practices/edge);
the listener half is translate/listeners.py. Without a downstream connection
limit Envoy accepts connections until it runs out of file descriptors or
memory (and says so at start: "There is no configured limit to the number of
allowed active downstream connections"). Values come from the intent's edge
settings (model/edge.py).
"""

from __future__ import annotations

from typing import Any

from xds_server.model.edge import Edge

DOWNSTREAM_CONNECTIONS = "envoy.resource_monitors.global_downstream_max_connections"
FIXED_HEAP = "envoy.resource_monitors.fixed_heap"
SHRINK_HEAP = "envoy.overload_actions.shrink_heap"
STOP_ACCEPTING_REQUESTS = "envoy.overload_actions.stop_accepting_requests"
# The guide's thresholds: give memory back to the system first, then answer
# 503 to new requests rather than be killed for running out of it.
SHRINK_HEAP_AT = 0.95
STOP_ACCEPTING_AT = 0.98
REFRESH_S = 0.25  # how often the heap is read (the guide's)

_TYPES = "type.googleapis.com/envoy.extensions.resource_monitors"


def overload_manager(edge: Edge) -> dict[str, Any]:
    """The bootstrap's `overload_manager`: the global connection limit (past it,
    Envoy closes a new connection as soon as it is accepted) and the heap
    monitor's two actions."""
    return {
        "refresh_interval": f"{REFRESH_S:g}s",
        "resource_monitors": [
            {
                "name": DOWNSTREAM_CONNECTIONS,
                "typed_config": {
                    "@type": f"{_TYPES}.downstream_connections.v3.DownstreamConnectionsConfig",
                    "max_active_downstream_connections": edge.max_connections,
                },
            },
            {
                "name": FIXED_HEAP,
                "typed_config": {
                    "@type": f"{_TYPES}.fixed_heap.v3.FixedHeapConfig",
                    "max_heap_size_bytes": edge.max_heap_bytes,
                },
            },
        ],
        "actions": [
            _action(SHRINK_HEAP, SHRINK_HEAP_AT),
            _action(STOP_ACCEPTING_REQUESTS, STOP_ACCEPTING_AT),
        ],
    }


def _action(name: str, threshold: float) -> dict[str, Any]:
    return {"name": name, "triggers": [{"name": FIXED_HEAP, "threshold": {"value": threshold}}]}


def exempt_admin(admin: dict[str, Any]) -> dict[str, Any]:
    """Envoy's admin interface outside the connection limit: the controller reads
    the stats of an Envoy that is refusing clients (telemetry/envoy_stats.py)."""
    return {**admin, "ignore_global_conn_limit": True}

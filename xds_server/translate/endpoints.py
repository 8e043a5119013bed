"""Intent + health verdicts -> ClusterLoadAssignments (EDS).

Each backend becomes an LbEndpoint whose hostname is the backend name, so
Envoy's per-host stats are keyed by it. Backends are grouped by priority:
P0 takes traffic, P1 only when P0 is short of healthy hosts (failover).

A backend addressed by DNS name becomes one LbEndpoint per resolved address
(`addresses`: name -> addresses, resolved by xds_server/dns/ and handed in like
the verdicts, so this stays pure), all with the backend's name as hostname, its
verdict and its weight (as Envoy gives each address of a STRICT_DNS endpoint the
endpoint's weight); a name without addresses has no endpoint.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Mapping
from itertools import groupby

from envoy.config.core.v3 import health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from google.protobuf import wrappers_pb2

from xds_server.model.intent import Backend, Health, Intent, Service, Strategy
from xds_server.model.values import is_ip
from xds_server.translate.common import socket_address
from xds_server.translate.memo import Memo
from xds_server.translate.upstream_tls import endpoint_metadata

_NAME = operator.attrgetter("name")
_ADDRESS = operator.attrgetter("address")
Addresses = Mapping[str, tuple[str, ...]]
NO_ADDRESSES: Addresses = {}
_HEALTH: dict[Health, int] = {
    Health.UNKNOWN: health_check_pb2.UNKNOWN,  # Envoy routes to UNKNOWN hosts
    Health.HEALTHY: health_check_pb2.HEALTHY,
    Health.UNHEALTHY: health_check_pb2.UNHEALTHY,
}


def load_assignments(
    intent: Intent,
    health: Mapping[str, Health],
    memo: Memo[endpoint_pb2.ClusterLoadAssignment],
    addresses: Addresses = NO_ADDRESSES,
) -> dict[str, endpoint_pb2.ClusterLoadAssignment]:
    return {s.name: _load_assignment(s, intent, health, addresses, memo) for s in intent.services}


def _load_assignment(
    service: Service,
    intent: Intent,
    health: Mapping[str, Health],
    addresses: Addresses,
    memo: Memo[endpoint_pb2.ClusterLoadAssignment],
) -> endpoint_pb2.ClusterLoadAssignment:
    """Remembered per service: of the health map, load_assignment reads only
    the verdicts of this service's backends, and of the addresses only its
    backends' names', so those are the arguments. A health flip or a changed
    record set rebuilds one assignment."""
    weighted = intent.strategy_of(service) is Strategy.WEIGHTED
    verdicts = tuple(map(health.get, map(_NAME, service.backends)))  # C loops: 10k backends
    resolved = resolved_of(service, addresses)
    return memo.get(
        service.name,
        (service, weighted, verdicts, resolved),
        functools.partial(load_assignment, service, weighted, health, addresses),
    )


def resolved_of(service: Service, addresses: Addresses) -> tuple[tuple[str, ...] | None, ...]:
    """What load_assignment reads of `addresses` for `service` (a memo key)."""
    return tuple(map(addresses.get, map(_ADDRESS, service.backends)))


def load_assignment(
    service: Service,
    weighted: bool,
    health: Mapping[str, Health],
    addresses: Addresses = NO_ADDRESSES,
) -> endpoint_pb2.ClusterLoadAssignment:
    """An empty service still gets a (empty) CLA: Envoy must never wait for one.

    Configured priorities are ranked densely (0, 5 -> 0, 1): Envoy expects
    priorities without gaps.
    """
    by_priority = sorted(service.backends, key=lambda b: (b.priority, b.name))
    return endpoint_pb2.ClusterLoadAssignment(
        cluster_name=service.name,
        endpoints=[
            endpoint_components_pb2.LocalityLbEndpoints(
                priority=rank,
                lb_endpoints=[
                    endpoint
                    for b in backends
                    for endpoint in lb_endpoints(b, weighted, health, addresses)
                ],
            )
            for rank, (_, backends) in enumerate(groupby(by_priority, key=lambda b: b.priority))
        ],
    )


def lb_endpoints(
    backend: Backend, weighted: bool, health: Mapping[str, Health], addresses: Addresses
) -> list[endpoint_components_pb2.LbEndpoint]:
    """One per address: the IP literal itself, or every address its name resolved to."""
    if is_ip(backend.address):
        return [lb_endpoint(backend, backend.address, weighted, health)]
    resolved = addresses.get(backend.address, ())
    return [lb_endpoint(backend, ip, weighted, health) for ip in resolved]


def lb_endpoint(
    backend: Backend, ip: str, weighted: bool, health: Mapping[str, Health]
) -> endpoint_components_pb2.LbEndpoint:
    """Weights apply only under the weighted strategy; the others treat every
    backend alike, so round robin really is an even split."""
    return endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(
            address=socket_address(ip, backend.port), hostname=backend.name
        ),
        health_status=endpoint_health(backend, health),
        load_balancing_weight=wrappers_pb2.UInt32Value(value=backend.weight if weighted else 1),
        metadata=endpoint_metadata(backend),  # picks its TLS socket; None: plaintext
    )


def endpoint_health(backend: Backend, health: Mapping[str, Health]) -> int:
    if backend.draining:
        return int(health_check_pb2.DRAINING)
    return _HEALTH[health.get(backend.name, Health.UNKNOWN)]

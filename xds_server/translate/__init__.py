"""The pure translator: intent + health verdicts (+ the addresses of backends
named by DNS, resolved outside) -> Envoy resources.

No I/O, no clock, no environment: equal inputs give equal resources on every
replica, which is what makes content-hash versions meaningful. A `Memory`
(translate.memo) only saves work: the output is the same with or without it.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from google.protobuf.message import Message

from xds_server.model.certificates import EdgeCertificate
from xds_server.model.intent import Health, Intent
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, Resources
from xds_server.translate.clusters import clusters
from xds_server.translate.endpoints import NO_ADDRESSES, Addresses, load_assignments
from xds_server.translate.grpc import with_grpc_services
from xds_server.translate.listeners import TlsMode, listeners
from xds_server.translate.memo import Memory
from xds_server.translate.routes import route_configurations
from xds_server.translate.secrets import secrets


def translate(
    intent: Intent,
    health: Mapping[str, Health] | None = None,
    memory: Memory | None = None,
    addresses: Addresses = NO_ADDRESSES,
    *,
    certificate: EdgeCertificate | None = None,
) -> Resources:
    """With a `memory` kept across calls, builders whose inputs did not change
    return their previous messages (the very same objects), which the cache
    then does not serialize again. With a `certificate`, the listener speaks
    TLS and the certificate is served as SDS Secrets; a new certificate changes
    the Secrets only."""
    verdicts = health or {}
    memory = memory if memory is not None else Memory()
    tls: TlsMode = None if certificate is None else certificate.mutual
    of_intent = memory.intent_types.get(
        "", (intent, tls), functools.partial(_of_intent, intent, memory, tls)
    )
    assignments = load_assignments(intent, verdicts, memory.assignments, addresses)
    for_envoy = {**of_intent, ENDPOINT: assignments}
    if certificate is not None:  # without TLS the snapshot has no Secret type at all
        for_envoy[SECRET] = secrets(certificate, memory.secrets)
    try:
        # Proxyless gRPC clients: raises ConfigError for what they cannot take.
        return with_grpc_services(intent, verdicts, for_envoy, memory, addresses)
    finally:
        memory.sweep()  # a refused pass too: it must not leave a half pass behind


def _of_intent(intent: Intent, memory: Memory, tls: TlsMode) -> dict[str, Mapping[str, Message]]:
    """The types neither health nor the certificate's content affects."""
    return {
        CLUSTER: clusters(intent, memory.clusters),
        LISTENER: listeners(intent, memory.listeners, tls),
        ROUTE: route_configurations(intent, memory.service_routes, memory.route_configurations),
    }

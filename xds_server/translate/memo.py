"""Memory for the pure builders, so a change costs what it touches.

A builder is a pure function of its arguments, so when it is called again for
the same name with equal arguments its last result can be returned instead.
Equality (not hashing) decides: the intent is built by `dataclasses.replace`,
so unchanged services are the very same objects and a tuple comparison stops
at identity; nothing deep is hashed on every pass. A memory only ever holds
the names of the latest pass: `sweep` forgets the others.

Contract: messages returned from memory are shared by every snapshot that
holds them and must never be altered (`cache.build_snapshot` reuses their
serialization by identity).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from google.protobuf.message import Message

Value = TypeVar("Value")


class Memo(Generic[Value]):
    """One builder's results of the latest pass, by resource name, with the
    arguments that produced them."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[tuple[object, ...], Value]] = {}
        self._this: dict[str, tuple[tuple[object, ...], Value]] = {}

    def get(self, name: str, arguments: tuple[object, ...], build: Callable[[], Value]) -> Value:
        """`build()`, unless `name` was built last pass from equal `arguments`.
        `arguments` must be everything `build` reads."""
        entry = self._last.get(name)
        if entry is None or entry[0] != arguments:
            entry = (arguments, build())
        self._this[name] = entry
        return entry[1]

    def sweep(self) -> None:
        """End a pass: keep only what this pass asked for (bounded memory).
        A memo the pass did not consult at all keeps what it had: its
        caller's result was itself remembered one level up."""
        if self._this:
            self._last, self._this = self._this, {}

    def __len__(self) -> int:
        return len(self._last)


@dataclass
class Memory:
    """Every builder's memo, for one translator user (the publisher).

    Without one, `translate` starts from an empty memory: same output, just
    built from scratch."""

    # The types that depend on the intent alone, remembered on the whole intent:
    # a health flip does not even look at the per-service memos below.
    intent_types: Memo[dict[str, Mapping[str, Message]]] = field(default_factory=Memo)
    clusters: Memo[cluster_pb2.Cluster] = field(default_factory=Memo)
    assignments: Memo[endpoint_pb2.ClusterLoadAssignment] = field(default_factory=Memo)
    listeners: Memo[listener_pb2.Listener] = field(default_factory=Memo)
    service_routes: Memo[list[tuple[str, rc_pb2.Route]]] = field(default_factory=Memo)
    route_configurations: Memo[route_pb2.RouteConfiguration] = field(default_factory=Memo)
    secrets: Memo[secret_pb2.Secret] = field(default_factory=Memo)
    # The proxyless gRPC overlay (translate.grpc), per gRPC service.
    grpc_clusters: Memo[cluster_pb2.Cluster] = field(default_factory=Memo)
    grpc_assignments: Memo[endpoint_pb2.ClusterLoadAssignment] = field(default_factory=Memo)
    grpc_listeners: Memo[listener_pb2.Listener] = field(default_factory=Memo)
    grpc_routes: Memo[route_pb2.RouteConfiguration] = field(default_factory=Memo)

    def sweep(self) -> None:
        for memo in (
            self.intent_types,
            self.clusters,
            self.assignments,
            self.listeners,
            self.service_routes,
            self.route_configurations,
            self.secrets,
            self.grpc_clusters,
            self.grpc_assignments,
            self.grpc_listeners,
            self.grpc_routes,
        ):
            memo.sweep()

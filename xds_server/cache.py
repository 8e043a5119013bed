"""Immutable, versioned snapshots of every resource, and the cache that holds the current one.

The cache knows resources and versions and nothing of gRPC. A snapshot is
built once per intent change: each resource is serialized once (deterministic
bytes), packed once into an `Any` shared by every stream, and versioned by a
hash of its content. Type versions hash the sorted (name, digest) pairs, so
equal intent gives equal versions on every replica and across restarts
(xds-protocol rule 27).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from google.protobuf import any_pb2
from google.protobuf.message import Message

from xds_server.errors import InconsistentSnapshot
from xds_server.resources import ADS_ORDER, CLUSTER, ENDPOINT, LISTENER, ROUTE, Resources

VERSION_LENGTH = 16


@dataclass(frozen=True)
class Resource:
    """One serialized resource. `digest` changes exactly when its bytes do."""

    name: str
    message: Message
    packed: any_pb2.Any
    digest: str


@dataclass(frozen=True)
class TypeSnapshot:
    type_url: str
    resources: Mapping[str, Resource]
    version: str


@dataclass(frozen=True)
class Snapshot:
    """Every resource type at one generation. Never mutated once built."""

    generation: int
    types: Mapping[str, TypeSnapshot]

    def of(self, type_url: str) -> TypeSnapshot | None:
        return self.types.get(type_url)

    def versions(self) -> dict[str, str]:
        return {type_url: t.version for type_url, t in self.types.items()}


def build_snapshot(resources: Resources, generation: int) -> Snapshot:
    """Serialize, hash and check a translator output. Raises InconsistentSnapshot."""
    check_consistency(resources)
    types = {
        type_url: type_snapshot(type_url, resources.get(type_url, {})) for type_url in ADS_ORDER
    }
    return Snapshot(generation=generation, types=MappingProxyType(types))


def type_snapshot(type_url: str, messages: Mapping[str, Message]) -> TypeSnapshot:
    built = {name: serialized(name, messages[name]) for name in sorted(messages)}
    return TypeSnapshot(
        type_url=type_url,
        resources=MappingProxyType(built),
        version=version_of((name, r.digest) for name, r in built.items()),
    )


def serialized(name: str, message: Message) -> Resource:
    data = message.SerializeToString(deterministic=True)
    packed = any_pb2.Any(type_url="type.googleapis.com/" + message.DESCRIPTOR.full_name, value=data)
    return Resource(name, message, packed, hashlib.sha256(data).hexdigest()[:VERSION_LENGTH])


def version_of(named_digests: Iterable[tuple[str, str]]) -> str:
    hasher = hashlib.sha256()
    for name, digest in named_digests:
        hasher.update(f"{name}\0{digest}\n".encode())
    return hasher.hexdigest()[:VERSION_LENGTH]


def check_consistency(resources: Resources) -> None:
    """Every EDS name a cluster uses exists, every RDS name a listener uses
    exists, and every cluster a route names exists (xds-protocol rule 25)."""
    missing = [
        *_missing(ENDPOINT, _eds_names(resources.get(CLUSTER, {})), resources),
        *_missing(ROUTE, _rds_names(resources.get(LISTENER, {})), resources),
        *_missing(CLUSTER, _route_clusters(resources.get(ROUTE, {})), resources),
    ]
    if missing:
        raise InconsistentSnapshot("snapshot references missing resources: " + ", ".join(missing))


def _missing(type_url: str, wanted: Iterable[str], resources: Resources) -> list[str]:
    present = resources.get(type_url, {})
    short = type_url.rsplit(".", 1)[-1]
    return [f"{short} {name!r}" for name in sorted(set(wanted)) if name not in present]


def _eds_names(clusters: Mapping[str, Message]) -> Iterable[str]:
    for name, cluster in clusters.items():
        assert isinstance(cluster, cluster_pb2.Cluster)
        if cluster.type == cluster_pb2.Cluster.EDS:
            yield cluster.eds_cluster_config.service_name or name


def _rds_names(listeners: Mapping[str, Message]) -> Iterable[str]:
    for listener in listeners.values():
        assert isinstance(listener, listener_pb2.Listener)
        for chain in listener.filter_chains:
            for network_filter in chain.filters:
                hcm = hcm_pb2.HttpConnectionManager()
                if network_filter.typed_config.Unpack(hcm) and hcm.HasField("rds"):
                    yield hcm.rds.route_config_name


def _route_clusters(route_configs: Mapping[str, Message]) -> Iterable[str]:
    for config in route_configs.values():
        for virtual_host in getattr(config, "virtual_hosts", ()):
            for route in virtual_host.routes:
                if route.route.cluster:
                    yield route.route.cluster


class SnapshotCache:
    """Holds the current snapshot and wakes watchers when it changes.

    Watchers are plain callbacks (a stream sets its own wake-up event), so a
    slow stream never holds up publishing: latest snapshot wins.
    """

    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self._watchers: set[Callable[[], None]] = set()
        self._published = asyncio.Condition()

    @property
    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    @property
    def generation(self) -> int:
        return self._snapshot.generation if self._snapshot else 0

    def watch(self, wake: Callable[[], None]) -> Callable[[], None]:
        """Register a wake-up callback; returns the function that removes it."""
        self._watchers.add(wake)
        return lambda: self._watchers.discard(wake)

    @property
    def watcher_count(self) -> int:
        return len(self._watchers)

    async def publish(self, snapshot: Snapshot) -> None:
        self._snapshot = snapshot
        for wake in list(self._watchers):
            wake()
        async with self._published:
            self._published.notify_all()

    async def wait_for_generation(self, generation: int) -> Snapshot:
        async with self._published:
            await self._published.wait_for(lambda: self.generation >= generation)
        assert self._snapshot is not None
        return self._snapshot

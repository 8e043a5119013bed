"""Immutable, versioned snapshots of every resource, and the cache that holds the current one.

The cache knows resources and versions and nothing of gRPC. A snapshot is
built once per intent change: each resource is serialized once (deterministic
bytes), packed once into an `Any` shared by every stream, and versioned by a
hash of its content. Type versions hash the sorted (name, digest) pairs, so
equal intent gives equal versions on every replica and across restarts
(docs/xds-protocol.md rule 27). Built against the previous snapshot, a snapshot
reuses every resource whose message did not change, so a change costs what
it touches.

Watchers subscribe per type to names or to everything (wildcard); a publish
calls only the watchers of names that were added, changed or removed
(per-name watches), so streams a change does not concern are not even woken.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from types import MappingProxyType

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from xds_server.errors import InconsistentSnapshot
from xds_server.resources import ADS_ORDER, CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET, Resources

VERSION_LENGTH = 16
# Types a snapshot holds only when the translator emits them (router.tls).
OPTIONAL_TYPES = frozenset({SECRET})


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
    # What building this snapshot cost: per type, the names serialized anew
    # rather than reused from the previous snapshot. Not content.
    serialized: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: MappingProxyType({}), compare=False
    )

    def of(self, type_url: str) -> TypeSnapshot | None:
        return self.types.get(type_url)

    def versions(self) -> dict[str, str]:
        return {type_url: t.version for type_url, t in self.types.items()}


def build_snapshot(
    resources: Resources, generation: int, previous: Snapshot | None = None
) -> Snapshot:
    """Serialize, hash and check a translator output. Raises InconsistentSnapshot.

    With `previous`, a message that is the very object `previous` holds under
    the same name is not serialized again: its Resource is reused. The
    translator's memory returns unchanged messages as the same objects, and
    messages are never altered once built (translate.memo), so a health flip
    serializes one ClusterLoadAssignment. Identity, not equality: comparing
    two messages costs about what serializing one does.
    """
    types: dict[str, TypeSnapshot] = {}
    fresh: dict[str, tuple[str, ...]] = {}
    for type_url in ADS_ORDER:
        before = previous.of(type_url) if previous is not None else None
        if type_url in OPTIONAL_TYPES and type_url not in resources and before is None:
            # No TLS at the edge: no Secret type; docs/xds-protocol.md rule 35
            # ignores its requests.
            continue
        types[type_url], fresh[type_url] = type_snapshot(
            type_url, resources.get(type_url, {}), before
        )
    if previous is None or not _same_references(types, previous):
        check_consistency(resources)
    return Snapshot(generation, MappingProxyType(types), MappingProxyType(fresh))


def _same_references(types: Mapping[str, TypeSnapshot], previous: Snapshot) -> bool:
    """docs/xds-protocol.md rule 25 needs no new check when every referring
    resource (clusters, listeners, routes) is the very one `previous` held and
    every type still has the same names: `previous` passed the check when it
    was built."""
    referring = all(types[t] is previous.of(t) for t in (CLUSTER, LISTENER, ROUTE))
    return referring and all(
        (before := previous.of(t)) is not None
        and before.resources.keys() == types[t].resources.keys()
        for t in types
    )


def type_snapshot(
    type_url: str, messages: Mapping[str, Message], previous: TypeSnapshot | None = None
) -> tuple[TypeSnapshot, tuple[str, ...]]:
    """The type's snapshot, and the names that had to be serialized for it.
    When nothing did and no name went away, `previous` itself is returned."""
    held = previous.resources if previous is not None else {}
    built: dict[str, Resource] = {}
    fresh: list[str] = []
    for name in sorted(messages):
        message = messages[name]
        resource = held.get(name)
        if resource is None or resource.message is not message:
            resource = serialized(name, message)
            fresh.append(name)
        built[name] = resource
    if previous is not None and not fresh and len(built) == len(held):
        return previous, ()
    version = version_of((name, r.digest) for name, r in built.items())
    return TypeSnapshot(type_url, MappingProxyType(built), version), tuple(fresh)


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
    exists, every cluster a route names exists (docs/xds-protocol.md rule 25),
    and every SDS secret a listener's TLS names exists (docs/xds-protocol.md rule 39)."""
    missing = [
        *_missing(ENDPOINT, _eds_names(resources.get(CLUSTER, {})), resources),
        *_missing(ROUTE, _rds_names(resources.get(LISTENER, {})), resources),
        *_missing(SECRET, _sds_names(resources.get(LISTENER, {})), resources),
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
    """Route configs named by Envoy listeners' filter chains and by the API
    listeners of proxyless gRPC clients."""
    for listener in listeners.values():
        assert isinstance(listener, listener_pb2.Listener)
        configs = [f.typed_config for chain in listener.filter_chains for f in chain.filters]
        if listener.HasField("api_listener"):
            configs.append(listener.api_listener.api_listener)
        for config in configs:
            hcm = hcm_pb2.HttpConnectionManager()
            if config.Unpack(hcm) and hcm.HasField("rds"):
                yield hcm.rds.route_config_name


def _sds_names(listeners: Mapping[str, Message]) -> Iterable[str]:
    """Secrets named by the downstream TLS of listeners' filter chains."""
    for listener in listeners.values():
        assert isinstance(listener, listener_pb2.Listener)
        for chain in listener.filter_chains:
            context = tls_pb2.DownstreamTlsContext()
            if chain.HasField("transport_socket") and chain.transport_socket.typed_config.Unpack(
                context
            ):
                common = context.common_tls_context
                yield from (config.name for config in common.tls_certificate_sds_secret_configs)
                if common.HasField("validation_context_sds_secret_config"):
                    yield common.validation_context_sds_secret_config.name


def _route_clusters(route_configs: Mapping[str, Message]) -> Iterable[str]:
    for config in route_configs.values():
        for virtual_host in getattr(config, "virtual_hosts", ()):
            for route in virtual_host.routes:
                if route.route.cluster:
                    yield route.route.cluster


def changed_names(old: Snapshot, new: Snapshot) -> dict[str, frozenset[str]]:
    """Per type, the names added, changed or removed from `old` to `new`.
    Equal type versions mean equal content: those types are skipped unread."""
    changes: dict[str, frozenset[str]] = {}
    for type_url in {*old.types, *new.types}:
        before, after = old.of(type_url), new.of(type_url)
        if before is not None and after is not None and before.version == after.version:
            continue
        names = _differing(
            before.resources if before is not None else {},
            after.resources if after is not None else {},
        )
        if names:
            changes[type_url] = names
    return changes


def _differing(old: Mapping[str, Resource], new: Mapping[str, Resource]) -> frozenset[str]:
    changed = [
        name
        for name, resource in new.items()
        if (held := old.get(name)) is not resource
        and (held is None or held.digest != resource.digest)
    ]
    return frozenset(changed).union(old.keys() - new.keys())


Wake = Callable[[frozenset[str], int], None]


class Watch:
    """One watcher's interest, per type: every name (wildcard) or some names.

    The cache calls `wake(types, generation)` only when a published snapshot
    added, changed or removed a name of interest (or is the first one), with
    the types concerned. Everything else a watcher may need to react to (its
    own client's requests) it learns without the cache.
    """

    def __init__(self, index: _WatchIndex, wake: Wake) -> None:
        self.wake = wake
        self._index = index
        self._names: dict[str, frozenset[str]] = {}
        self._wildcard: set[str] = set()

    def subscribe(self, type_url: str, names: AbstractSet[str], wildcard: bool) -> None:
        """Replace this watch's interest in `type_url`."""
        old = self._names.get(type_url, frozenset())
        if old != names:
            new = frozenset(names)
            self._index.move(self, type_url, old - new, new - old)
            self._names[type_url] = new
        if wildcard != (type_url in self._wildcard):
            self._index.set_wildcard(self, type_url, wildcard)
            (self._wildcard.add if wildcard else self._wildcard.discard)(type_url)

    def types(self) -> frozenset[str]:
        return frozenset(self._wildcard.union(t for t, names in self._names.items() if names))

    def close(self) -> None:
        """Forget every interest; idempotent."""
        for type_url, names in self._names.items():
            self._index.move(self, type_url, names, frozenset())
        for type_url in self._wildcard:
            self._index.set_wildcard(self, type_url, False)
        self._names.clear()
        self._wildcard.clear()
        self._index.watches.discard(self)


class _WatchIndex:
    """Watches by (type, name) and by wildcard type, so a change finds the
    watches it concerns without looking at the others."""

    def __init__(self) -> None:
        self.watches: set[Watch] = set()
        self._named: dict[str, dict[str, set[Watch]]] = {}
        self._wildcard: dict[str, set[Watch]] = {}

    def move(
        self, watch: Watch, type_url: str, leave: AbstractSet[str], join: AbstractSet[str]
    ) -> None:
        by_name = self._named.setdefault(type_url, {})
        for name in leave:
            watching = by_name.get(name)
            if watching is not None:
                watching.discard(watch)
                if not watching:
                    del by_name[name]
        for name in join:
            by_name.setdefault(name, set()).add(watch)
        if not by_name:  # docs/xds-protocol.md rule 35: nothing kept for a type nobody watches
            del self._named[type_url]

    def set_wildcard(self, watch: Watch, type_url: str, wildcard: bool) -> None:
        watching = self._wildcard.setdefault(type_url, set())
        (watching.add if wildcard else watching.discard)(watch)
        if not watching:
            del self._wildcard[type_url]

    def affected(self, changes: Mapping[str, AbstractSet[str]]) -> dict[Watch, set[str]]:
        """Each watch interested in some change, with the types concerned."""
        found: dict[Watch, set[str]] = {}
        for type_url, names in changes.items():
            by_name = self._named.get(type_url, {})
            for watch in self._wildcard.get(type_url, ()):
                found.setdefault(watch, set()).add(type_url)
            for name in names:
                for watch in by_name.get(name, ()):
                    found.setdefault(watch, set()).add(type_url)
        return found


class SnapshotCache:
    """Holds the current snapshot and wakes the watchers a new one concerns.

    Watchers are plain callbacks (a stream sets its own wake-up event), so a
    slow stream never holds up publishing: latest snapshot wins. A watcher is
    called only when a name it watches changed, so the cost of a publish
    follows what changed and who watches it, not the number of streams.
    """

    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self._index = _WatchIndex()
        self._published = asyncio.Condition()

    @property
    def snapshot(self) -> Snapshot | None:
        return self._snapshot

    @property
    def generation(self) -> int:
        return self._snapshot.generation if self._snapshot else 0

    def watch(self, wake: Wake) -> Watch:
        """Register a watcher; it is told of nothing until it subscribes.
        `Watch.close` removes it."""
        watch = Watch(self._index, wake)
        self._index.watches.add(watch)
        return watch

    @property
    def watcher_count(self) -> int:
        return len(self._index.watches)

    async def publish(self, snapshot: Snapshot) -> None:
        previous, self._snapshot = self._snapshot, snapshot
        for watch, types in self._concerned(previous, snapshot).items():
            watch.wake(frozenset(types), snapshot.generation)
        async with self._published:
            self._published.notify_all()

    def _concerned(self, previous: Snapshot | None, snapshot: Snapshot) -> dict[Watch, set[str]]:
        if previous is None:  # the first snapshot concerns everyone
            return {watch: set(watch.types()) for watch in self._index.watches}
        return self._index.affected(changed_names(previous, snapshot))

    async def wait_for_generation(self, generation: int) -> Snapshot:
        async with self._published:
            await self._published.wait_for(lambda: self.generation >= generation)
        assert self._snapshot is not None
        return self._snapshot

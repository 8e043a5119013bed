"""One state-of-the-world xDS stream: subscriptions, nonces, ACK/NACK, what to send.

A reader task applies each request to per-type state and wakes the writer; the
writer compares the current snapshot with what this client was sent and
answers only with differences. Because the writer always works from the
latest state, a newer request supersedes older ones (rule 10) and a burst of
snapshot changes coalesces (latest wins, never a queue). Rule numbers refer
to ../shared/docs/xds-protocol.md.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field

from envoy.service.discovery.v3 import discovery_pb2

from xds_server.cache import Resource, Snapshot, SnapshotCache, TypeSnapshot, version_of
from xds_server.resources import ADS_ORDER, CLUSTER, ENDPOINT, FULL_STATE_TYPES, LISTENER, ROUTE
from xds_server.xds.observe import Observers, StreamInfo

WILDCARD = "*"
# Only these types have a legacy wildcard (an empty first request means "all").
WILDCARD_TYPES = frozenset({CLUSTER, LISTENER})


class ProtocolError(Exception):
    """The client broke the protocol; the stream ends with INVALID_ARGUMENT."""


@dataclass
class TypeState:
    """What one stream subscribes to and was sent, for one resource type."""

    type_url: str
    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    named: bool = False  # named a resource once: ends legacy wildcard (rule 17)
    nonce: str | None = None  # latest nonce sent; only it may be ACKed (rule 8)
    sent: dict[str, Resource] = field(default_factory=dict)  # what the client should hold
    must_answer: bool = False  # an initial wildcard request awaits a response
    in_flight: bool = False  # latest response not yet ACKed or NACKed
    version_sent: str = ""
    evaluated_generation: int = 0

    def subscribe(self, requested: Iterable[str], legacy_wildcard: bool) -> None:
        """Apply a request's resource names, following the four-step example of
        the xDS spec: [] -> *, [*, A] -> * + A, [A] -> A, [] -> nothing."""
        names = set(requested)
        if not names and not self.named and legacy_wildcard and self.type_url in WILDCARD_TYPES:
            self.wildcard = True
        else:
            self.named = self.named or bool(names)
            self.wildcard = WILDCARD in names
        names.discard(WILDCARD)
        # Forget what was sent for dropped names, so re-subscribing re-sends (rule 11).
        self.sent = {n: r for n, r in self.sent.items() if self.wildcard or n in names}
        self.names = names

    def wanted(self, current: TypeSnapshot) -> list[str]:
        if self.wildcard:
            return list(current.resources)
        return sorted(n for n in self.names if n in current.resources)


@dataclass(frozen=True)
class Outgoing:
    type_url: str
    resources: tuple[Resource, ...]
    version: str
    changed: tuple[str, ...]  # names whose content differs from what the client had


class SotwStream:
    """Serves one ADS or per-type SotW stream until the client goes away."""

    _ids = itertools.count(1)

    def __init__(
        self,
        cache: SnapshotCache,
        observers: Observers,
        *,
        kind: str,
        fixed_type: str | None,
        legacy_wildcard: bool = True,
        on_clusters_changed: Callable[[str, set[str]], None] | None = None,
    ) -> None:
        self.stream_id = next(self._ids)
        self._cache = cache
        self._observers = observers
        self._kind = kind
        self._fixed_type = fixed_type
        self._legacy_wildcard = legacy_wildcard
        self._on_clusters_changed = on_clusters_changed
        self._states: dict[str, TypeState] = {}
        self._wake = asyncio.Event()
        self._done = False
        self._error: Exception | None = None
        self._nonces = itertools.count(1)
        self.info: StreamInfo | None = None

    # ---- the stream's life ---------------------------------------------------

    async def serve(
        self, requests: AsyncIterator[discovery_pb2.DiscoveryRequest]
    ) -> AsyncIterator[discovery_pb2.DiscoveryResponse]:
        unwatch = self._cache.watch(self._wake.set)
        reader = asyncio.create_task(self._read(requests))
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                if self._error is not None:
                    raise self._error
                if self._done:
                    return
                for response in self._responses():
                    yield response
        finally:
            # Rule 31: a closed stream releases its watch, its task and its status.
            unwatch()
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            if self.info is not None:
                self._observers.emit("stream_closed", self.info)

    async def _read(self, requests: AsyncIterator[discovery_pb2.DiscoveryRequest]) -> None:
        try:
            async for request in requests:
                self.handle_request(request)
        except ProtocolError as error:
            self._error = error
        except Exception:
            pass  # the transport is gone; the writer ends below
        self._done = True
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    # ---- requests ------------------------------------------------------------

    def handle_request(self, request: discovery_pb2.DiscoveryRequest) -> None:
        if self.info is None:
            self._open(request)  # rule 1: only the first request must carry node
        type_url = self._type_of(request)
        state = self._states.get(type_url)
        if state is None:
            state = self._states[type_url] = TypeState(type_url)
            state.must_answer = True
        elif state.nonce is not None and request.response_nonce not in ("", state.nonce):
            self._observers.emit("stale_nonce", self.info, type_url)  # rule 8
            return
        elif request.response_nonce == state.nonce:
            self._settle(state, request)
        state.subscribe(request.resource_names, self._legacy_wildcard)
        self._wake.set()

    def _open(self, request: discovery_pb2.DiscoveryRequest) -> None:
        node = request.node
        admin = node.metadata.fields.get("admin_address")
        self.info = StreamInfo(
            stream_id=self.stream_id,
            kind=self._kind,
            node_id=node.id,
            node_cluster=node.cluster,
            envoy_admin=admin.string_value if admin is not None else None,
        )
        self._observers.emit("stream_opened", self.info)

    def _type_of(self, request: discovery_pb2.DiscoveryRequest) -> str:
        """Rule 2: ADS requests must name their type; per-type streams may not."""
        if self._fixed_type is None:
            if not request.type_url:
                raise ProtocolError("type_url is required on an aggregated stream")
            return str(request.type_url)
        if request.type_url not in ("", self._fixed_type):
            raise ProtocolError(f"this stream serves {self._fixed_type}, not {request.type_url}")
        return self._fixed_type

    def _settle(self, state: TypeState, request: discovery_pb2.DiscoveryRequest) -> None:
        """The client answered our latest response: an ACK, or a NACK when
        error_detail is present (rule 6). After a NACK nothing is re-sent until
        the config changes (rule 7): `sent` keeps the rejected content."""
        if not state.in_flight:
            return
        state.in_flight = False
        generation = state.evaluated_generation
        if request.HasField("error_detail"):
            message = request.error_detail.message
            rejected = state.version_sent
            self._observers.emit("nacked", self.info, state.type_url, rejected, message, generation)
        else:
            self._observers.emit(
                "acked", self.info, state.type_url, request.version_info, generation
            )

    # ---- responses -----------------------------------------------------------

    def _responses(self) -> list[discovery_pb2.DiscoveryResponse]:
        snapshot = self._cache.snapshot
        if snapshot is None or self.info is None:
            return []
        outgoing = [*self._make_before_break(snapshot)]
        for type_url in self._send_order():
            state = self._states[type_url]
            out = self._evaluate(state, snapshot)
            if out is not None:
                outgoing.append(out)
                if type_url == CLUSTER:
                    self._after_clusters_sent(out)
        return [self._response(out, snapshot.generation) for out in outgoing]

    def _send_order(self) -> list[str]:
        known = [t for t in ADS_ORDER if t in self._states]
        return known + sorted(t for t in self._states if t not in ADS_ORDER)

    def _evaluate(self, state: TypeState, snapshot: Snapshot) -> Outgoing | None:
        current = snapshot.of(state.type_url)
        state.evaluated_generation = snapshot.generation
        if current is None:  # a type we do not serve: stay silent
            return None
        wanted = state.wanted(current)
        changed = [n for n in wanted if _digest(state.sent.get(n)) != current.resources[n].digest]
        gone = [n for n in state.sent if n not in current.resources]
        if state.type_url in FULL_STATE_TYPES:
            # Rule 14: the complete set, whenever anything in it changed.
            if not (changed or gone or (state.must_answer and state.wildcard)):
                self._quiet(state)
                return None
            names = wanted
            state.sent = {n: current.resources[n] for n in wanted}
        else:
            # Rule 15: only what changed. Rule 13: nothing new, no response.
            for name in gone:
                del state.sent[name]
            if not changed:
                self._quiet(state)
                return None
            names = changed
            state.sent.update((n, current.resources[n]) for n in changed)
        state.must_answer = False
        resources = tuple(current.resources[n] for n in names)
        return Outgoing(state.type_url, resources, current.version, tuple(changed))

    def _quiet(self, state: TypeState) -> None:
        if not state.in_flight and self.info is not None:
            self._observers.emit(
                "up_to_date", self.info, state.type_url, state.evaluated_generation
            )
        return None

    def _response(self, out: Outgoing, generation: int) -> discovery_pb2.DiscoveryResponse:
        state = self._states[out.type_url]
        state.nonce = f"{self.stream_id}-{next(self._nonces)}"  # rule 3
        state.in_flight = True
        state.version_sent = out.version
        names = [r.name for r in out.resources]
        self._observers.emit(
            "response_sent", self.info, out.type_url, out.version, names, generation
        )
        return discovery_pb2.DiscoveryResponse(
            version_info=out.version,
            type_url=out.type_url,
            nonce=state.nonce,
            resources=[r.packed for r in out.resources],
        )

    # ---- cluster changes: warming and make-before-break ----------------------

    def _after_clusters_sent(self, out: Outgoing) -> None:
        """Rule 23: a changed cluster re-warms in Envoy and waits for its
        endpoints, so its EDS resource must be sent again even if unchanged."""
        eds_names = {_eds_name(r) for r in out.resources if r.name in out.changed}
        if self._on_clusters_changed is not None and self.info is not None:
            self._on_clusters_changed(self.info.node_id, eds_names)

    def forget_endpoints(self, names: set[str]) -> None:
        state = self._states.get(ENDPOINT)
        if state is not None and names & state.sent.keys():
            state.sent = {n: r for n, r in state.sent.items() if n not in names}
            self._wake.set()

    def _make_before_break(self, snapshot: Snapshot) -> list[Outgoing]:
        """Rule 24: when clusters disappear, first send the new clusters *with*
        the old ones, then endpoints, listeners and routes, and only then the
        final cluster set, so no route ever points at a missing cluster."""
        state = self._states.get(CLUSTER)
        current = snapshot.of(CLUSTER)
        if self._fixed_type is not None or state is None or current is None:
            return []
        removed = [r for n, r in state.sent.items() if n not in current.resources]
        if not removed or not self._routing_changes(snapshot):
            return []
        kept = [current.resources[n] for n in state.wanted(current)]
        changed = tuple(r.name for r in kept if _digest(state.sent.get(r.name)) != r.digest)
        union = tuple(sorted([*kept, *removed], key=lambda r: r.name))
        state.sent = {r.name: r for r in union}
        version = version_of((r.name, r.digest) for r in union)
        return [Outgoing(CLUSTER, union, version, changed)]

    def _routing_changes(self, snapshot: Snapshot) -> bool:
        """Would this pass send new listeners or routes?"""
        for type_url in (LISTENER, ROUTE):
            state, current = self._states.get(type_url), snapshot.of(type_url)
            if state is not None and current is not None:
                wanted = state.wanted(current)
                if any(_digest(state.sent.get(n)) != current.resources[n].digest for n in wanted):
                    return True
        return False


def _digest(resource: Resource | None) -> str | None:
    return None if resource is None else resource.digest


def _eds_name(resource: Resource) -> str:
    cluster = resource.message
    config = getattr(cluster, "eds_cluster_config", None)
    return (config.service_name if config is not None else "") or resource.name

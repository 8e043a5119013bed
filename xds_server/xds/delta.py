"""One incremental (Delta) xDS stream.

The client states subscription changes and, on reconnect, what it already
holds (`initial_resource_versions`); the server sends only resources whose
version differs from what the client holds, and names deleted or missing
resources in `removed_resources`. Resource versions are content digests, so
they mean the same on every replica.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2

from xds_server.cache import Resource, Snapshot, TypeSnapshot
from xds_server.resources import (
    ADS_ORDER,
    CLUSTER,
    ENDPOINT,
    LISTENER,
    NAMED_ONLY_TYPES,
    ROUTE,
    SECRET,
)
from xds_server.xds import limits
from xds_server.xds.stream import WILDCARD, WILDCARD_TYPES, XdsStream

ABSENT = None  # "the client was told this name does not exist"
# Removals go referrer first: listeners name routes and secrets, routes name
# clusters, clusters name their endpoints.
REMOVAL_ORDER = (LISTENER, ROUTE, SECRET, CLUSTER, ENDPOINT)


@dataclass
class DeltaState:
    """Subscriptions and what the client holds, for one resource type."""

    type_url: str
    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    name_chars: int = 0  # of `names`, kept as they change (docs/xds-protocol.md rule 36)
    # name -> version (digest) the client holds, or ABSENT once told it is missing
    known: dict[str, str | None] = field(default_factory=dict)
    nonce: str | None = None
    in_flight: bool = False
    version_sent: str = ""
    must_answer: bool = False
    evaluated_generation: int = 0

    def apply(
        self, request: discovery_pb2.DeltaDiscoveryRequest, first: bool, legacy: bool
    ) -> None:
        subscribe = list(request.resource_names_subscribe)
        if first:
            self.known = dict(request.initial_resource_versions)  # docs/xds-protocol.md rule 22
            if not subscribe and legacy and self.type_url in WILDCARD_TYPES:
                self.wildcard = True
        for name in subscribe:
            if name == WILDCARD:
                # docs/xds-protocol.md rule 39: a Secret is never sent for `*`.
                self.wildcard = self.type_url not in NAMED_ONLY_TYPES
                continue
            if name not in self.names:
                self.names.add(name)
                self.name_chars += len(name)
            if not first:
                self.known.pop(name, None)  # docs/xds-protocol.md rule 20: answered again
        for name in request.resource_names_unsubscribe:
            if name == WILDCARD:
                self.wildcard = False
                self.known = {n: v for n, v in self.known.items() if n in self.names}
                continue
            if name in self.names:
                self.names.remove(name)
                self.name_chars -= len(name)
            # docs/xds-protocol.md rule 21: still covered by the wildcard, it must be
            # mentioned again; otherwise the client has dropped it.
            self.known.pop(name, None)

    def wanted(self, current: TypeSnapshot) -> list[str]:
        if self.wildcard:
            return list(current.resources)
        return sorted(n for n in self.names if n in current.resources)

    def removed(self, current: TypeSnapshot, wanted: set[str]) -> list[str]:
        """docs/xds-protocol.md rule 19: deleted resources the client holds, and
        explicitly subscribed names that do not exist and were not yet reported."""
        held_gone = [n for n, v in self.known.items() if v is not ABSENT and n not in wanted]
        missing = [n for n in self.names if n not in current.resources and n not in self.known]
        return sorted({*held_gone, *missing})


@dataclass(frozen=True)
class DeltaOut:
    type_url: str
    resources: tuple[Resource, ...]
    removed: tuple[str, ...]
    version: str


class DeltaStream(
    XdsStream[discovery_pb2.DeltaDiscoveryRequest, discovery_pb2.DeltaDiscoveryResponse]
):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._states: dict[str, DeltaState] = {}

    # ---- requests ------------------------------------------------------------

    def handle_request(self, request: discovery_pb2.DeltaDiscoveryRequest) -> None:
        type_url = self._open_and_type(request)
        if not self._serves(type_url):
            return  # docs/xds-protocol.md rule 35
        state = self._states.get(type_url)
        first = state is None
        self._check(request, first)
        if state is None:
            state = self._states[type_url] = DeltaState(type_url, must_answer=True)
        elif request.response_nonce and request.response_nonce != state.nonce:
            self._stale(type_url)  # not an answer to our latest response...
        elif request.response_nonce and state.in_flight:
            state.in_flight = False
            self._report_answer(type_url, request, state.version_sent, state.evaluated_generation)
        # ...but docs/xds-protocol.md rule 9: subscription changes count whatever the nonce.
        state.apply(request, first, self._legacy_wildcard)
        self._budget.charge(type_url, len(state.names), state.name_chars)
        self._interest(type_url, state.names, state.wildcard)
        self._touch(type_url)

    def _check(self, request: discovery_pb2.DeltaDiscoveryRequest, first: bool) -> None:
        """docs/xds-protocol.md rule 36: the names a request would add, and on a
        type's first request the versions the client says it holds, are
        within their caps. Raises LimitExceeded."""
        limits.check_texts("resource name", request.resource_names_subscribe)
        if first:
            initial = request.initial_resource_versions
            limits.check_texts("resource name", initial.keys())
            limits.check_texts("resource version", initial.values())
            chars = limits.total_chars(initial.keys()) + limits.total_chars(initial.values())
            self._budget.charge(f"{request.type_url} initial", len(initial), chars)

    # ---- responses -----------------------------------------------------------

    def responses(self) -> list[discovery_pb2.DeltaDiscoveryResponse]:
        """Make-before-break (docs/xds-protocol.md rule 24): additions and updates
        first, in ADS order; then removals, referrers before what they refer to, so no
        listener or route ever points at something already removed."""
        snapshot = self._cache.snapshot
        if snapshot is None or self.info is None:
            return []
        due = [t for t in self._send_order() if self._due(t)]
        evaluated = [self._evaluate(self._states[t], snapshot) for t in due]
        outs = [out for out in evaluated if out is not None]
        for out in outs:
            if out.type_url == CLUSTER:
                self._clusters_sent(list(out.resources))
        upserts: list[DeltaOut] = []
        removals: dict[str, DeltaOut] = {}
        for out in outs:
            others_change = any(o.resources for o in outs if o.type_url != out.type_url)
            if out.removed and others_change and self._fixed_type is None:
                removals[out.type_url] = dataclasses.replace(out, resources=())
                out = dataclasses.replace(out, removed=())
            if out.resources or out.removed or out.type_url not in removals:
                upserts.append(out)
        late = [removals[t] for t in REMOVAL_ORDER if t in removals]
        outgoing = upserts + late + [r for t, r in removals.items() if t not in REMOVAL_ORDER]
        return [self._response(out, snapshot.generation) for out in outgoing]

    def _send_order(self) -> list[str]:
        return [t for t in ADS_ORDER if t in self._states] + sorted(
            t for t in self._states if t not in ADS_ORDER
        )

    def _evaluate(self, state: DeltaState, snapshot: Snapshot) -> DeltaOut | None:
        current = snapshot.of(state.type_url)
        state.evaluated_generation = snapshot.generation
        if current is None:
            return None
        wanted = state.wanted(current)
        changed = [n for n in wanted if state.known.get(n) != current.resources[n].digest]
        removed = state.removed(current, set(wanted))
        # docs/xds-protocol.md rule 22: the first wildcard request is answered even
        # when empty, or Envoy never finishes initialising.
        if not (changed or removed or (state.must_answer and state.wildcard)):
            self._quiet(state.type_url, state.in_flight, snapshot.generation)
            return None
        state.must_answer = False
        state.known.update((n, current.resources[n].digest) for n in changed)
        state.known.update((n, ABSENT) for n in removed)
        state.known = {n: v for n, v in state.known.items() if v is not ABSENT or n in state.names}
        resources = tuple(current.resources[n] for n in changed)
        return DeltaOut(state.type_url, resources, tuple(removed), current.version)

    def _response(self, out: DeltaOut, generation: int) -> discovery_pb2.DeltaDiscoveryResponse:
        state = self._states[out.type_url]
        names = [r.name for r in out.resources]
        nonce = self._mark_sent(state, out.version, names, generation)
        return discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=out.version,
            type_url=out.type_url,
            nonce=nonce,
            resources=[
                discovery_pb2.Resource(name=r.name, version=r.digest, resource=r.packed)
                for r in out.resources
            ],
            removed_resources=list(out.removed),
        )

    def forget_endpoints(self, names: set[str]) -> None:
        state = self._states.get(ENDPOINT)  # docs/xds-protocol.md rule 23
        if state is not None and names & state.known.keys():
            for name in names:
                state.known.pop(name, None)
            self._touch(ENDPOINT)

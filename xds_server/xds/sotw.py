"""One state-of-the-world xDS stream: subscriptions, nonces, ACK/NACK, what to send.

SotW responses carry whole resources: the complete set for CDS and LDS
(docs/xds-protocol.md rule 14), only what changed for EDS and RDS
(docs/xds-protocol.md rule 15). What this client holds is tracked per name, so
a NACKed version is never re-sent (docs/xds-protocol.md rule 7) and a
re-subscribed name is sent again (docs/xds-protocol.md rule 11).

A CDS or LDS subscription by name to something that does not exist is
answered at once, without it, and names it in `resource_errors` as NOT_FOUND
(docs/xds-protocol.md rule 38), so a proxyless gRPC client need not wait for
its does-not-exist timer. Missing EDS and RDS names get no response of their
own (docs/xds-protocol.md rules 13 and 26).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import code_pb2, status_pb2

from xds_server.cache import Resource, Snapshot, TypeSnapshot, version_of
from xds_server.resources import (
    ADS_ORDER,
    CLUSTER,
    ENDPOINT,
    FULL_STATE_TYPES,
    LISTENER,
    NAMED_ONLY_TYPES,
    ROUTE,
)
from xds_server.xds import limits
from xds_server.xds.stream import WILDCARD, WILDCARD_TYPES, XdsStream, digest_of


@dataclass
class TypeState:
    """What one stream subscribes to and was sent, for one resource type."""

    type_url: str
    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    named: bool = False  # docs/xds-protocol.md rule 17: named once, legacy wildcard ends
    nonce: str | None = None  # latest sent; only it may be ACKed (docs/xds-protocol.md rule 8)
    sent: dict[str, Resource] = field(default_factory=dict)  # what the client should hold
    must_answer: bool = False  # an initial wildcard request awaits a response
    in_flight: bool = False  # latest response not yet ACKed or NACKed
    version_sent: str = ""
    evaluated_generation: int = 0
    # Named CDS/LDS resources the latest response went out without because they
    # did not exist: the client knows, so they are not answered again
    # (docs/xds-protocol.md rules 13 and 38).
    told_absent: set[str] = field(default_factory=set)

    def subscribe(self, requested: Iterable[str], legacy_wildcard: bool) -> None:
        """Apply a request's resource names, following the four-step example of
        the xDS spec: [] -> *, [*, A] -> * + A, [A] -> A, [] -> nothing."""
        names = set(requested)
        if not names and not self.named and legacy_wildcard and self.type_url in WILDCARD_TYPES:
            self.wildcard = True
        else:
            self.named = self.named or bool(names)
            # docs/xds-protocol.md rule 39: a Secret is never sent for `*`.
            self.wildcard = WILDCARD in names and self.type_url not in NAMED_ONLY_TYPES
        names.discard(WILDCARD)
        # Forget what was sent for dropped names, so re-subscribing re-sends
        # (docs/xds-protocol.md rule 11).
        self.sent = {n: r for n, r in self.sent.items() if self.wildcard or n in names}
        # A dropped name is answered again when subscribed again
        # (docs/xds-protocol.md rule 38).
        self.told_absent &= names
        self.names = names

    def wanted(self, current: TypeSnapshot) -> list[str]:
        if self.wildcard:
            return list(current.resources)
        return sorted(n for n in self.names if n in current.resources)

    def not_found(self, current: TypeSnapshot) -> list[str]:
        """docs/xds-protocol.md rule 38: subscribed names that do not exist, that
        the client holds nothing of and was not yet answered about. A name it
        holds is not among them: its absence says it is deleted
        (docs/xds-protocol.md rule 14), in a way every client understands."""
        return sorted(
            n
            for n in self.names
            if n not in current.resources and n not in self.told_absent and n not in self.sent
        )


@dataclass(frozen=True)
class Outgoing:
    type_url: str
    resources: tuple[Resource, ...]
    version: str
    changed: tuple[str, ...]  # names whose content differs from what the client had
    not_found: tuple[str, ...] = ()  # named in resource_errors (docs/xds-protocol.md rule 38)


class SotwStream(XdsStream[discovery_pb2.DiscoveryRequest, discovery_pb2.DiscoveryResponse]):
    """Serves one ADS or per-type SotW stream until the client goes away."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._states: dict[str, TypeState] = {}

    # ---- requests ------------------------------------------------------------

    def handle_request(self, request: discovery_pb2.DiscoveryRequest) -> None:
        type_url = self._open_and_type(request)
        if not self._serves(type_url):
            return  # docs/xds-protocol.md rule 35
        names = request.resource_names
        limits.check_texts("resource name", names)  # docs/xds-protocol.md rule 36
        state = self._states.get(type_url)
        if state is None:
            state = self._states[type_url] = TypeState(type_url)
            state.must_answer = True
        elif state.nonce is not None and request.response_nonce not in ("", state.nonce):
            self._stale(type_url)  # docs/xds-protocol.md rule 8
            return
        elif request.response_nonce == state.nonce:
            self._settle(state, request)
        # SotW names replace the type's previous ones (duplicates counted: a bound).
        self._budget.charge(type_url, len(names), limits.total_chars(names))
        state.subscribe(names, self._legacy_wildcard)
        self._interest(type_url, state.names, state.wildcard)
        self._touch(type_url)

    def _settle(self, state: TypeState, request: discovery_pb2.DiscoveryRequest) -> None:
        """After a NACK nothing is re-sent until the config changes
        (docs/xds-protocol.md rule 7): `sent` keeps the rejected content."""
        if state.in_flight:
            state.in_flight = False
            self._report_answer(
                state.type_url, request, state.version_sent, state.evaluated_generation
            )

    # ---- responses -----------------------------------------------------------

    def responses(self) -> list[discovery_pb2.DiscoveryResponse]:
        snapshot = self._cache.snapshot
        if snapshot is None or self.info is None:
            return []
        # Make-before-break starts only from a cluster change, which makes CDS due.
        outgoing = self._make_before_break(snapshot) if CLUSTER in self._due_types else []
        for early in outgoing:
            # docs/xds-protocol.md rule 23: clusters changed in the old+new set re-warm now.
            self._after_clusters_sent(early)
        # docs/xds-protocol.md rule 24: after an old+new CDS, the final cluster set
        # goes out last, behind the endpoints, listeners and routes that stop using
        # the old.
        for type_url in self._send_order(clusters_last=bool(outgoing)):
            # Checked as the pass goes: the CDS sent here may make EDS due
            # (docs/xds-protocol.md rule 23), and EDS comes after it.
            if not self._due(type_url):
                continue
            state = self._states[type_url]
            out = self._evaluate(state, snapshot)
            if out is not None:
                outgoing.append(out)
                if type_url == CLUSTER:
                    self._after_clusters_sent(out)
        return [self._response(out, snapshot.generation) for out in outgoing]

    def _send_order(self, clusters_last: bool = False) -> list[str]:
        known = [t for t in ADS_ORDER if t in self._states]
        order = known + sorted(t for t in self._states if t not in ADS_ORDER)
        if clusters_last and CLUSTER in order:
            order.remove(CLUSTER)
            order.append(CLUSTER)
        return order

    def _evaluate(self, state: TypeState, snapshot: Snapshot) -> Outgoing | None:
        current = snapshot.of(state.type_url)
        state.evaluated_generation = snapshot.generation
        if current is None:  # a type we do not serve: stay silent
            return None
        wanted = state.wanted(current)
        changed = [n for n in wanted if digest_of(state.sent.get(n)) != current.resources[n].digest]
        gone = [n for n in state.sent if n not in current.resources]
        not_found: list[str] = []
        if state.type_url in FULL_STATE_TYPES:
            # docs/xds-protocol.md rule 14: the complete set, whenever anything in it
            # changed; and docs/xds-protocol.md rule 38: at once when a name the
            # client asked for does not exist.
            not_found = state.not_found(current)
            if not (changed or gone or not_found or (state.must_answer and state.wildcard)):
                self._quiet(state.type_url, state.in_flight, snapshot.generation)
                return None
            names = wanted
            state.sent = {n: current.resources[n] for n in wanted}
            state.told_absent = {n for n in state.names if n not in current.resources}
        else:
            # docs/xds-protocol.md rule 15: only what changed.
            # docs/xds-protocol.md rule 13: nothing new, no response.
            for name in gone:
                del state.sent[name]
            if not changed:
                self._quiet(state.type_url, state.in_flight, snapshot.generation)
                return None
            names = changed
            state.sent.update((n, current.resources[n]) for n in changed)
        state.must_answer = False
        resources = tuple(current.resources[n] for n in names)
        return Outgoing(
            state.type_url, resources, current.version, tuple(changed), tuple(not_found)
        )

    def _response(self, out: Outgoing, generation: int) -> discovery_pb2.DiscoveryResponse:
        state = self._states[out.type_url]
        names = [r.name for r in out.resources]
        nonce = self._mark_sent(state, out.version, names, generation)
        return discovery_pb2.DiscoveryResponse(
            version_info=out.version,
            type_url=out.type_url,
            nonce=nonce,
            resources=[r.packed for r in out.resources],
            resource_errors=[_not_found(name) for name in out.not_found],
        )

    # ---- cluster changes: warming and make-before-break ----------------------

    def _after_clusters_sent(self, out: Outgoing) -> None:
        self._clusters_sent([r for r in out.resources if r.name in out.changed])

    def forget_endpoints(self, names: set[str]) -> None:
        state = self._states.get(ENDPOINT)  # docs/xds-protocol.md rule 23
        if state is not None and names & state.sent.keys():
            state.sent = {n: r for n, r in state.sent.items() if n not in names}
            self._touch(ENDPOINT)

    def _make_before_break(self, snapshot: Snapshot) -> list[Outgoing]:
        """docs/xds-protocol.md rule 24: when clusters disappear, first send the
        new clusters *with* the old ones, then endpoints, listeners and routes,
        and only then the final cluster set, so no route ever points at a
        missing cluster."""
        state = self._states.get(CLUSTER)
        current = snapshot.of(CLUSTER)
        if self._fixed_type is not None or state is None or current is None:
            return []
        removed = [r for n, r in state.sent.items() if n not in current.resources]
        if not removed or not self._routing_changes(snapshot):
            return []
        kept = [current.resources[n] for n in state.wanted(current)]
        changed = tuple(r.name for r in kept if digest_of(state.sent.get(r.name)) != r.digest)
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
                if any(digest_of(state.sent.get(n)) != current.resources[n].digest for n in wanted):
                    return True
        return False


def _not_found(name: str) -> discovery_pb2.ResourceError:
    """docs/xds-protocol.md rule 38: the xDS "resource_errors" entry (gRFC A88)
    that lets a client stop waiting for `name`. The message does not repeat
    the name, so the answer is no larger than the request that named it."""
    return discovery_pb2.ResourceError(
        resource_name=discovery_pb2.ResourceName(name=name),
        error_detail=status_pb2.Status(code=code_pb2.NOT_FOUND, message="does not exist"),
    )

"""The Client Status Discovery Service (envoy.service.status.v3): per connected
client, every resource it was sent and whether it ACKed or NACKed it.

ProxyRegistry (status.py) keeps one status per proxy and *type*; CSDS reports
per *resource*. So this module keeps a `ResourceLedger`, another observer of
the same protocol hooks (like metrics and logs): each response's resource names,
taken with their content from the snapshot the response was built from (the
resource as sent), and each ACK or NACK applied to the resources it answers.
Nothing here feeds back into what is sent.

Per resource, as the client reports it (client_status) and as the server sees
it (config_status):

    REQUESTED / STALE   sent, the client has not answered yet
    ACKED     / SYNCED  the response carrying it was ACKed
    NACKED    / ERROR   the response that first carried this content was
                        NACKed; error_state holds the client's message

A NACK marks only resources whose content was new in the rejected response:
an unchanged resource sent along (SotW CDS and LDS always carry the full set,
docs/xds-protocol.md rule 14) keeps the copy the client accepted before. A
resource disappears from the report when a full-state response leaves it out,
when it is deleted from the snapshot, or when its stream closes. Limitation:
the hooks do not report subscriptions, so an EDS or RDS name a client
unsubscribed from while the resource still exists stays listed until then.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import grpc
import re2
from envoy.admin.v3 import config_dump_shared_pb2 as dump_pb2
from envoy.config.core.v3 import base_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from envoy.type.matcher.v3 import node_pb2, string_pb2
from google.protobuf import any_pb2, timestamp_pb2

from xds_server.cache import Resource, Snapshot, SnapshotCache
from xds_server.resources import FULL_STATE_TYPES
from xds_server.xds.limits import LOG_TEXT_CHARS, clip
from xds_server.xds.observe import Observers, StreamInfo

REDACTED = "[redacted]"


class State(Enum):
    REQUESTED = (dump_pb2.REQUESTED, csds_pb2.STALE)
    ACKED = (dump_pb2.ACKED, csds_pb2.SYNCED)
    NACKED = (dump_pb2.NACKED, csds_pb2.ERROR)


@dataclass(frozen=True)
class Rejection:
    version: str  # the rejected version
    message: str  # the client's error_detail
    at: float  # epoch seconds


@dataclass(slots=True)
class Row:
    """One resource a client holds or was offered."""

    resource: Resource | None  # None: sent, but its content was not at hand
    version: str  # of this content: the response's (SotW) or the resource's (Delta)
    sent_at: float  # epoch seconds
    state: State = State.REQUESTED
    rejection: Rejection | None = None


@dataclass
class TypeLedger:
    rows: dict[str, Row] = field(default_factory=dict)
    pending: set[str] = field(default_factory=set)  # REQUESTED rows awaiting an answer


@dataclass
class StreamLedger:
    info: StreamInfo
    types: dict[str, TypeLedger] = field(default_factory=dict)


class ResourceLedger:
    """An XdsObserver recording, per stream, each resource sent and its answer."""

    def __init__(self, cache: SnapshotCache) -> None:
        self._cache = cache
        self.streams: dict[int, StreamLedger] = {}

    def stream_opened(self, info: StreamInfo) -> None:
        self.streams[info.stream_id] = StreamLedger(info)

    def stream_closed(self, info: StreamInfo) -> None:
        self.streams.pop(info.stream_id, None)

    def response_sent(
        self, info: StreamInfo, type_url: str, version: str, names: Sequence[str], generation: int
    ) -> None:
        ledger = self._ledger(info, type_url)
        if ledger is None:
            return
        delta = info.kind.endswith("-delta")
        resources = self._resources(type_url, generation)
        now = time.time()
        for name in names:
            _offer(ledger, name, resources.get(name) if resources else None, version, delta, now)
        if type_url in FULL_STATE_TYPES and not delta:
            # docs/xds-protocol.md rule 14: what a full-state response leaves out,
            # the client deletes.
            _keep(ledger, set(names))
        elif resources is not None and len(ledger.rows) > len(resources):
            # Some rows name deleted resources: forget them (bounds the ledger).
            _keep(ledger, resources.keys())

    def acked(self, info: StreamInfo, type_url: str, version: str, generation: int) -> None:
        """Answers come only for the stream's latest response of the type, so
        an ACK settles everything still pending, superseded responses too."""
        ledger = self._ledger(info, type_url)
        if ledger is not None:
            for name in ledger.pending:
                ledger.rows[name].state = State.ACKED
            ledger.pending.clear()

    def nacked(
        self, info: StreamInfo, type_url: str, version: str, message: str, generation: int
    ) -> None:
        ledger = self._ledger(info, type_url)
        if ledger is not None:
            rejection = Rejection(version, message, time.time())
            for name in ledger.pending:
                row = ledger.rows[name]
                row.state, row.rejection = State.NACKED, rejection
            ledger.pending.clear()

    def up_to_date(self, info: StreamInfo, type_url: str, generation: int) -> None:
        pass

    def stale_nonce(self, info: StreamInfo, type_url: str) -> None:
        pass

    def _ledger(self, info: StreamInfo, type_url: str) -> TypeLedger | None:
        stream = self.streams.get(info.stream_id)
        if stream is None:  # a hook after the stream closed
            return None
        return stream.types.setdefault(type_url, TypeLedger())

    def _resources(self, type_url: str, generation: int) -> Mapping[str, Resource] | None:
        """The content of the snapshot the response was built from. Streams
        build responses synchronously from the cache's current snapshot, so
        it is that one; if not, content is left out rather than guessed."""
        snapshot = self._cache.snapshot
        if snapshot is None or snapshot.generation != generation:
            return None
        current = snapshot.of(type_url)
        return None if current is None else current.resources

    def current(self) -> Snapshot | None:
        return self._cache.snapshot


def _offer(
    ledger: TypeLedger, name: str, resource: Resource | None, version: str, delta: bool, now: float
) -> None:
    """Record one resource of a response. New content awaits its answer; so
    does unchanged content the client has not accepted yet (offered again)."""
    row = ledger.rows.get(name)
    if resource is None and row is not None:
        resource = row.resource  # re-sent, e.g. a removed cluster kept for make-before-break
    if row is None or _digest(row.resource) != _digest(resource):
        own_version = resource.digest if delta and resource is not None else version
        ledger.rows[name] = Row(resource, own_version, now)
        ledger.pending.add(name)
    elif row.state is not State.ACKED:
        row.state = State.REQUESTED
        ledger.pending.add(name)


def _keep(ledger: TypeLedger, names: AbstractSet[str]) -> None:
    ledger.rows = {n: r for n, r in ledger.rows.items() if n in names}
    ledger.pending &= ledger.rows.keys()


def _digest(resource: Resource | None) -> str | None:
    return None if resource is None else resource.digest


# ---- the report ------------------------------------------------------------------------


class UnsupportedMatcher(ValueError):
    """The request asks for a node match this server cannot evaluate."""


def client_configs(
    ledger: ResourceLedger, request: csds_pb2.ClientStatusRequest
) -> list[csds_pb2.ClientConfig]:
    """One ClientConfig per connected node the request's matchers select,
    sorted by node id. Raises UnsupportedMatcher."""
    matchers = [_node_matcher(m) for m in request.node_matchers]
    by_node: dict[str, list[StreamLedger]] = {}
    for stream in ledger.streams.values():
        node_id = stream.info.node_id
        if not matchers or any(match(node_id) for match in matchers):
            by_node.setdefault(node_id, []).append(stream)
    contents = not request.exclude_resource_contents
    snapshot = ledger.current()
    return [_client_config(by_node[n], contents, snapshot) for n in sorted(by_node)]


def _client_config(
    streams: list[StreamLedger], contents: bool, snapshot: Snapshot | None
) -> csds_pb2.ClientConfig:
    # Several streams of one node (per-type streams, or a reconnect that
    # overlaps the old stream): for each resource the newest stream wins.
    streams = sorted(streams, key=lambda s: s.info.stream_id)
    rows: dict[tuple[str, str], Row] = {}
    for stream in streams:
        for type_url, ledger in stream.types.items():
            rows.update(
                ((type_url, name), row)
                for name, row in ledger.rows.items()
                if _exists(snapshot, type_url, name)
            )
    info = streams[-1].info
    return csds_pb2.ClientConfig(
        node=base_pb2.Node(id=info.node_id, cluster=info.node_cluster),
        generic_xds_configs=[
            _generic_config(type_url, name, rows[type_url, name], contents)
            for type_url, name in sorted(rows)
        ],
    )


def _exists(snapshot: Snapshot | None, type_url: str, name: str) -> bool:
    """Deleted resources leave the report even where no response said so
    (SotW EDS and RDS, docs/xds-protocol.md rule 15)."""
    current = snapshot.of(type_url) if snapshot is not None else None
    return current is None or name in current.resources


def _generic_config(
    type_url: str, name: str, row: Row, contents: bool
) -> csds_pb2.ClientConfig.GenericXdsConfig:
    client_status, config_status = row.state.value
    config = csds_pb2.ClientConfig.GenericXdsConfig(
        type_url=type_url,
        name=name,
        version_info=row.version,
        last_updated=_timestamp(row.sent_at),
        client_status=client_status,
        config_status=config_status,
    )
    if contents and row.resource is not None:
        config.xds_config.CopyFrom(dumpable(row.resource))
    if row.state is State.NACKED and row.rejection is not None:
        config.error_state.CopyFrom(_failure(row, contents))
    return config


def dumpable(resource: Resource) -> any_pb2.Any:
    """The resource as a dump may show it: a Secret's private key is replaced by
    "[redacted]", as Envoy's own config dump does (docs/security.md)."""
    message = resource.message
    if not isinstance(message, secret_pb2.Secret) or not message.HasField("tls_certificate"):
        return resource.packed
    redacted = secret_pb2.Secret()
    redacted.CopyFrom(message)
    redacted.tls_certificate.private_key.Clear()
    redacted.tls_certificate.private_key.inline_string = REDACTED
    shown = any_pb2.Any()
    shown.Pack(redacted)
    return shown


def _failure(row: Row, contents: bool) -> dump_pb2.UpdateFailureState:
    assert row.rejection is not None
    failure = dump_pb2.UpdateFailureState(
        last_update_attempt=_timestamp(row.rejection.at),
        details=row.rejection.message,
        version_info=row.rejection.version,
    )
    if contents and row.resource is not None:
        failure.failed_configuration.CopyFrom(dumpable(row.resource))
    return failure


def _timestamp(epoch: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(epoch * 1e9))
    return stamp


# ---- node matchers ---------------------------------------------------------------------

Predicate = Callable[[str], bool]

_STRING_TESTS: dict[str, Callable[[str, str], bool]] = {
    "exact": lambda value, pattern: value == pattern,
    "prefix": lambda value, pattern: value.startswith(pattern),
    "suffix": lambda value, pattern: value.endswith(pattern),
    "contains": lambda value, pattern: pattern in value,
}


def _node_matcher(matcher: node_pb2.NodeMatcher) -> Predicate:
    """NodeMatcher -> a test of the node id. Metadata matchers are refused:
    the protocol hooks carry no node metadata, and ignoring a criterion would
    report nodes the caller meant to exclude."""
    if matcher.node_metadatas:
        raise UnsupportedMatcher("node_metadatas matchers are not supported; match on node_id")
    if not matcher.HasField("node_id"):
        return lambda node_id: True
    return _string_matcher(matcher.node_id)


def _string_matcher(matcher: string_pb2.StringMatcher) -> Predicate:
    kind = matcher.WhichOneof("match_pattern")
    if kind == "safe_regex":
        # Envoy: a full match, and ignore_case has no effect on regexes.
        regex = _compile(matcher.safe_regex.regex)
        return lambda node_id: regex.fullmatch(node_id) is not None
    test = _STRING_TESTS.get(kind or "")
    if test is None:
        raise UnsupportedMatcher(f"node_id matcher {kind or '(empty)'!s} is not supported")
    pattern = str(getattr(matcher, kind or ""))
    if matcher.ignore_case:
        folded = pattern.lower()
        return lambda node_id: test(node_id.lower(), folded)
    return lambda node_id: test(node_id, pattern)


def _compile(pattern: str) -> Any:
    """RE2, as Envoy's safe_regex: linear time whatever the pattern, so a
    caller cannot stall the server with one that backtracks (Python's `re`
    takes exponential time on `(a+)+$`); what RE2 refuses is refused."""
    options = re2.Options()
    options.log_errors = False  # the refusal goes to the caller, not to stderr
    try:
        return re2.compile(pattern, options)
    except re2.error as error:
        reason = error.args[0].decode(errors="replace") if error.args else "invalid"
        shown = clip(pattern, LOG_TEXT_CHARS)
        raise UnsupportedMatcher(f"node_id regex {shown!r}: {reason}") from error


# ---- the gRPC service ------------------------------------------------------------------


class ClientStatusService(csds_pb2_grpc.ClientStatusDiscoveryServiceServicer):  # type: ignore[misc]
    """StreamClientStatus answers every request with a fresh report;
    FetchClientStatus answers one."""

    def __init__(self, ledger: ResourceLedger) -> None:
        self.ledger = ledger

    async def FetchClientStatus(
        self, request: csds_pb2.ClientStatusRequest, context: grpc.aio.ServicerContext
    ) -> csds_pb2.ClientStatusResponse:
        try:
            return csds_pb2.ClientStatusResponse(config=client_configs(self.ledger, request))
        except UnsupportedMatcher as error:
            _invalid(context, error)
            return csds_pb2.ClientStatusResponse()

    async def StreamClientStatus(
        self,
        requests: AsyncIterator[csds_pb2.ClientStatusRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        # A coroutine handler writing with context.write, as the xDS streams do
        # (server.py), so the RPC ends at once however the client leaves.
        async for request in requests:
            try:
                configs = client_configs(self.ledger, request)
            except UnsupportedMatcher as error:
                _invalid(context, error)
                return
            await context.write(csds_pb2.ClientStatusResponse(config=configs))


def _invalid(context: grpc.aio.ServicerContext, error: UnsupportedMatcher) -> None:
    # Not context.abort(): see xds/server.py, XdsEngine.serve.
    context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
    context.set_details(str(error))


def add_to_server(
    cache: SnapshotCache, observers: Observers, server: grpc.aio.Server
) -> ResourceLedger:
    """Serve CSDS on `server`, fed by the protocol engine's hooks (`observers`)."""
    ledger = ResourceLedger(cache)
    observers.add(ledger)
    csds_pb2_grpc.add_ClientStatusDiscoveryServiceServicer_to_server(
        ClientStatusService(ledger), server
    )
    return ledger

"""The Health Discovery Service: Envoys that probe backends on the controller's behalf.

`envoy.service.health.v3.HealthDiscoveryService`, served on the xDS port next
to ADS (docs/envoy-notes.md, "HDS"). An Envoy bootstrapped with `hds_config`
opens one StreamHealthCheck and sends a HealthCheckRequest (its node and the
probe protocols it can run); the server answers with a HealthCheckSpecifier
(clusters of endpoints, their health checks, the report interval) whenever
the node's assignment changes; Envoy then sends an EndpointHealthResponse
every `interval`, from the first specifier on.

This module knows the protocol and nothing of what to probe: `HdsSessions`
tells its owner (an `HdsOwner`: the health layer) who joined, who left and
what each one reported, and takes the specifiers the owner pushes
(`HdsSessions.push`), however they were built. A node's stream must be
vouched for by its client certificate like an ADS stream's
(docs/xds-protocol.md rule 34); a newer stream of the node replaces the older
(docs/xds-protocol.md rule 33). A report is bounded as an xDS request is:
gRPC's receive limit (limits.MAX_REQUEST_BYTES), at most limits.MAX_NAMES
endpoints, texts of at most limits.MAX_TEXT_CHARS; past them the stream ends
RESOURCE_EXHAUSTED. FetchHealthCheck, the unary form, is UNIMPLEMENTED, as the
xDS Fetch methods are.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import grpc
from envoy.config.core.v3 import health_check_pb2
from envoy.service.health.v3 import hds_pb2, hds_pb2_grpc
from google.protobuf.message import DecodeError

from xds_server.errors import ProtocolError
from xds_server.xds import limits
from xds_server.xds.codes import STREAM_ERRORS, status_of
from xds_server.xds.identity import Admission, Peer
from xds_server.xds.stream import StreamReplaced

log = logging.getLogger("xds_server.xds.hds")

HealthCheckSpecifier = Any  # envoy.service.health.v3.HealthCheckSpecifier (no stubs)


@dataclass(frozen=True)
class HdsNode:
    """One Envoy with an open HDS stream, as its first request named it."""

    node_id: str
    connected_at: float  # wall clock, seconds since 1970
    peer_ip: str | None
    # Capability.Protocol names Envoy says it checks; Envoy 1.40 says HTTP and TCP
    # (it runs gRPC health checks all the same, docs/envoy-notes.md "HDS").
    protocols: frozenset[str]


class EndpointHealth(NamedTuple):
    """One endpoint of one report: what Envoy's active health checker concluded."""

    address: str
    port: int
    # envoy.config.core.v3.HealthStatus by name: Envoy sends HEALTHY, UNHEALTHY
    # (also before the first probe of a new endpoint ended) or TIMEOUT.
    status: str


HealthReport = Mapping[str, list[EndpointHealth]]  # cluster_name -> its endpoints


class HdsOwner(Protocol):
    """What the sessions tell whoever assigns the probes. Called on the event loop,
    synchronously, and must not block; an exception is logged and the stream goes on."""

    def node_joined(self, node: HdsNode) -> None:
        """`node` has an open stream and nothing sent on it yet: push it its
        specifier. Also called when a newer stream of a connected node replaced
        its older one (the older one's end is no `node_left`)."""

    def node_left(self, node: HdsNode) -> None:
        """`node`'s stream ended; its reports count no more."""

    def reported(self, node_id: str, report: HealthReport) -> None:
        """An EndpointHealthResponse, parsed. Envoy reports every endpoint of every
        cluster of its current specifier, each time."""


class _Slot:
    """Latest wins: what the writer sends next, never a queue of it."""

    def __init__(self) -> None:
        self._item: tuple[bytes, HealthCheckSpecifier] | None = None
        self._changed = asyncio.Event()
        self.closed = False

    def put(self, item: tuple[bytes, HealthCheckSpecifier]) -> None:
        self._item = item
        self._changed.set()

    def close(self) -> None:
        self.closed = True
        self._changed.set()

    async def take(self) -> tuple[bytes, HealthCheckSpecifier] | None:
        """The latest item not taken yet; None once closed."""
        while self._item is None and not self.closed:
            self._changed.clear()
            await self._changed.wait()
        if self.closed:
            return None
        item, self._item = self._item, None
        return item


class _Session:
    """One stream: its node, what is to be sent and what was."""

    def __init__(self, node: HdsNode) -> None:
        self.node = node
        self.slot = _Slot()
        self.wanted: bytes | None = None  # the latest specifier pushed, serialized
        self.written: bytes | None = None  # the latest one written to the stream
        self.last_report_at: float | None = None
        self.ended: Exception | None = None

    def end(self, error: Exception) -> None:
        self.ended = error
        self.slot.close()


class HdsSessions:
    """The open HDS streams by node id, filled by the servicer (`serve`)."""

    def __init__(
        self, owner: HdsOwner | None = None, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.owner = owner
        self._clock = clock
        self._sessions: dict[str, _Session] = {}

    def nodes(self) -> dict[str, HdsNode]:
        """Every node with an open stream, by node id."""
        return {node_id: session.node for node_id, session in self._sessions.items()}

    def last_report_at(self, node_id: str) -> float | None:
        """When the node's current stream last reported (wall clock); None: not yet."""
        session = self._sessions.get(node_id)
        return session.last_report_at if session is not None else None

    def push(self, node_id: str, specifier: HealthCheckSpecifier) -> bool:
        """Send `specifier` to `node_id` unless it is what the node was last given
        (Envoy answers a repeated one with a hash comparison only, but it counts
        it, and the bytes are wasted). Returns False when the node has no
        stream: nothing is kept for a node that connects later (node_joined
        asks for it then). A LocalityEndpoints without endpoints is left out:
        Envoy 1.40 crashes on it (docs/envoy-notes.md, "HDS")."""
        session = self._sessions.get(node_id)
        if session is None:
            return False
        specifier = without_empty_localities(specifier)
        data = specifier.SerializeToString(deterministic=True)
        if data != session.wanted:
            session.wanted = data
            session.slot.put((data, specifier))
        return True

    async def serve(
        self,
        requests: AsyncIterator[Any],
        context: grpc.aio.ServicerContext,
        admission: Admission,
    ) -> None:
        """Serve one StreamHealthCheck until the client goes or the node's next
        stream replaces it. A coroutine handler, as XdsEngine.serve's."""
        iterator = aiter(requests)
        session: _Session | None = None
        try:
            session = self._open(await _first_request(iterator), Peer.of(context), admission)
            await self._run(session, iterator, context)
        except _ClientGone:
            pass  # gone before it named its node
        except STREAM_ERRORS as error:
            context.set_code(status_of(error))
            context.set_details(str(error))
        except grpc.aio.BaseError:
            raise  # the RPC is over: grpc's to handle
        except Exception:
            node = limits.loggable(session.node.node_id) if session else "not yet known"
            log.exception("HDS stream of node %s failed", node)
            context.set_code(grpc.StatusCode.INTERNAL)
            context.set_details("internal error in the HDS server; see its log")
        finally:
            if session is not None:
                self._close(session)

    def _open(self, request: Any, peer: Peer, admission: Admission) -> _Session:
        node = request.node
        limits.check_node(node)
        if not node.id:
            raise ProtocolError("the HealthCheckRequest names no node id")
        admission.check_node(node.id, peer)
        protocols = frozenset(
            hds_pb2.Capability.Protocol.Name(p)
            for p in request.capability.health_check_protocols
            if p in hds_pb2.Capability.Protocol.values()
        )
        session = _Session(HdsNode(node.id, self._clock(), peer.ip, protocols))
        older = self._sessions.get(node.id)
        if older is not None:
            older.end(
                StreamReplaced(
                    f"replaced by a newer HDS stream of node {node.id!r} from"
                    f" {peer.ip or 'unknown'} (docs/xds-protocol.md rule 33)"
                )
            )
        self._sessions[node.id] = session
        log.info("HDS node %s connected from %s", limits.loggable(node.id), peer.ip)
        self._tell("node_joined", session.node)
        return session

    def _close(self, session: _Session) -> None:
        if self._sessions.get(session.node.node_id) is not session:
            return  # replaced: the node is still here, on its newer stream
        del self._sessions[session.node.node_id]
        log.info("HDS node %s left", limits.loggable(session.node.node_id))
        self._tell("node_left", session.node)

    async def _run(
        self, session: _Session, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> None:
        """The writer, here; the reader, one task of its own."""
        reader = asyncio.create_task(self._read(session, requests))
        try:
            while (item := await session.slot.take()) is not None:
                data, specifier = item
                if data != session.written:  # pushed A, B, A while A was being written
                    await context.write(specifier)
                    session.written = data
        finally:
            reader.cancel()
            await asyncio.wait([reader])
        if session.ended is not None and not isinstance(session.ended, _ClientGone):
            raise session.ended

    async def _read(self, session: _Session, requests: AsyncIterator[Any]) -> None:
        try:
            while (message := await _next_message(requests)) is not None:
                kind = message.WhichOneof("request_type")
                if kind in ("endpoint_health_response", None):
                    # None: Envoy with no cluster to check sends an empty message.
                    report = parse_report(message.endpoint_health_response)
                    session.last_report_at = self._clock()
                    self._tell("reported", session.node.node_id, report)
                # A repeated HealthCheckRequest (Envoy sends one per stream) changes nothing.
            session.end(_ClientGone())
        except Exception as error:  # the client's (ProtocolError) or a bug: the writer raises it
            session.end(error)

    def _tell(self, hook: str, *args: object) -> None:
        if self.owner is None:
            return
        try:
            getattr(self.owner, hook)(*args)
        except Exception:  # the owner's bug must not end the Envoy's stream
            log.exception("HDS owner failed in %s", hook)


class _ClientGone(Exception):
    """The client half-closed or the RPC ended: the stream ends quietly."""


def without_empty_localities(specifier: HealthCheckSpecifier) -> HealthCheckSpecifier:
    """`specifier` without its LocalityEndpoints that hold no endpoint (a copy;
    the very message when it has none). Envoy 1.40 builds an empty locality
    of hosts from one and dereferences its first host at the next report: a
    SIGSEGV (docs/envoy-notes.md, "HDS")."""
    clusters = specifier.cluster_health_checks
    if all(loc.endpoints for cluster in clusters for loc in cluster.locality_endpoints):
        return specifier
    trimmed = type(specifier)()
    trimmed.CopyFrom(specifier)
    for cluster in trimmed.cluster_health_checks:
        kept = [loc for loc in cluster.locality_endpoints if loc.endpoints]
        del cluster.locality_endpoints[:]
        cluster.locality_endpoints.extend(kept)
    return trimmed


def parse_report(response: Any) -> dict[str, list[EndpointHealth]]:
    """An EndpointHealthResponse by cluster. Envoy fills `cluster_endpoints_health`
    and, for old servers, the flat `endpoints_health` with the same endpoints
    and no cluster names: only the first is read. Raises LimitExceeded for a
    report beyond limits.MAX_NAMES endpoints or with an oversized text."""
    report: dict[str, list[EndpointHealth]] = {}
    count = 0
    for cluster in response.cluster_endpoints_health:
        limits.check_texts("reported cluster name", [cluster.cluster_name])
        endpoints = report.setdefault(cluster.cluster_name, [])
        for locality in cluster.locality_endpoints_health:
            count += len(locality.endpoints_health)
            if count > limits.MAX_NAMES:
                raise limits.LimitExceeded(
                    f"a health report of more than {limits.MAX_NAMES} endpoints"
                )
            endpoints.extend(map(_endpoint_health, locality.endpoints_health))
    return report


def _endpoint_health(health: Any) -> EndpointHealth:
    address = health.endpoint.address.socket_address
    limits.check_texts("reported endpoint address", [address.address])
    return EndpointHealth(address.address, address.port_value, _status_name(health.health_status))


def _status_name(value: int) -> str:
    if value in health_check_pb2.HealthStatus.values():
        return str(health_check_pb2.HealthStatus.Name(value))
    return "UNKNOWN"  # a value newer than our protos


async def _first_request(requests: AsyncIterator[Any]) -> Any:
    """The HealthCheckRequest a stream starts with. ProtocolError when the stream
    starts with anything else; _ClientGone when it ends first."""
    message = await _next_message(requests)
    if message is None:
        raise _ClientGone()
    if not message.HasField("health_check_request"):
        raise ProtocolError("an HDS stream starts with a HealthCheckRequest naming the node")
    return message.health_check_request


async def _next_message(requests: AsyncIterator[Any]) -> Any | None:
    """The next message; None once the client half-closed or the RPC is over."""
    try:
        return await anext(requests)
    except (StopAsyncIteration, grpc.aio.BaseError):
        return None
    except DecodeError as error:
        raise ProtocolError(f"message does not decode: {error}") from error


class HdsServicer(hds_pb2_grpc.HealthDiscoveryServiceServicer):  # type: ignore[misc]
    """StreamHealthCheck through `sessions`, each node admitted by `admission` (the
    ADS streams' own)."""

    def __init__(self, sessions: HdsSessions, admission: Admission) -> None:
        self.sessions = sessions
        self.admission = admission

    async def StreamHealthCheck(
        self, request_iterator: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> None:
        await self.sessions.serve(request_iterator, context, self.admission)

    async def FetchHealthCheck(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        context.set_code(grpc.StatusCode.UNIMPLEMENTED)
        context.set_details("FetchHealthCheck is not served; use StreamHealthCheck")
        return hds_pb2.HealthCheckSpecifier()


def add_to_server(sessions: HdsSessions, admission: Admission, server: grpc.aio.Server) -> None:
    hds_pb2_grpc.add_HealthDiscoveryServiceServicer_to_server(
        HdsServicer(sessions, admission), server
    )

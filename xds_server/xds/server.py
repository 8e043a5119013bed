"""The xDS gRPC server: ADS and the per-type CDS/EDS/LDS/RDS services, SotW and Delta.

The server knows nonces, subscriptions and ACK/NACK, and nothing of where
resources come from: it serves whatever snapshot the cache holds. gRPC status
codes are chosen here and nowhere else.
"""

from __future__ import annotations

import logging
import socket
from collections import defaultdict
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any

import grpc
from envoy.service.cluster.v3 import cds_pb2_grpc
from envoy.service.discovery.v3 import ads_pb2_grpc
from envoy.service.endpoint.v3 import eds_pb2_grpc
from envoy.service.listener.v3 import lds_pb2_grpc
from envoy.service.route.v3 import rds_pb2_grpc
from google.protobuf.message import DecodeError

from xds_server.cache import SnapshotCache
from xds_server.errors import ListenFailed, ProtocolError
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from xds_server.xds import csds, limits
from xds_server.xds.codes import status_of
from xds_server.xds.delta import DeltaStream
from xds_server.xds.hds import HdsSessions
from xds_server.xds.hds import add_to_server as add_hds
from xds_server.xds.identity import Admission, EnvoyAdminClaim, NodeNotAuthorized, Peer
from xds_server.xds.observe import Observers
from xds_server.xds.sotw import SotwStream
from xds_server.xds.stream import StreamReplaced, XdsStream
from xds_server.xds.tls import ReloadingCredentials

log = logging.getLogger("xds_server.xds")

# docs/xds-protocol.md rule 30: Delta reconnect requests of large fleets exceed
# gRPC's 4 MiB default; docs/xds-protocol.md rule 36: still, a cap.
MAX_RESPONSE_BYTES = 64 * 1024 * 1024
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", limits.MAX_REQUEST_BYTES),
    ("grpc.max_send_message_length", MAX_RESPONSE_BYTES),
    # Envoy's xds_cluster sends HTTP/2 keepalive pings on idle streams; gRPC's
    # default anti-abuse rule answers them with GOAWAY "too_many_pings" and
    # Envoy reconnects. Accept them.
    ("grpc.http2.min_ping_interval_without_data_ms", 1_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.keepalive_permit_without_calls", 1),
]


class XdsEngine:
    """Creates streams, admits their nodes (docs/xds-protocol.md rules 33 and 34)
    and links the streams of one node to each other."""

    def __init__(
        self,
        cache: SnapshotCache,
        observers: Observers,
        *,
        legacy_wildcard: bool = True,
        admission: Admission | None = None,
    ) -> None:
        self.cache = cache
        self.observers = observers
        self.legacy_wildcard = legacy_wildcard
        self.admission = admission or Admission()
        self._streams_by_node: dict[str, set[XdsStream[Any, Any]]] = defaultdict(set)
        self.open_streams: set[XdsStream[Any, Any]] = set()

    async def serve(
        self,
        requests: AsyncIterator[Any],
        context: grpc.aio.ServicerContext,
        kind: str,
        type_url: str | None,
        *,
        delta: bool = False,
    ) -> None:
        """Serve one stream until it ends; responses go out with context.write.

        docs/xds-protocol.md rule 31: the handler is a coroutine, not an async
        generator, so that every way the RPC ends (client gone, cancelled
        mid-write, protocol error) unwinds through the finally blocks below at
        once. A generator
        handler that grpc abandons while a write is pending is only closed
        when the garbage collector finds it, and until then the stream keeps
        its watch, its reader task and its proxy status.
        """
        stream_class: type[XdsStream[Any, Any]] = DeltaStream if delta else SotwStream
        peer = Peer.of(context)
        stream = stream_class(
            self.cache,
            self.observers,
            kind=kind,
            fixed_type=type_url,
            legacy_wildcard=self.legacy_wildcard,
            on_clusters_changed=self._clusters_changed,
            admit=lambda stream, node: self._admit(stream, node, peer),
        )
        self.open_streams.add(stream)
        tracked = self._tracked(stream, requests)
        try:
            # The stream closes first: it stops the reader iterating `tracked`.
            async with aclosing(tracked), aclosing(stream.serve(tracked)) as responses:
                async for response in responses:
                    await context.write(response)
        except (ProtocolError, NodeNotAuthorized, StreamReplaced) as error:
            # Not context.abort(): grpc keeps the abort exception, and through
            # its traceback this stream, for as long as it keeps the RPC.
            context.set_code(status_of(error))
            context.set_details(str(error))
        except grpc.aio.BaseError:
            raise  # the RPC is over (client gone, server stopping): grpc's to handle
        except Exception:
            # A bug of ours, never the client's fault: say so, and keep the traceback.
            log.exception(
                "xDS %s stream %d (node %s) failed", kind, stream.stream_id, _node(stream)
            )
            context.set_code(grpc.StatusCode.INTERNAL)
            context.set_details("internal error in the xDS server; see its log")
        finally:
            self.open_streams.discard(stream)
            if stream.info is not None:
                peers = self._streams_by_node.get(stream.info.node_id)
                if peers is not None:
                    peers.discard(stream)
                    if not peers:
                        del self._streams_by_node[stream.info.node_id]

    async def _tracked(
        self, stream: XdsStream[Any, Any], requests: AsyncIterator[Any]
    ) -> AsyncGenerator[Any, None]:
        """The client's requests, until it half-closes or the RPC is over."""
        iterator = aiter(requests)
        while (request := await _next_request(iterator)) is not None:
            yield request

    def _admit(self, stream: XdsStream[Any, Any], node: Any, peer: Peer) -> EnvoyAdminClaim:
        """The stream's first request named its node: check the node against the
        peer's certificate, end the node's older streams of the same types
        (docs/xds-protocol.md rule 33), index the stream by node, and say which
        admin address to believe (docs/xds-protocol.md rule 34). Runs before `stream_opened`."""
        self.admission.check_node(node.id, peer)
        peers = self._streams_by_node[node.id]
        for older in [s for s in peers if _overlap(s, stream)]:
            peers.discard(older)
            older.end(
                StreamReplaced(
                    f"replaced by a newer stream of node {node.id!r} from {peer.ip or 'unknown'}"
                    " (docs/xds-protocol.md rule 33)"
                )
            )
        peers.add(stream)
        return self.admission.envoy_admin(_admin_address_of(node), peer)

    def _clusters_changed(self, node_id: str, eds_names: set[str]) -> None:
        """docs/xds-protocol.md rule 23 across streams: the node's EDS, on whichever
        stream it rides."""
        for stream in self._streams_by_node.get(node_id, ()):
            stream.forget_endpoints(eds_names)


def _overlap(older: XdsStream[Any, Any], newer: XdsStream[Any, Any]) -> bool:
    """Two streams of one node serve a type in common: ADS serves every type."""
    if older is newer:
        return False
    return older.fixed_type is None or newer.fixed_type in (None, older.fixed_type)


def _admin_address_of(node: Any) -> object:
    """metadata.admin_address: its text, the protobuf Value when it is no string,
    None when absent."""
    value = node.metadata.fields.get("admin_address")
    if value is None:
        return None
    return value.string_value if value.WhichOneof("kind") == "string_value" else value


async def _next_request(requests: AsyncIterator[Any]) -> Any | None:
    """The next request from grpc; None once the client half-closed or the RPC is
    over (grpc's own errors: finished, aborted, server stopping). Only a request
    that does not decode is an error, and the client's."""
    try:
        return await anext(requests)
    except (StopAsyncIteration, grpc.aio.BaseError):
        return None
    except DecodeError as error:
        raise ProtocolError(f"request does not decode: {error}") from error


def _node(stream: XdsStream[Any, Any]) -> str:
    return limits.loggable(stream.info.node_id) if stream.info is not None else "not yet known"


def _stream_handler(kind: str, type_url: str | None, delta: bool) -> Callable[..., Awaitable[None]]:
    # A coroutine handler: grpc.aio's reader-writer API (see XdsEngine.serve).
    async def handle(
        self: _Servicer, requests: AsyncIterator[Any], context: grpc.aio.ServicerContext
    ) -> None:
        await self.engine.serve(requests, context, kind, type_url, delta=delta)

    return handle


class _Servicer:
    def __init__(self, engine: XdsEngine) -> None:
        self.engine = engine


# (servicer base, its SotW method, its Delta method, stream kind, the type it serves, adder)
_SERVICES = (
    (
        ads_pb2_grpc.AggregatedDiscoveryServiceServicer,
        "StreamAggregatedResources",
        "DeltaAggregatedResources",
        "ads",
        None,
        ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server,
    ),
    (
        cds_pb2_grpc.ClusterDiscoveryServiceServicer,
        "StreamClusters",
        "DeltaClusters",
        "cds",
        CLUSTER,
        cds_pb2_grpc.add_ClusterDiscoveryServiceServicer_to_server,
    ),
    (
        eds_pb2_grpc.EndpointDiscoveryServiceServicer,
        "StreamEndpoints",
        "DeltaEndpoints",
        "eds",
        ENDPOINT,
        eds_pb2_grpc.add_EndpointDiscoveryServiceServicer_to_server,
    ),
    (
        lds_pb2_grpc.ListenerDiscoveryServiceServicer,
        "StreamListeners",
        "DeltaListeners",
        "lds",
        LISTENER,
        lds_pb2_grpc.add_ListenerDiscoveryServiceServicer_to_server,
    ),
    (
        rds_pb2_grpc.RouteDiscoveryServiceServicer,
        "StreamRoutes",
        "DeltaRoutes",
        "rds",
        ROUTE,
        rds_pb2_grpc.add_RouteDiscoveryServiceServicer_to_server,
    ),
)


def build_server(engine: XdsEngine, hds: HdsSessions | None = None) -> grpc.aio.Server:
    """Every SotW and Delta service, and CSDS; the unary xDS Fetch methods stay
    UNIMPLEMENTED. With `hds`, the Health Discovery Service too, its nodes
    admitted as the engine admits ADS nodes (xds/hds.py)."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    for base, sotw_method, delta_method, kind, type_url, add in _SERVICES:
        methods = {
            sotw_method: _stream_handler(kind, type_url, delta=False),
            delta_method: _stream_handler(f"{kind}-delta", type_url, delta=True),
        }
        add(type(base.__name__, (_Servicer, base), methods)(engine), server)
    csds.add_to_server(
        engine.cache, engine.observers, server
    )  # what each client was sent, ACKed, NACKed
    if hds is not None:
        add_hds(hds, engine.admission, server)
    return server


async def start_server(
    engine: XdsEngine,
    address: str,
    tls: ReloadingCredentials | None = None,
    *,
    hds: HdsSessions | None = None,
) -> tuple[grpc.aio.Server, int]:
    """Start serving on `address` ("host:port"; port 0 picks one), over TLS when
    `tls` is given (with client certificates when it has a client CA), HDS too
    with `hds`. Returns the port."""
    _check_bindable(address)
    server = build_server(engine, hds)
    try:
        if tls is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, tls.server_credentials())
    except RuntimeError:  # newer grpcio raises where older ones returned 0
        port = 0
    if port == 0:
        raise ListenFailed(f"cannot listen on {address}")
    await server.start()
    how = "plaintext" if tls is None else "TLS" if tls.files.client_ca_file is None else "mTLS"
    log.info("xDS server listening on %s (%s)", address.rsplit(":", 1)[0] + f":{port}", how)
    return server, port


def _check_bindable(address: str) -> None:
    """Raise the OS's own error (e.g. "Address already in use") when `address` cannot
    be bound. gRPC would only log a line of its own and say that it failed.
    SO_REUSEADDR as gRPC sets it: a port with only closed connections is free."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]")
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, int(port)))

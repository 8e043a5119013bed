"""The xDS gRPC server: ADS and the per-type CDS/EDS/LDS/RDS services (SotW).

The server knows nonces, subscriptions and ACK/NACK, and nothing of where
resources come from: it serves whatever snapshot the cache holds. gRPC status
codes are chosen here and nowhere else.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import AsyncIterator, Callable

import grpc
from envoy.service.cluster.v3 import cds_pb2_grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.endpoint.v3 import eds_pb2_grpc
from envoy.service.listener.v3 import lds_pb2_grpc
from envoy.service.route.v3 import rds_pb2_grpc

from xds_server.cache import SnapshotCache
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE
from xds_server.xds.observe import Observers
from xds_server.xds.sotw import ProtocolError, SotwStream

log = logging.getLogger("xds_server.xds")

# Rule 30: Delta reconnect requests of large fleets exceed gRPC's 4 MiB default.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
SERVER_OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Envoy's xds_cluster sends HTTP/2 keepalive pings on idle streams; gRPC's
    # default anti-abuse rule answers them with GOAWAY "too_many_pings" and
    # Envoy reconnects. Accept them.
    ("grpc.http2.min_ping_interval_without_data_ms", 1_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.keepalive_permit_without_calls", 1),
]

Requests = AsyncIterator[discovery_pb2.DiscoveryRequest]
Responses = AsyncIterator[discovery_pb2.DiscoveryResponse]


class XdsEngine:
    """Creates streams and links the streams of one node to each other."""

    def __init__(
        self, cache: SnapshotCache, observers: Observers, *, legacy_wildcard: bool = True
    ) -> None:
        self.cache = cache
        self.observers = observers
        self.legacy_wildcard = legacy_wildcard
        self._streams_by_node: dict[str, set[SotwStream]] = defaultdict(set)
        self.open_streams: set[SotwStream] = set()

    async def serve(
        self, requests: Requests, context: grpc.aio.ServicerContext, kind: str, type_url: str | None
    ) -> Responses:
        stream = SotwStream(
            self.cache,
            self.observers,
            kind=kind,
            fixed_type=type_url,
            legacy_wildcard=self.legacy_wildcard,
            on_clusters_changed=self._clusters_changed,
        )
        self.open_streams.add(stream)
        try:
            async for response in stream.serve(self._tracked(stream, requests)):
                yield response
        except ProtocolError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        finally:
            self.open_streams.discard(stream)
            if stream.info is not None:
                peers = self._streams_by_node.get(stream.info.node_id)
                if peers is not None:
                    peers.discard(stream)
                    if not peers:
                        del self._streams_by_node[stream.info.node_id]

    async def _tracked(self, stream: SotwStream, requests: Requests) -> Requests:
        """Index the stream by node once its first request names the node."""
        async for request in requests:
            yield request
            if stream.info is not None:
                self._streams_by_node[stream.info.node_id].add(stream)

    def _clusters_changed(self, node_id: str, eds_names: set[str]) -> None:
        """Rule 23 across streams: the node's EDS, on whichever stream it rides."""
        for stream in self._streams_by_node.get(node_id, ()):
            stream.forget_endpoints(eds_names)


def _stream_handler(kind: str, type_url: str | None) -> Callable[..., Responses]:
    # grpc.aio recognises streaming handlers by their being async generators.
    async def handle(
        self: _Servicer, requests: Requests, context: grpc.aio.ServicerContext
    ) -> Responses:
        async for response in self.engine.serve(requests, context, kind, type_url):
            yield response

    return handle


class _Servicer:
    def __init__(self, engine: XdsEngine) -> None:
        self.engine = engine


# (servicer base class, its SotW method, stream kind, the type it serves)
_SERVICES = (
    (ads_pb2_grpc.AggregatedDiscoveryServiceServicer, "StreamAggregatedResources", "ads", None),
    (cds_pb2_grpc.ClusterDiscoveryServiceServicer, "StreamClusters", "cds", CLUSTER),
    (eds_pb2_grpc.EndpointDiscoveryServiceServicer, "StreamEndpoints", "eds", ENDPOINT),
    (lds_pb2_grpc.ListenerDiscoveryServiceServicer, "StreamListeners", "lds", LISTENER),
    (rds_pb2_grpc.RouteDiscoveryServiceServicer, "StreamRoutes", "rds", ROUTE),
)
_ADDERS = (
    ads_pb2_grpc.add_AggregatedDiscoveryServiceServicer_to_server,
    cds_pb2_grpc.add_ClusterDiscoveryServiceServicer_to_server,
    eds_pb2_grpc.add_EndpointDiscoveryServiceServicer_to_server,
    lds_pb2_grpc.add_ListenerDiscoveryServiceServicer_to_server,
    rds_pb2_grpc.add_RouteDiscoveryServiceServicer_to_server,
)


def build_server(engine: XdsEngine) -> grpc.aio.Server:
    """Every SotW service; the Delta methods keep the generated UNIMPLEMENTED."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    for (base, method, kind, type_url), add in zip(_SERVICES, _ADDERS, strict=True):
        servicer_class = type(
            base.__name__, (_Servicer, base), {method: _stream_handler(kind, type_url)}
        )
        add(servicer_class(engine), server)
    return server


async def start_server(engine: XdsEngine, address: str) -> tuple[grpc.aio.Server, int]:
    """Start serving on `address` ("host:port"; port 0 picks one). Returns the port."""
    server = build_server(engine)
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    log.info("xDS server listening on %s", address.rsplit(":", 1)[0] + f":{port}")
    return server, port

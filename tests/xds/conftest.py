"""A grpc.aio xDS client harness against a real server on port 0.

`xds` starts a SnapshotCache, a ProxyRegistry and the gRPC server, and stops
the server at teardown. `XdsClient` wraps one ADS or per-type SotW stream: the
requests come from an asyncio.Queue, the responses are read by a background
task into another queue, so `recv` and `expect_silence` are plain bounded waits
that never cancel the RPC itself. Every wait takes an explicit `timeout`
(hence the ASYNC109 exemptions): no test can hang.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.config.endpoint.v3 import endpoint_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.cluster.v3 import cds_pb2_grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.endpoint.v3 import eds_pb2_grpc
from envoy.service.listener.v3 import lds_pb2_grpc
from envoy.service.route.v3 import rds_pb2_grpc
from google.protobuf.message import Message
from google.rpc import status_pb2

from tests.factories import intent_of
from xds_server.cache import Snapshot, SnapshotCache, build_snapshot
from xds_server.model.certificates import EdgeCertificate
from xds_server.model.intent import Intent
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from xds_server.samples.grpc_sample import start_backend
from xds_server.translate import translate
from xds_server.xds.hds import HdsSessions
from xds_server.xds.identity import Admission
from xds_server.xds.observe import Observers, StreamInfo
from xds_server.xds.server import XdsEngine, start_server
from xds_server.xds.status import ProxyRegistry
from xds_server.xds.tls import ReloadingCredentials

_MESSAGES: dict[str, type[Message]] = {
    CLUSTER: cluster_pb2.Cluster,
    ENDPOINT: endpoint_pb2.ClusterLoadAssignment,
    LISTENER: listener_pb2.Listener,
    ROUTE: route_pb2.RouteConfiguration,
    SECRET: secret_pb2.Secret,
}
DeltaResponse = discovery_pb2.DeltaDiscoveryResponse
_END = object()  # ends the request iterator, i.e. half-closes the stream


# ---- responses -----------------------------------------------------------------


def _name_of(type_url: str, message: Message) -> str:
    return str(getattr(message, "cluster_name" if type_url == ENDPOINT else "name"))


def names_of(response: discovery_pb2.DiscoveryResponse) -> list[str]:
    """The resource names of a response, in order (duplicates kept)."""
    names = []
    for packed in response.resources:
        message = _MESSAGES[response.type_url]()
        assert packed.Unpack(message), packed.type_url
        names.append(_name_of(response.type_url, message))
    return names


def unpack(response: discovery_pb2.DiscoveryResponse) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for packed in response.resources:
        message = _MESSAGES[response.type_url]()
        assert packed.Unpack(message)
        out[_name_of(response.type_url, message)] = message
    return out


def eds_names_of(clusters: Iterable[cluster_pb2.Cluster]) -> set[str]:
    return {
        c.eds_cluster_config.service_name or c.name
        for c in clusters
        if c.type == cluster_pb2.Cluster.EDS
    }


def rds_names_of(listeners: Iterable[listener_pb2.Listener]) -> set[str]:
    names = set()
    for listener in listeners:
        for chain in listener.filter_chains:
            for network_filter in chain.filters:
                hcm = hcm_pb2.HttpConnectionManager()
                if network_filter.typed_config.Unpack(hcm) and hcm.HasField("rds"):
                    names.add(hcm.rds.route_config_name)
    return names


# ---- the client ------------------------------------------------------------------

_STUBS: dict[str, tuple[Callable[[grpc.aio.Channel], Any], str, str | None]] = {
    "ads": (ads_pb2_grpc.AggregatedDiscoveryServiceStub, "StreamAggregatedResources", None),
    "cds": (cds_pb2_grpc.ClusterDiscoveryServiceStub, "StreamClusters", CLUSTER),
    "eds": (eds_pb2_grpc.EndpointDiscoveryServiceStub, "StreamEndpoints", ENDPOINT),
    "lds": (lds_pb2_grpc.ListenerDiscoveryServiceStub, "StreamListeners", LISTENER),
    "rds": (rds_pb2_grpc.RouteDiscoveryServiceStub, "StreamRoutes", ROUTE),
}


class StreamEnded(AssertionError):
    """The server ended the stream while a response was expected."""

    def __init__(self, code: grpc.StatusCode | None, details: str | None) -> None:
        super().__init__(f"stream ended: {code} {details}")
        self.code = code
        self.details = details


class XdsClient:
    """One SotW stream, driven by hand like a (careful) Envoy would.

    It remembers, per type, the names it last asked for and the last version
    it ACKed, so `ack` and `nack` send what a real client sends.
    """

    def __init__(
        self,
        channel: grpc.aio.Channel,
        kind: str,
        node_id: str,
        metadata: dict[str, Any] | None = None,
    ) -> None:
        stub_class, method, fixed_type = _STUBS[kind]
        self.kind = kind
        self.node_id = node_id
        self.metadata = metadata  # the node's metadata (admin_address, ...)
        self.fixed_type = fixed_type
        self.received: list[discovery_pb2.DiscoveryResponse] = []  # in arrival order
        self.names: dict[str, tuple[str, ...]] = {}
        self.acked_version: dict[str, str] = {}
        self.replied: dict[str, set[str]] = {}  # nonces ACKed or NACKed, per type
        self._requests: asyncio.Queue[object] = asyncio.Queue()
        self._responses: asyncio.Queue[discovery_pb2.DiscoveryResponse | StreamEnded] = (
            asyncio.Queue()
        )
        self._sent_any = False
        self.call = getattr(stub_class(channel), method)(self._request_iterator())
        self._reader = asyncio.create_task(self._read())

    async def _request_iterator(self) -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        while True:
            request = await self._requests.get()
            if request is _END:
                return
            assert isinstance(request, discovery_pb2.DiscoveryRequest)
            yield request

    async def _read(self) -> None:
        try:
            async for response in self.call:
                self.received.append(response)
                self._responses.put_nowait(response)
        except grpc.aio.AioRpcError as error:
            self._responses.put_nowait(StreamEnded(error.code(), error.details()))
            return
        except asyncio.CancelledError:
            self._responses.put_nowait(StreamEnded(grpc.StatusCode.CANCELLED, "client"))
            raise
        self._responses.put_nowait(StreamEnded(None, "end of stream"))

    # ---- requests ----

    def send(
        self,
        type_url: str | None = None,
        names: Sequence[str] = (),
        nonce: str = "",
        version: str = "",
        error: str | None = None,
        node: bool | None = None,
    ) -> discovery_pb2.DiscoveryRequest:
        """Queue one request. `type_url` defaults to the stream's own type (or
        CDS on ADS); pass "" to send none. `node`: None sends it on the first
        request only (as Envoy does), True always, False never."""
        if type_url is None:
            type_url = self.fixed_type or CLUSTER
        request = discovery_pb2.DiscoveryRequest(
            type_url=type_url,
            resource_names=list(names),
            response_nonce=nonce,
            version_info=version,
        )
        if node or (node is None and not self._sent_any):
            request.node.CopyFrom(base_pb2.Node(id=self.node_id, cluster="test"))
            if self.metadata is not None:
                request.node.metadata.update(self.metadata)
        if error is not None:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        self._sent_any = True
        self.names[type_url] = tuple(names)
        self._requests.put_nowait(request)
        return request

    def send_raw(self, request: discovery_pb2.DiscoveryRequest) -> None:
        """Queue `request` exactly as given (a node of the test's own making)."""
        self._sent_any = True
        self._requests.put_nowait(request)

    def ack(
        self, response: discovery_pb2.DiscoveryResponse, names: Sequence[str] | None = None
    ) -> None:
        """ACK: the response's nonce and version, no error_detail
        (docs/xds-protocol.md rule 5)."""
        type_url = response.type_url
        self.acked_version[type_url] = response.version_info
        chosen = self.names.get(type_url, ()) if names is None else names
        self.send(type_url, chosen, nonce=response.nonce, version=response.version_info)
        self.replied.setdefault(type_url, set()).add(response.nonce)

    def nack(self, response: discovery_pb2.DiscoveryResponse, message: str) -> None:
        """NACK: the response's nonce, the last *good* version, error_detail
        (docs/xds-protocol.md rule 6)."""
        type_url = response.type_url
        self.send(
            type_url,
            self.names.get(type_url, ()),
            nonce=response.nonce,
            version=self.acked_version.get(type_url, ""),
            error=message,
        )
        self.replied.setdefault(type_url, set()).add(response.nonce)

    # ---- responses ----

    async def recv(self, timeout: float = 2.0) -> discovery_pb2.DiscoveryResponse:  # noqa: ASYNC109
        try:
            item = await asyncio.wait_for(self._responses.get(), timeout)
        except TimeoutError:
            raise AssertionError(f"no response within {timeout} s") from None
        if isinstance(item, StreamEnded):
            raise item
        return item

    async def recv_type(
        self,
        type_url: str,
        timeout: float = 2.0,  # noqa: ASYNC109
    ) -> discovery_pb2.DiscoveryResponse:
        response = await self.recv(timeout)
        assert response.type_url == type_url, (response.type_url, names_of(response))
        return response

    async def expect_silence(self, seconds: float) -> None:
        try:
            item = await asyncio.wait_for(self._responses.get(), seconds)
        except TimeoutError:
            return
        if isinstance(item, discovery_pb2.DiscoveryResponse):
            raise AssertionError(
                f"expected silence, got {item.type_url} {item.version_info} {names_of(item)}"
            )
        raise item

    async def drain(
        self, quiet: float = 0.5, limit: int = 10
    ) -> list[discovery_pb2.DiscoveryResponse]:
        """Every response until `quiet` seconds pass without one (at most `limit`)."""
        out: list[discovery_pb2.DiscoveryResponse] = []
        while len(out) < limit:
            try:
                item = await asyncio.wait_for(self._responses.get(), quiet)
            except TimeoutError:
                break
            if isinstance(item, StreamEnded):
                raise item
            out.append(item)
        return out

    async def ended(self, timeout: float = 2.0) -> StreamEnded:  # noqa: ASYNC109
        """Wait for the server to end the stream; returns how it ended."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                item = await asyncio.wait_for(self._responses.get(), max(remaining, 0.001))
            except TimeoutError:
                raise AssertionError(f"stream still open after {timeout} s") from None
            if isinstance(item, StreamEnded):
                return item

    # ---- Envoy-like start ----

    async def subscribe_all(self) -> dict[str, discovery_pb2.DiscoveryResponse]:
        """CDS wildcard, then EDS for the clusters, LDS wildcard, RDS for the
        listeners, each response ACKed: what Envoy does on ADS at start-up."""
        got = {}
        self.send(CLUSTER)
        got[CLUSTER] = await self.recv_type(CLUSTER)
        self.ack(got[CLUSTER])
        self.send(ENDPOINT, sorted(eds_names_of(unpack(got[CLUSTER]).values())))
        got[ENDPOINT] = await self.recv_type(ENDPOINT)
        self.ack(got[ENDPOINT])
        self.send(LISTENER)
        got[LISTENER] = await self.recv_type(LISTENER)
        self.ack(got[LISTENER])
        self.send(ROUTE, sorted(rds_names_of(unpack(got[LISTENER]).values())))
        got[ROUTE] = await self.recv_type(ROUTE)
        self.ack(got[ROUTE])
        return got

    def half_close(self) -> None:
        """End the request stream, as a client that is done would."""
        self._requests.put_nowait(_END)

    async def close(self) -> None:
        """Half-close, cancel, and wait for the reader: leaves nothing behind."""
        self._requests.put_nowait(_END)
        self.call.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


class DeltaClient:
    """One Delta stream (ADS or EDS) driven by hand."""

    def __init__(self, harness: Harness, node_id: str = "delta-1", kind: str = "ads") -> None:
        channel = harness.channel()
        if kind == "ads":
            call = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).DeltaAggregatedResources
        else:
            call = eds_pb2_grpc.EndpointDiscoveryServiceStub(channel).DeltaEndpoints
        self.node_id = node_id
        self._requests: asyncio.Queue[discovery_pb2.DeltaDiscoveryRequest | None] = asyncio.Queue()
        self._responses: asyncio.Queue[DeltaResponse | Exception] = asyncio.Queue()
        self._first = True
        self.call = call(self._iterate())
        self._reader = asyncio.create_task(self._read())

    async def _iterate(self) -> AsyncIterator[discovery_pb2.DeltaDiscoveryRequest]:
        while (request := await self._requests.get()) is not None:
            yield request

    async def _read(self) -> None:
        try:
            async for response in self.call:
                self._responses.put_nowait(response)
        except grpc.aio.AioRpcError as error:
            self._responses.put_nowait(error)
            return
        self._responses.put_nowait(StreamEnded(None, "end of stream"))

    def send(
        self,
        type_url: str,
        subscribe: Sequence[str] = (),
        unsubscribe: Sequence[str] = (),
        nonce: str = "",
        initial: Mapping[str, str] | None = None,
        error: str | None = None,
    ) -> None:
        request = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url,
            resource_names_subscribe=list(subscribe),
            resource_names_unsubscribe=list(unsubscribe),
            response_nonce=nonce,
            initial_resource_versions=dict(initial or {}),
        )
        if self._first:
            request.node.CopyFrom(base_pb2.Node(id=self.node_id))
            self._first = False
        if error is not None:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        self._requests.put_nowait(request)

    def ack(self, response: DeltaResponse) -> None:
        self.send(response.type_url, nonce=response.nonce)

    async def recv(self, timeout: float = 2.0) -> DeltaResponse:  # noqa: ASYNC109
        item = await asyncio.wait_for(self._responses.get(), timeout)
        if isinstance(item, Exception):
            raise item
        return item

    async def expect_silence(self, seconds: float) -> None:
        try:
            item = await asyncio.wait_for(self._responses.get(), seconds)
        except TimeoutError:
            return
        raise AssertionError(f"expected silence, got {item}")

    async def ended(self, timeout: float = 2.0) -> grpc.aio.AioRpcError:  # noqa: ASYNC109
        """Wait for the server to end the stream with an error status; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                item = await asyncio.wait_for(self._responses.get(), max(remaining, 0.001))
            except TimeoutError:
                raise AssertionError(f"stream still open after {timeout} s") from None
            if isinstance(item, StreamEnded):
                raise item
            if isinstance(item, grpc.aio.AioRpcError):
                return item

    async def close(self) -> None:
        self._requests.put_nowait(None)
        self.call.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


# ---- the server harness ------------------------------------------------------


@dataclass
class Recorder:
    """An XdsObserver that records every hook call, for tests that count events."""

    events: list[tuple[str, tuple[object, ...]]] = field(default_factory=list)

    def __getattr__(self, hook: str) -> Callable[..., None]:
        if hook.startswith("_"):
            raise AttributeError(hook)
        return lambda *args: self.events.append((hook, args))

    def count(self, hook: str) -> int:
        return sum(1 for name, _ in self.events if name == hook)

    def sent(self) -> list[tuple[str, str, list[str]]]:
        """(node, type_url, names) of every response_sent, in order."""
        out = []
        for name, args in self.events:
            if name == "response_sent":
                info, type_url, _version, names, _generation = args
                assert isinstance(info, StreamInfo)
                out.append((info.node_id, str(type_url), list(names)))  # type: ignore[call-overload]
        return out


class Harness:
    def __init__(
        self,
        *,
        legacy_wildcard: bool = True,
        admission: Admission | None = None,
        tls: ReloadingCredentials | None = None,
        hds: HdsSessions | None = None,
    ) -> None:
        self.tls = tls
        self.hds = hds
        self.cache = SnapshotCache()
        self.registry = ProxyRegistry()
        self.recorder = Recorder()
        self.engine = XdsEngine(
            self.cache,
            Observers([self.registry, self.recorder]),
            legacy_wildcard=legacy_wildcard,
            admission=admission,
        )
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self.generation = 0
        self.intent: Intent | None = None
        self._channels: list[grpc.aio.Channel] = []
        self._clients: list[XdsClient] = []

    async def start(self, port: int = 0) -> Harness:
        """On `port` (0: a free one), e.g. the port it had before a stop."""
        self.server, self.port = await start_server(
            self.engine, f"127.0.0.1:{port}", self.tls, hds=self.hds
        )
        return self

    async def stop(self) -> None:
        for client in self._clients:
            await client.close()
        for channel in self._channels:
            await channel.close()
        if self.server is not None:
            await self.server.stop(0)
            self.server = None

    def channel(self, credentials: grpc.ChannelCredentials | None = None) -> grpc.aio.Channel:
        """A channel to the server; `credentials` for a TLS server."""
        target = f"127.0.0.1:{self.port}"
        channel = (
            grpc.aio.insecure_channel(target)
            if credentials is None
            else grpc.aio.secure_channel(target, credentials)
        )
        self._channels.append(channel)
        return channel

    def client(
        self,
        kind: str = "ads",
        node_id: str = "node-1",
        channel: grpc.aio.Channel | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> XdsClient:
        client = XdsClient(channel or self.channel(), kind, node_id, metadata)
        self._clients.append(client)
        return client

    async def settled(self, client: XdsClient, timeout: float = 5.0) -> None:  # noqa: ASYNC109
        """Wait until the server has taken in every ACK and NACK `client` sent,
        so that a following publish cannot race them (they would be stale).
        Counts one reply per response: repeating an ACK is a new subscription,
        not a second ACK."""

        def done() -> bool:
            proxy = self.registry.proxies.get(client.node_id)
            if proxy is None:
                return False
            return all(
                proxy.type(t).acks + proxy.type(t).nacks >= len(nonces)
                for t, nonces in client.replied.items()
            )

        await poll(done, timeout)

    async def barrier(self, client: XdsClient, type_url: str) -> None:
        """Wait until the server has read every request `client` sent so far.

        A stream reads its requests in order, so once the server reports a
        deliberately stale request (docs/xds-protocol.md rule 8: ignored, changes
        nothing) every earlier one was applied. The type must have had a response
        already."""
        before = self.recorder.count("stale_nonce")
        client.send(type_url, client.names.get(type_url, ()), nonce="barrier")
        await poll(lambda: self.recorder.count("stale_nonce") > before)

    async def publish(self, intent: Intent, certificate: EdgeCertificate | None = None) -> Snapshot:
        """Translate, build and publish `intent` (with the listener's TLS
        `certificate`) as the next generation."""
        self.generation += 1
        snapshot = build_snapshot(translate(intent, certificate=certificate), self.generation)
        await self.cache.publish(snapshot)
        self.intent = intent
        return snapshot

    @property
    def snapshot(self) -> Snapshot:
        assert self.cache.snapshot is not None
        return self.cache.snapshot

    def version(self, type_url: str) -> str:
        current = self.snapshot.of(type_url)
        assert current is not None
        return current.version


async def poll(
    predicate: Callable[[], bool],
    timeout: float = 5.0,  # noqa: ASYNC109
    every: float = 0.01,
    describe: Callable[[], str] | None = None,
) -> None:
    """Wait until `predicate()` holds; fail after `timeout` seconds, saying
    `describe()` if given."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            detail = f": {describe()}" if describe is not None else ""
            raise AssertionError(f"condition not met within {timeout} s{detail}")
        await asyncio.sleep(every)


@pytest.fixture
async def xds() -> AsyncIterator[Harness]:
    """A started server holding the two-service intent at generation 1."""
    harness = await Harness().start()
    await harness.publish(intent_of(2))
    try:
        yield harness
    finally:
        await harness.stop()


@pytest.fixture
async def backends() -> AsyncIterator[dict[str, int]]:
    """Two sample gRPC backends on free loopback ports: name -> port."""
    started = {name: await start_backend(name) for name in ("greeter-a", "greeter-b")}
    try:
        yield {name: port for name, (_, port) in started.items()}
    finally:
        for server, _ in started.values():
            await server.stop(0)


@pytest.fixture
async def make_harness() -> AsyncIterator[Callable[..., Any]]:
    """Factory for servers with other options (or several servers,
    docs/xds-protocol.md rule 27)."""
    started: list[Harness] = []

    async def make(**options: Any) -> Harness:
        harness = await Harness(**options).start()
        started.append(harness)
        return harness

    try:
        yield make
    finally:
        for harness in started:
            await harness.stop()

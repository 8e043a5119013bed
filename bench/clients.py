"""Envoy-like xDS clients for the benchmarks, and a controller core to serve them.

Each client opens one ADS stream (SotW or Delta), subscribes like Envoy does
(CDS and LDS wildcard, EDS and RDS by name), ACKs every response at once and
notes when each arrived. The core is what the controller runs for xDS
(store, publisher, cache, engine, proxy registry), without the admin API,
health checker or Envoy.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from xds_server.cache import SnapshotCache
from xds_server.model.intent import Backend, Health, Intent, Service
from xds_server.pipeline.publisher import Publisher
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, ROUTE_CONFIG_NAME
from xds_server.store.memory import MemoryStore
from xds_server.xds.observe import Observers
from xds_server.xds.server import XdsEngine, start_server
from xds_server.xds.status import ProxyRegistry, ProxyStatus

# A channel per this many streams; its own TCP connection (gRPC would share one).
STREAMS_PER_CHANNEL = 100
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]


def large_intent(services: int, backends: int) -> Intent:
    """`services` services svc-0.. with `backends` backends each, on distinct ports."""
    return Intent(
        services=tuple(
            Service(
                name=f"svc-{i}",
                routes=(f"/svc-{i}/",),
                backends=tuple(
                    Backend(name=f"svc-{i}-b{j}", address=f"10.{i // 250}.{i % 250}.{j}", port=8080)
                    for j in range(backends)
                ),
            )
            for i in range(services)
        )
    )


def envoy_like(intent: Intent) -> dict[str, list[str]]:
    """What an Envoy holding the whole intent subscribes to ([] = wildcard)."""
    return {
        CLUSTER: [],
        ENDPOINT: [s.name for s in intent.services],
        LISTENER: [],
        ROUTE: [ROUTE_CONFIG_NAME],
    }


@dataclass
class Arrival:
    at: float  # time.perf_counter()
    type_url: str
    names: list[str]
    removed: list[str] = field(default_factory=list)


class BenchClient:
    """One ADS stream that subscribes, ACKs everything, and records arrivals."""

    def __init__(
        self,
        channel: grpc.aio.Channel,
        node_id: str,
        subscriptions: Mapping[str, Sequence[str]],
        *,
        delta: bool = False,
    ) -> None:
        self.node_id = node_id
        self.delta = delta
        self._subscriptions = subscriptions
        self.arrivals: asyncio.Queue[Arrival] = asyncio.Queue()
        self.responses = 0
        self._requests: asyncio.Queue[Any] = asyncio.Queue()
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        method = stub.DeltaAggregatedResources if delta else stub.StreamAggregatedResources
        self._call = method(self._iterate())
        for number, (type_url, names) in enumerate(subscriptions.items()):
            self._requests.put_nowait(self._request(type_url, names, "", number == 0))
        self._reader = asyncio.create_task(self._read())

    def _request(self, type_url: str, names: Sequence[str], nonce: str, first: bool) -> Any:
        if self.delta:
            request: Any = discovery_pb2.DeltaDiscoveryRequest(
                type_url=type_url, response_nonce=nonce
            )
            if not nonce:
                request.resource_names_subscribe.extend(names)
        else:
            request = discovery_pb2.DiscoveryRequest(
                type_url=type_url, resource_names=list(names), response_nonce=nonce
            )
        if first:
            request.node.CopyFrom(base_pb2.Node(id=self.node_id, cluster="bench"))
        return request

    async def _iterate(self) -> AsyncIterator[Any]:
        while (request := await self._requests.get()) is not None:
            yield request

    async def _read(self) -> None:
        try:
            async for response in self._call:
                self._received(response)
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass

    def _received(self, response: Any) -> None:
        at = time.perf_counter()
        self.responses += 1
        if self.delta:
            names = [r.name for r in response.resources]
            arrival = Arrival(at, response.type_url, names, list(response.removed_resources))
        else:
            arrival = Arrival(at, response.type_url, [_name(r) for r in response.resources])
        self.arrivals.put_nowait(arrival)
        subscribed = self._subscriptions.get(response.type_url, [])
        # SotW ACK: latest nonce, its version, the same names (docs/xds-protocol.md rule 5).
        ack = self._request(response.type_url, subscribed, response.nonce, first=False)
        if not self.delta:
            ack.version_info = response.version_info
        self._requests.put_nowait(ack)

    async def next(self, type_url: str, timeout: float = 10.0) -> Arrival:  # noqa: ASYNC109
        """The next arrival of `type_url` (earlier ones of other types are dropped)."""
        async with asyncio.timeout(timeout):
            while (arrival := await self.arrivals.get()).type_url != type_url:
                pass
        return arrival

    def forget_arrivals(self) -> None:
        while not self.arrivals.empty():
            self.arrivals.get_nowait()

    async def close(self) -> None:
        self._requests.put_nowait(None)
        self._call.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


def _name(packed: Any) -> str:
    """A resource's name without unpacking it: field 1 of all four types
    (Cluster.name, ClusterLoadAssignment.cluster_name, Listener.name,
    RouteConfiguration.name) is a length-delimited string at the start."""
    data: bytes = packed.value
    if not data or data[0] != 0x0A:
        return ""
    length, offset = _varint(data, 1)
    return data[offset : offset + length].decode()


def _varint(data: bytes, offset: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[offset]
        value |= (byte & 0x7F) << shift
        offset += 1
        if not byte & 0x80:
            return value, offset
        shift += 7


def channels_for(address: str, streams: int) -> list[grpc.aio.Channel]:
    count = max(1, -(-streams // STREAMS_PER_CHANNEL))
    return [grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) for _ in range(count)]


class Core:
    """The controller's xDS half on a loopback port: store, health verdicts,
    publisher, cache, engine and proxy registry."""

    def __init__(self, intent: Intent) -> None:
        self.health: dict[str, Health] = {b.name: Health.HEALTHY for b in intent.backends()}
        self.store = MemoryStore(intent)
        self.cache = SnapshotCache()
        self.registry = ProxyRegistry()
        self.engine = XdsEngine(self.cache, Observers([self.registry]))
        self.publisher = Publisher(self.store, self.cache, lambda: self.health)
        self.server: grpc.aio.Server | None = None
        self.address = ""

    async def start(self) -> Core:
        await self.publisher.publish_now()
        self.server, port = await start_server(self.engine, "127.0.0.1:0")
        self.address = f"127.0.0.1:{port}"
        return self

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop(0)

    def flip(self, backend: str) -> None:
        """Turn one backend's verdict over (healthy <-> unhealthy)."""
        current = self.health[backend]
        self.health[backend] = Health.UNHEALTHY if current is Health.HEALTHY else Health.HEALTHY

    async def wait_all_synced(self, count: int, timeout: float = 120.0) -> None:  # noqa: ASYNC109
        """Until `count` proxies are connected, each has ACKed a response of
        every type it was answered on, and all hold the current generation."""
        async with asyncio.timeout(timeout):
            while True:
                connected = self.registry.connected()
                if len(connected) >= count and all(_acked(p) for p in connected):
                    failures = await self.registry.wait_until_applied(self.cache.generation, 1.0)
                    if not failures:
                        return
                await asyncio.sleep(0.05)


def _acked(proxy: ProxyStatus) -> bool:
    return bool(proxy.types) and all(t.acks for t in proxy.types.values())

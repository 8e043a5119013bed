"""HDS for the tests: an xDS server with HDS whose sessions a recording owner
follows, a client stream speaking as Envoy does, and a small
HealthCheckSpecifier built by hand (the real one is the translator's)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.config.core.v3 import address_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2
from envoy.service.health.v3 import hds_pb2, hds_pb2_grpc

from tests.xds.conftest import Harness
from xds_server.model.intent import SocketAddress
from xds_server.xds.hds import HdsNode, HdsSessions, HealthReport
from xds_server.xds.identity import Admission
from xds_server.xds.tls import ReloadingCredentials


@dataclass
class RecordingOwner:
    """An HdsOwner that keeps every call, in order."""

    joined: list[HdsNode] = field(default_factory=list)
    left: list[HdsNode] = field(default_factory=list)
    reports: list[tuple[str, HealthReport]] = field(default_factory=list)

    def node_joined(self, node: HdsNode) -> None:
        self.joined.append(node)

    def node_left(self, node: HdsNode) -> None:
        self.left.append(node)

    def reported(self, node_id: str, report: HealthReport) -> None:
        self.reports.append((node_id, report))

    def latest(self, node_id: str) -> HealthReport | None:
        """The node's latest report, None before its first."""
        return next((r for n, r in reversed(self.reports) if n == node_id), None)

    def status(self, node_id: str, cluster: str, port: int) -> str | None:
        """What the node's latest report says of the endpoint on `port`."""
        for endpoint in (self.latest(node_id) or {}).get(cluster, []):
            if endpoint.port == port:
                return endpoint.status
        return None


def http_specifier(
    cluster: str,
    endpoints: Sequence[tuple[str, int]],
    *,
    path: str = "/health",
    interval_s: int = 1,
    report_interval_s: int = 1,
) -> hds_pb2.HealthCheckSpecifier:
    """One cluster of `endpoints` (host, port), probed with HTTP GET `path` every
    `interval_s` (also without traffic), one failure or success flipping it;
    reports every `report_interval_s`."""
    check = health_check_pb2.HealthCheck(
        http_health_check=health_check_pb2.HealthCheck.HttpHealthCheck(path=path),
    )
    check.timeout.FromSeconds(1)
    check.interval.FromSeconds(interval_s)
    check.no_traffic_interval.FromSeconds(interval_s)
    check.unhealthy_threshold.value = 1
    check.healthy_threshold.value = 1
    locality = hds_pb2.LocalityEndpoints(
        endpoints=[
            endpoint_components_pb2.Endpoint(
                address=address_pb2.Address(
                    socket_address=address_pb2.SocketAddress(address=host, port_value=port)
                )
            )
            for host, port in endpoints
        ]
    )
    specifier = hds_pb2.HealthCheckSpecifier(
        cluster_health_checks=[
            hds_pb2.ClusterHealthCheck(
                cluster_name=cluster, health_checks=[check], locality_endpoints=[locality]
            )
        ]
    )
    specifier.interval.FromSeconds(report_interval_s)
    return specifier


def report_of(
    cluster: str, endpoints: Sequence[tuple[str, int, int]]
) -> hds_pb2.HealthCheckRequestOrEndpointHealthResponse:
    """An EndpointHealthResponse as Envoy 1.40 sends it: (host, port, HealthStatus)
    per endpoint, by cluster and locality and in the legacy flat list too."""
    healths = [
        hds_pb2.EndpointHealth(
            endpoint=endpoint_components_pb2.Endpoint(
                address=address_pb2.Address(
                    socket_address=address_pb2.SocketAddress(address=host, port_value=port)
                )
            ),
            health_status=status,
        )
        for host, port, status in endpoints
    ]
    response = hds_pb2.EndpointHealthResponse(
        endpoints_health=healths,
        cluster_endpoints_health=[
            hds_pb2.ClusterEndpointsHealth(
                cluster_name=cluster,
                locality_endpoints_health=[
                    hds_pb2.LocalityEndpointsHealth(endpoints_health=healths)
                ],
            )
        ],
    )
    return hds_pb2.HealthCheckRequestOrEndpointHealthResponse(endpoint_health_response=response)


class HdsServer(Harness):
    """An xDS server with HDS and nothing published, on loopback; its sessions are
    owned by a RecordingOwner. With `tls` (and an admission asking for it), clients
    need certificates naming their node."""

    def __init__(
        self, admission: Admission | None = None, tls: ReloadingCredentials | None = None
    ) -> None:
        self.owner = RecordingOwner()
        self.sessions = HdsSessions(self.owner)
        super().__init__(admission=admission, tls=tls, hds=self.sessions)

    async def start(self, port: int = 0) -> HdsServer:
        await super().start(port)
        return self

    @property
    def address(self) -> SocketAddress:
        return SocketAddress("127.0.0.1", self.port)

    def reports_of(self, node_id: str) -> int:
        return sum(1 for node, _ in self.owner.reports if node == node_id)

    def stub(self, credentials: grpc.ChannelCredentials | None = None) -> Any:
        return hds_pb2_grpc.HealthDiscoveryServiceStub(self.channel(credentials))

    async def connect(self, node_id: str, stub: Any = None) -> HdsCall:
        """A StreamHealthCheck that sent its HealthCheckRequest, as Envoy's first message."""
        call = HdsCall((stub or self.stub()).StreamHealthCheck())
        await call.write(hello(node_id))
        return call


def hello(node_id: str) -> hds_pb2.HealthCheckRequestOrEndpointHealthResponse:
    request = hds_pb2.HealthCheckRequestOrEndpointHealthResponse()
    request.health_check_request.node.id = node_id
    request.health_check_request.capability.health_check_protocols.extend(
        [hds_pb2.Capability.HTTP, hds_pb2.Capability.TCP]
    )
    return request


class HdsCall:
    """One StreamHealthCheck, what the server sends read by a task of its own:
    a read with a timeout on the call itself would cancel the RPC."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.messages: asyncio.Queue[Any] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    def __getattr__(self, name: str) -> Any:  # write, done_writing, cancel, code, details
        return getattr(self.call, name)

    async def _read(self) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError, asyncio.CancelledError):
            while (message := await self.call.read()) is not grpc.aio.EOF:
                self.messages.put_nowait(message)


async def read(call: HdsCall, timeout_s: float = 5.0) -> Any:
    async with asyncio.timeout(timeout_s):
        return await call.messages.get()

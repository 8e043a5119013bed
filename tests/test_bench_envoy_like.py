"""bench/envoy_like.py: the Envoy-like health checker counts as Envoy does, reads
HealthCheck and HealthCheckSpecifier messages as Envoy does, reports as Envoy's HDS
delegate does; its HTTP probe and HDS stream work against real loopback servers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import address_pb2, base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2
from envoy.service.health.v3 import hds_pb2, hds_pb2_grpc
from envoy.type.v3 import range_pb2
from google.protobuf import duration_pb2, wrappers_pb2

from bench.envoy_like import (
    ActiveCheck,
    CheckConfig,
    HdsClient,
    HdsUnimplemented,
    HostHealth,
    HttpHealthProbe,
    Outcome,
    Transition,
    assignments,
    health_check_request,
    health_request,
    health_response,
    parse_status_line,
    report_interval,
)
from bench.real_envoys import health_by_port

CONFIG = CheckConfig(interval_s=1.0, healthy_threshold=2, unhealthy_threshold=3)


def ms(value: int) -> duration_pb2.Duration:
    return duration_pb2.Duration(seconds=value // 1000, nanos=value % 1000 * 1_000_000)


def http_check(interval_ms: int = 1000, **fields: object) -> health_check_pb2.HealthCheck:
    return health_check_pb2.HealthCheck(
        interval=ms(interval_ms),
        timeout=ms(250),
        healthy_threshold=wrappers_pb2.UInt32Value(value=2),
        unhealthy_threshold=wrappers_pb2.UInt32Value(value=3),
        http_health_check=health_check_pb2.HealthCheck.HttpHealthCheck(path="/health"),
        **fields,
    )


def endpoint(port: int) -> endpoint_components_pb2.Endpoint:
    return endpoint_components_pb2.Endpoint(
        address=address_pb2.Address(
            socket_address=address_pb2.SocketAddress(address="127.0.0.1", port_value=port)
        )
    )


def specifier(ports: dict[str, list[int]], interval_ms: int = 1000) -> hds_pb2.HealthCheckSpecifier:
    return hds_pb2.HealthCheckSpecifier(
        interval=ms(interval_ms),
        cluster_health_checks=[
            hds_pb2.ClusterHealthCheck(
                cluster_name=cluster,
                health_checks=[http_check(100)],
                locality_endpoints=[
                    hds_pb2.LocalityEndpoints(
                        locality=base_pb2.Locality(zone="z1"),
                        endpoints=[endpoint(p) for p in cluster_ports],
                    )
                ],
            )
            for cluster, cluster_ports in ports.items()
        ],
    )


# ---- counting (HealthCheckerImplBase::ActiveHealthCheckSession) -------------------------


def test_a_host_starts_unhealthy_and_its_first_pass_makes_it_healthy_at_once() -> None:
    """Envoy sets FAILED_ACTIVE_HC on a new host; the first check ever skips the threshold."""
    health = HostHealth(CONFIG)
    assert not health.healthy
    assert health.status() == health_check_pb2.UNHEALTHY
    assert health.record(Outcome.PASSED) is Transition.CHANGED
    assert health.healthy and health.status() == health_check_pb2.HEALTHY


def test_network_failures_count_to_the_unhealthy_threshold() -> None:
    health = HostHealth(CONFIG)
    health.record(Outcome.PASSED)
    assert health.record(Outcome.NETWORK) is Transition.PENDING
    assert health.record(Outcome.TIMEOUT) is Transition.PENDING
    assert health.healthy
    assert health.record(Outcome.NETWORK) is Transition.CHANGED
    assert not health.healthy
    assert health.record(Outcome.NETWORK) is Transition.UNCHANGED


def test_a_pass_between_network_failures_starts_the_count_again() -> None:
    health = HostHealth(CONFIG)
    health.record(Outcome.PASSED)
    for outcome in (Outcome.NETWORK, Outcome.NETWORK, Outcome.PASSED, Outcome.NETWORK):
        health.record(outcome)
    assert health.healthy
    assert health.record(Outcome.NETWORK) is Transition.PENDING
    assert health.record(Outcome.NETWORK) is Transition.CHANGED


def test_an_unexpected_status_makes_a_host_unhealthy_at_once() -> None:
    """Envoy's ACTIVE failure type ignores the threshold."""
    health = HostHealth(CONFIG)
    health.record(Outcome.PASSED)
    assert health.record(Outcome.ANSWERED_BAD) is Transition.CHANGED
    assert not health.healthy


def test_readmission_after_the_first_check_needs_the_healthy_threshold() -> None:
    health = HostHealth(CONFIG)
    health.record(Outcome.PASSED)
    health.record(Outcome.ANSWERED_BAD)
    assert health.record(Outcome.PASSED) is Transition.PENDING
    assert not health.healthy
    assert health.record(Outcome.PASSED) is Transition.CHANGED
    assert health.healthy


def test_a_failed_first_check_keeps_the_host_unhealthy_and_spends_the_first_check() -> None:
    health = HostHealth(CONFIG)
    assert health.record(Outcome.NETWORK) is Transition.UNCHANGED
    assert health.record(Outcome.PASSED) is Transition.PENDING
    assert health.record(Outcome.PASSED) is Transition.CHANGED


def test_a_host_whose_last_failure_timed_out_is_reported_timeout() -> None:
    health = HostHealth(CONFIG)
    health.record(Outcome.TIMEOUT)
    assert health.status() == health_check_pb2.TIMEOUT
    health.record(Outcome.NETWORK)
    assert health.status() == health_check_pb2.UNHEALTHY


def test_with_traffic_the_next_interval_follows_the_last_result_and_the_edges() -> None:
    """HealthCheckerImplBase::interval: a failed check -> unhealthy (edge while
    pending), a pass -> interval (healthy edge while pending); unset ones default
    as in Envoy (unhealthy edge -> unhealthy -> interval, healthy edge -> interval)."""
    plain = HostHealth(CONFIG)
    plain.record(Outcome.PASSED)
    plain.record(Outcome.NETWORK)
    assert plain.next_interval(Transition.PENDING, traffic=True) == 1.0
    defaults = HostHealth(CheckConfig(interval_s=1.0, unhealthy_interval_s=4.0))
    defaults.record(Outcome.NETWORK)
    assert defaults.next_interval(Transition.PENDING, traffic=True) == 4.0
    edges = CheckConfig(
        interval_s=1.0,
        unhealthy_interval_s=5.0,
        unhealthy_edge_interval_s=0.2,
        healthy_edge_interval_s=0.3,
    )
    health = HostHealth(edges)
    health.record(Outcome.PASSED)
    assert health.next_interval(Transition.UNCHANGED, traffic=True) == 1.0
    assert health.record(Outcome.NETWORK) is Transition.PENDING  # still healthy, failed
    assert health.next_interval(Transition.PENDING, traffic=True) == 0.2
    health.record(Outcome.ANSWERED_BAD)
    assert health.next_interval(Transition.CHANGED, traffic=True) == 5.0
    assert health.record(Outcome.PASSED) is Transition.PENDING  # still unhealthy, passed
    assert health.next_interval(Transition.PENDING, traffic=True) == 0.3


def test_without_traffic_as_on_hds_the_no_traffic_intervals_apply() -> None:
    """What the controller's specifier relies on (translate/hds.py): a settled pass
    waits no_traffic_healthy_interval, anything else no_traffic_interval."""
    config = CheckConfig(
        interval_s=1.0, no_traffic_interval_s=0.05, no_traffic_healthy_interval_s=1.0
    )
    health = HostHealth(config)
    health.record(Outcome.PASSED)
    assert health.next_interval(Transition.CHANGED, traffic=False) == 1.0
    assert health.record(Outcome.NETWORK) is Transition.PENDING
    assert health.next_interval(Transition.PENDING, traffic=False) == 0.05
    assert HostHealth(CheckConfig()).config.intervals()[4] == 60.0  # Envoy's default


# ---- reading Envoy's messages -----------------------------------------------------------


def test_check_config_reads_a_health_check_message() -> None:
    check = http_check(
        2000,
        unhealthy_interval=ms(3000),
        unhealthy_edge_interval=ms(500),
        no_traffic_interval=ms(100),
        no_traffic_healthy_interval=ms(2000),
    )
    check.http_health_check.expected_statuses.append(range_pb2.Int64Range(start=200, end=300))
    config = CheckConfig.from_proto(check)
    assert (config.path, config.interval_s, config.timeout_s) == ("/health", 2.0, 0.25)
    assert (config.healthy_threshold, config.unhealthy_threshold) == (2, 3)
    assert (config.unhealthy_interval_s, config.unhealthy_edge_interval_s) == (3.0, 0.5)
    assert config.healthy_edge_interval_s is None
    assert (config.no_traffic_interval_s, config.no_traffic_healthy_interval_s) == (0.1, 2.0)
    assert config.expects(204) and not config.expects(300)


def test_envoy_expects_200_only_unless_told_otherwise() -> None:
    config = CheckConfig.from_proto(http_check())
    assert config.expects(200)
    assert not config.expects(204)


def test_assignments_are_every_endpoint_of_every_cluster_with_an_http_check() -> None:
    given = specifier({"svc-0": [1001, 1002], "svc-1": [1003]})
    tcp_only = given.cluster_health_checks.add(cluster_name="tcp")
    tcp_only.health_checks.add(tcp_health_check=health_check_pb2.HealthCheck.TcpHealthCheck())
    tcp_only.locality_endpoints.add(endpoints=[endpoint(1004)])
    found = assignments(given)
    assert [(a.cluster, a.endpoint) for a in found] == [
        ("svc-0", ("127.0.0.1", 1001)),
        ("svc-0", ("127.0.0.1", 1002)),
        ("svc-1", ("127.0.0.1", 1003)),
    ]
    assert {a.config.interval_s for a in found} == {0.1}
    assert found[0].locality.zone == "z1"


def test_the_report_interval_is_the_specifiers_or_one_second() -> None:
    assert report_interval(specifier({}, 250)) == 0.25
    assert report_interval(hds_pb2.HealthCheckSpecifier()) == 1.0


def test_the_first_message_names_the_node_and_the_http_capability() -> None:
    request = health_check_request("envoy-7").health_check_request
    assert request.node.id == "envoy-7"
    assert list(request.capability.health_check_protocols) == [hds_pb2.Capability.HTTP]


def test_the_report_groups_by_cluster_and_locality_and_keeps_the_flat_list() -> None:
    def check(cluster: str, port: int, zone: str, passed: bool) -> ActiveCheck:
        one = ActiveCheck(
            "envoy-0",
            ("127.0.0.1", port),
            CONFIG,
            lambda *_: None,
            cluster=cluster,
            locality=base_pb2.Locality(zone=zone),
        )
        one.health.record(Outcome.PASSED if passed else Outcome.ANSWERED_BAD)
        return one

    checks = [check("a", 1, "z1", True), check("a", 2, "z2", False), check("b", 3, "z1", True)]
    report = health_response(checks).endpoint_health_response
    by_cluster = {c.cluster_name: c for c in report.cluster_endpoints_health}
    assert sorted(by_cluster) == ["a", "b"]
    zones = [
        (g.locality.zone, len(g.endpoints_health))
        for g in by_cluster["a"].locality_endpoints_health
    ]
    assert zones == [("z1", 1), ("z2", 1)]
    flat = [
        (e.endpoint.address.socket_address.port_value, e.health_status)
        for e in report.endpoints_health
    ]
    assert flat == [
        (1, health_check_pb2.HEALTHY),
        (2, health_check_pb2.UNHEALTHY),
        (3, health_check_pb2.HEALTHY),
    ]


def test_the_probe_request_and_status_line() -> None:
    assert health_request("/health", "svc-0").startswith(b"GET /health HTTP/1.1\r\nHost: svc-0\r\n")
    assert parse_status_line(b"HTTP/1.1 503 Service Unavailable\r\n") == 503
    with pytest.raises(ValueError, match="status line"):
        parse_status_line(b"SSH-2.0-OpenSSH\r\n")


# ---- against real loopback servers ------------------------------------------------------


@contextlib.asynccontextmanager
async def http_server(statuses: list[int], connections: list[int]) -> AsyncIterator[int]:
    """A tiny HTTP/1.1 server: answers each request with the next status (the last
    one repeats; 0 = never answer), counting connections; yields its port."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while await reader.readuntil(b"\r\n\r\n"):
                status = statuses.pop(0) if len(statuses) > 1 else statuses[0]
                if status == 0:
                    await asyncio.sleep(10)
                writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 2\r\n\r\nok".encode())
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()


async def test_the_probe_reuses_its_connection_and_tells_the_outcomes_apart() -> None:
    connections: list[int] = []
    config = CheckConfig(timeout_s=0.2)
    async with http_server([200, 200, 503, 0], connections) as port:
        probe = HttpHealthProbe("127.0.0.1", port, "bench")
        assert await probe.check(config) is Outcome.PASSED
        assert await probe.check(config) is Outcome.PASSED
        assert len(connections) == 1
        assert await probe.check(config) is Outcome.ANSWERED_BAD
        assert await probe.check(config) is Outcome.TIMEOUT
        probe.close()
    refused = HttpHealthProbe("127.0.0.1", port, "bench")
    assert await refused.check(config) is Outcome.NETWORK


class FakeHds(hds_pb2_grpc.HealthDiscoveryServiceServicer):  # type: ignore[misc]
    """An HDS server that sends one specifier and keeps every message it receives."""

    def __init__(self, given: hds_pb2.HealthCheckSpecifier) -> None:
        self.given = given
        self.received: asyncio.Queue[hds_pb2.HealthCheckRequestOrEndpointHealthResponse] = (
            asyncio.Queue()
        )

    async def StreamHealthCheck(  # the gRPC method's name
        self, requests: AsyncIterator[Any], context: object
    ) -> AsyncIterator[object]:
        async def drain() -> None:
            async for message in requests:
                self.received.put_nowait(message)

        reader = asyncio.create_task(drain())
        yield self.given
        await reader


@contextlib.asynccontextmanager
async def grpc_server(servicer: object | None) -> AsyncIterator[str]:
    server = grpc.aio.server()
    if servicer is not None:
        hds_pb2_grpc.add_HealthDiscoveryServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


async def test_the_hds_client_checks_what_it_is_given_and_reports_it() -> None:
    async with http_server([200], []) as up, http_server([503], []) as failing:
        hds = FakeHds(specifier({"svc-0": [up, failing]}, interval_ms=200))
        async with grpc_server(hds) as address, grpc.aio.insecure_channel(address) as channel:
            client = HdsClient(channel, "envoy-3", lambda *_: None)
            running = asyncio.create_task(client.run())
            first = await asyncio.wait_for(hds.received.get(), 5)
            assert first.health_check_request.node.id == "envoy-3"
            async with asyncio.timeout(5):
                while True:
                    report = (await hds.received.get()).endpoint_health_response
                    statuses = {
                        e.endpoint.address.socket_address.port_value: e.health_status
                        for e in report.endpoints_health
                    }
                    if statuses.get(up) == health_check_pb2.HEALTHY:
                        break
            assert statuses[failing] == health_check_pb2.UNHEALTHY
            assert report.cluster_endpoints_health[0].cluster_name == "svc-0"
            running.cancel()
            await asyncio.gather(running, return_exceptions=True)
            assert not client.checks  # stopping stops every check


async def test_the_hds_client_says_when_the_server_does_not_serve_hds() -> None:
    async with grpc_server(None) as address, grpc.aio.insecure_channel(address) as channel:
        client = HdsClient(channel, "envoy-0", lambda *_: None)
        with pytest.raises(HdsUnimplemented):
            await asyncio.wait_for(client.run(), 5)


def test_the_real_envoys_verdicts_are_read_from_admin_clusters() -> None:
    """bench/real_envoys.py, the model's calibration: a host is healthy when Envoy
    lists no health flag for it."""
    text = "\n".join(
        [
            "svc-0::observability_name::svc-0",
            "svc-0::127.0.0.1:8001::cx_active::1",
            "svc-0::127.0.0.1:8001::health_flags::healthy",
            "svc-0::127.0.0.1:8002::health_flags::/failed_active_hc",
            "svc-1::127.0.0.1:8003::health_flags::/failed_active_hc/active_hc_timeout",
        ]
    )
    assert health_by_port(text) == {8001: True, 8002: False, 8003: False}


async def test_a_new_specifier_keeps_unchanged_checks_and_stops_removed_ones() -> None:
    """As Envoy since it updates HDS clusters in place: a host assigned again with the
    same check keeps its counting; one no longer assigned is no longer probed."""
    async with http_server([200], []) as a, http_server([200], []) as b:
        channel = grpc.aio.insecure_channel("127.0.0.1:1")  # never dialled: apply only
        client = HdsClient(channel, "envoy-0", lambda *_: None)
        try:
            await client.apply(specifier({"svc-0": [a, b]}))
            kept = next(c for c in client.checks.values() if c.endpoint[1] == a)
            removed = next(c for c in client.checks.values() if c.endpoint[1] == b)
            await client.apply(specifier({"svc-0": [a]}))
            assert list(client.checks.values()) == [kept]
            assert removed.task is not None and removed.task.cancelled()
            await client.apply(specifier({"svc-1": [a]}))  # another cluster: another check
            assert [c.cluster for c in client.checks.values()] == ["svc-1"]
        finally:
            await client.stop()
            await channel.close()

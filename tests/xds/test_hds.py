"""The HDS servicer (xds/hds.py) over a real gRPC channel on loopback: nodes
join and leave, specifiers go out latest-wins and never twice the same,
reports come back parsed, and a node is admitted as an ADS node is."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from envoy.config.core.v3 import health_check_pb2
from envoy.service.health.v3 import hds_pb2, hds_pb2_grpc

from tests.hds_support import (
    HdsServer,
    hello,
    http_specifier,
    read,
    report_of,
)
from tests.tls_support import Pki
from tests.xds.conftest import poll
from xds_server.cache import SnapshotCache
from xds_server.xds import limits
from xds_server.xds.hds import EndpointHealth
from xds_server.xds.identity import Admission
from xds_server.xds.observe import Observers
from xds_server.xds.server import XdsEngine, start_server
from xds_server.xds.tls import ReloadingCredentials

HEALTHY = health_check_pb2.HEALTHY
UNHEALTHY = health_check_pb2.UNHEALTHY


@pytest.fixture
async def hds() -> AsyncIterator[HdsServer]:
    server = await HdsServer().start()
    try:
        yield server
    finally:
        await server.stop()


async def test_a_node_joins_gets_its_specifier_reports_and_leaves(hds: HdsServer) -> None:
    call = await hds.connect("envoy-1")
    await poll(lambda: "envoy-1" in hds.sessions.nodes())
    node = hds.sessions.nodes()["envoy-1"]
    assert hds.owner.joined == [node]
    assert node.protocols == {"HTTP", "TCP"} and node.peer_ip == "127.0.0.1"
    assert node.connected_at > 0

    specifier = http_specifier("backends", [("127.0.0.1", 8001)])
    assert hds.sessions.push("envoy-1", specifier)
    assert await read(call) == specifier

    await call.write(report_of("backends", [("127.0.0.1", 8001, HEALTHY)]))
    await poll(lambda: len(hds.owner.reports) == 1)
    assert hds.owner.reports == [
        ("envoy-1", {"backends": [EndpointHealth("127.0.0.1", 8001, "HEALTHY")]})
    ]
    assert hds.sessions.last_report_at("envoy-1") is not None

    await call.done_writing()
    await poll(lambda: hds.owner.left == [node])
    assert hds.sessions.nodes() == {}
    assert await call.code() == grpc.StatusCode.OK


async def test_a_cancelled_stream_is_a_node_leaving(hds: HdsServer) -> None:
    """An Envoy that dies does not half-close: its stream is cancelled."""
    call = await hds.connect("envoy-1")
    await poll(lambda: "envoy-1" in hds.sessions.nodes())
    call.cancel()
    await poll(lambda: len(hds.owner.left) == 1)
    assert hds.sessions.nodes() == {}
    assert not hds.sessions.push("envoy-1", http_specifier("backends", []))


async def test_an_identical_specifier_is_not_sent_again(hds: HdsServer) -> None:
    call = await hds.connect("envoy-1")
    await poll(lambda: "envoy-1" in hds.sessions.nodes())
    first = http_specifier("backends", [("127.0.0.1", 8001)])
    hds.sessions.push("envoy-1", first)
    assert await read(call) == first
    hds.sessions.push("envoy-1", http_specifier("backends", [("127.0.0.1", 8001)]))
    # The next message is the next different one: the repeat sent nothing.
    second = http_specifier("backends", [("127.0.0.1", 8002)])
    hds.sessions.push("envoy-1", second)
    assert await read(call) == second


async def test_the_latest_push_wins(hds: HdsServer) -> None:
    """Pushes faster than the stream is written: only the latest goes out, and a
    return to what was written already sends nothing."""
    call = await hds.connect("envoy-1")
    await poll(lambda: "envoy-1" in hds.sessions.nodes())
    specifiers = [http_specifier("backends", [("127.0.0.1", port)]) for port in range(8000, 8050)]
    for specifier in specifiers:  # no await in between: the writer runs after the last
        hds.sessions.push("envoy-1", specifier)
    assert await read(call) == specifiers[-1]
    hds.sessions.push("envoy-1", specifiers[0])
    hds.sessions.push("envoy-1", specifiers[-1])
    # The next message is the next different one: A, B, A sent nothing in between.
    third = http_specifier("other", [("127.0.0.1", 9000)])
    hds.sessions.push("envoy-1", third)
    assert await read(call) == third


async def test_an_empty_locality_is_not_sent(hds: HdsServer) -> None:
    """Envoy 1.40 crashes at its next report on a LocalityEndpoints without
    endpoints (docs/envoy-notes.md, "HDS"); the cluster goes without it."""
    call = await hds.connect("envoy-1")
    await poll(lambda: "envoy-1" in hds.sessions.nodes())
    specifier = http_specifier("backends", [])
    hds.sessions.push("envoy-1", specifier)
    sent = await read(call)
    assert sent.cluster_health_checks[0].cluster_name == "backends"
    assert list(sent.cluster_health_checks[0].locality_endpoints) == []
    assert len(specifier.cluster_health_checks[0].locality_endpoints) == 1  # the caller's


async def test_a_message_with_nothing_set_is_an_empty_report(hds: HdsServer) -> None:
    """What Envoy sends every interval while its specifier has no cluster."""
    call = await hds.connect("envoy-1")
    await call.write(hds_pb2.HealthCheckRequestOrEndpointHealthResponse())
    await poll(lambda: hds.owner.reports == [("envoy-1", {})])


async def test_a_push_to_a_node_without_a_stream_is_refused(hds: HdsServer) -> None:
    assert not hds.sessions.push("nobody", http_specifier("backends", []))


async def test_a_stream_that_starts_with_a_report_is_refused(hds: HdsServer) -> None:
    call = hds.stub().StreamHealthCheck()
    await call.write(report_of("backends", [("127.0.0.1", 8001, HEALTHY)]))
    assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "HealthCheckRequest" in await call.details()
    assert hds.owner.joined == []


async def test_a_node_without_an_id_is_refused(hds: HdsServer) -> None:
    call = await hds.connect("")
    assert await call.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert hds.owner.joined == []


async def test_a_newer_stream_of_the_node_replaces_the_older(hds: HdsServer) -> None:
    """docs/xds-protocol.md rule 33 for HDS: Envoy reconnects before the server
    noticed its old stream is dead. The node stays (no node_left), and is
    asked for its specifier again."""
    older = await hds.connect("envoy-1")
    await poll(lambda: len(hds.owner.joined) == 1)
    newer = await hds.connect("envoy-1")
    assert await older.code() == grpc.StatusCode.ABORTED
    assert len(hds.owner.joined) == 2 and hds.owner.left == []
    specifier = http_specifier("backends", [("127.0.0.1", 8001)])
    hds.sessions.push("envoy-1", specifier)
    assert await read(newer) == specifier
    assert list(hds.sessions.nodes()) == ["envoy-1"]


async def test_a_newer_stream_is_sent_the_specifier_its_older_one_had(hds: HdsServer) -> None:
    """What the older stream was sent says nothing of the newer: the same
    specifier goes out again (Envoy forgot its hash with the old stream)."""
    specifier = http_specifier("backends", [("127.0.0.1", 8001)])
    older = await hds.connect("envoy-1")
    await poll(lambda: "envoy-1" in hds.sessions.nodes())
    hds.sessions.push("envoy-1", specifier)
    assert await read(older) == specifier
    newer = await hds.connect("envoy-1")
    await poll(lambda: len(hds.owner.joined) == 2)
    hds.sessions.push("envoy-1", specifier)
    assert await read(newer) == specifier


async def test_reports_of_two_nodes_are_told_apart(hds: HdsServer) -> None:
    one, two = await hds.connect("envoy-1"), await hds.connect("envoy-2")
    await poll(lambda: len(hds.sessions.nodes()) == 2)
    await one.write(report_of("a", [("127.0.0.1", 8001, HEALTHY)]))
    await two.write(report_of("a", [("127.0.0.1", 8001, UNHEALTHY)]))
    await poll(lambda: len(hds.owner.reports) == 2)
    assert hds.owner.status("envoy-1", "a", 8001) == "HEALTHY"
    assert hds.owner.status("envoy-2", "a", 8001) == "UNHEALTHY"
    await one.done_writing()
    await poll(lambda: [n.node_id for n in hds.owner.left] == ["envoy-1"])
    assert list(hds.sessions.nodes()) == ["envoy-2"]


async def test_an_owner_that_fails_does_not_end_the_stream(
    hds: HdsServer, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(node_id: str, report: object) -> None:
        raise RuntimeError("owner bug")

    hds.owner.reported = broken  # type: ignore[method-assign]
    call = await hds.connect("envoy-1")
    await call.write(report_of("a", [("127.0.0.1", 8001, HEALTHY)]))
    await poll(lambda: "HDS owner failed in reported" in caplog.text)
    specifier = http_specifier("a", [("127.0.0.1", 8001)])
    hds.sessions.push("envoy-1", specifier)
    assert await read(call) == specifier


async def test_a_report_beyond_the_endpoint_cap_ends_the_stream(
    hds: HdsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("xds_server.xds.limits.MAX_NAMES", 3)
    call = await hds.connect("envoy-1")
    await call.write(report_of("a", [("127.0.0.1", port, HEALTHY) for port in range(4)]))
    assert await call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    await poll(lambda: len(hds.owner.left) == 1)
    assert hds.owner.reports == []


async def test_a_report_with_an_oversized_address_ends_the_stream(hds: HdsServer) -> None:
    call = await hds.connect("envoy-1")
    await call.write(report_of("a", [("h" * (limits.MAX_TEXT_CHARS + 1), 8001, HEALTHY)]))
    assert await call.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "reported endpoint address" in await call.details()


async def test_fetch_health_check_is_unimplemented(hds: HdsServer) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await hds.stub().FetchHealthCheck(hello("envoy-1"))
    assert error.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_without_hds_the_xds_port_does_not_serve_it() -> None:
    """start_server without sessions: HDS is UNIMPLEMENTED (the controller always
    passes its sessions, app.py; a server built without them serves no HDS)."""
    engine = XdsEngine(SnapshotCache(), Observers())
    server, port = await start_server(engine, "127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = hds_pb2_grpc.HealthDiscoveryServiceStub(channel).StreamHealthCheck()
            with contextlib.suppress(grpc.aio.AioRpcError):  # the call may be over already
                await call.write(hello("envoy-1"))
            assert await call.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        await server.stop(0)


def _credentials(pki: Pki, *names: str) -> grpc.ChannelCredentials:
    files = pki.client_files(*names)
    return grpc.ssl_channel_credentials(
        pki.ca_file.read_bytes(), files.key_file.read_bytes(), files.cert_file.read_bytes()
    )


async def test_mtls_a_node_its_certificate_does_not_name_is_refused(tmp_path: Path) -> None:
    """docs/xds-protocol.md rule 34 for HDS: the node id must be a name of the
    client's certificate, as for ADS."""
    pki = Pki(tmp_path)
    hds = await HdsServer(
        Admission(require_certificate=True), tls=ReloadingCredentials(pki.server_files())
    ).start()
    try:
        stranger = await hds.connect("envoy-1", hds.stub(_credentials(pki, "envoy-2")))
        assert await stranger.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "'envoy-1' is not a name of this client's certificate" in await stranger.details()
        assert hds.owner.joined == []

        owner = await hds.connect("envoy-1", hds.stub(_credentials(pki, "envoy-1")))
        await poll(lambda: "envoy-1" in hds.sessions.nodes())
        specifier = http_specifier("a", [("127.0.0.1", 8001)])
        hds.sessions.push("envoy-1", specifier)
        assert await read(owner) == specifier
    finally:
        await hds.stop()

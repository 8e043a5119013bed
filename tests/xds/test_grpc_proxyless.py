"""Proxyless gRPC: a grpcio client with an `xds:///` target,
bootstrapped at our server, calls two sample gRPC backends through the
configuration we serve, in a subprocess stopped by PID."""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import trustme
from envoy.admin.v3 import config_dump_shared_pb2 as dump_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc

from tests.tls_support import Pki, edge_certificate
from tests.xds.conftest import Harness, names_of, poll, unpack
from xds_server.cache import build_snapshot
from xds_server.model.intent import Backend, Intent, Protocol, Service, SocketAddress
from xds_server.proxy.processes import ChildProcess, start_process
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from xds_server.samples.grpc_sample import METHOD, bootstrap_config
from xds_server.translate import translate
from xds_server.xds.identity import Admission
from xds_server.xds.tls import ReloadingCredentials

CLIENT_NODE = "grpc-client-1"
MISSING_TARGET_CLIENT = Path(__file__).with_name("grpc_missing_target.py")


def greeter(ports: dict[str, int]) -> Intent:
    """One gRPC-only service (no Envoy routes) and one HTTP service beside it."""
    backends = tuple(Backend(name, "127.0.0.1", port) for name, port in sorted(ports.items()))
    return Intent(
        services=(
            Service("greeter", (), backends, protocol=Protocol.GRPC),
            Service("web", ("/web/",), (Backend("web-a", "127.0.0.1", 9),)),
        )
    )


async def start_client(
    xds: Harness,
    target: str,
    expect: str,
    calls: int,
    ready: str | None,
    tls_files: tuple[str, str, str] | None = None,
) -> ChildProcess:
    """The client in a subprocess, bootstrapped at `xds` by environment."""
    address = SocketAddress("127.0.0.1", xds.port)
    bootstrap = bootstrap_config(address, CLIENT_NODE, tls_files=tls_files)
    argv = [sys.executable, "-m", "xds_server.samples.grpc_sample", "call"]
    argv += ["--target", target, "--expect", expect, "--calls", str(calls)]
    env = {"GRPC_XDS_BOOTSTRAP_CONFIG": json.dumps(bootstrap)}
    return await start_process(argv, ready_line_prefix=ready, timeout_s=30.0, env=env)


async def run_client(
    xds: Harness,
    target: str,
    expect: str,
    calls: int,
    tls_files: tuple[str, str, str] | None = None,
) -> list[str]:
    """The client's one `ANSWERS` line, after it exited."""
    child = await start_client(xds, target, expect, calls, ready="ANSWERS", tls_files=tls_files)
    try:
        assert await child.wait(10.0) == 0, child.output_tail()
    finally:
        await child.stop()
    assert child.ready_line is not None
    return child.ready_line.split()[1:]


async def test_grpc_client_round_robins_across_two_backends(
    make_harness: Callable[..., Any], backends: dict[str, int]
) -> None:
    """Once both backends answered, ten calls alternate between them: round
    robin, the service's strategy, applied by the gRPC client itself."""
    xds: Harness = await make_harness()
    await xds.publish(greeter(backends))
    answers = await run_client(xds, "xds:///greeter", "greeter-a,greeter-b", calls=10)
    assert len(answers) == 10
    assert set(answers) == {"greeter-a", "greeter-b"}
    assert all(first != second for first, second in itertools.pairwise(answers))


async def test_grpc_client_asks_by_name_and_acks_everything(
    make_harness: Callable[..., Any], backends: dict[str, int]
) -> None:
    """docs/xds-protocol.md rule 18: the gRPC client never uses wildcard. Even
    with legacy wildcard on, its LDS request names the target and gets exactly
    that listener (not Envoy's `router`), then RDS, CDS and EDS by name; it
    ACKs all four."""
    xds: Harness = await make_harness()
    await xds.publish(greeter(backends))
    await run_client(xds, "xds:///greeter", "greeter-a,greeter-b", calls=2)
    sent = {type_url: names for node, type_url, names in xds.recorder.sent() if node == CLIENT_NODE}
    assert sent == {
        LISTENER: ["greeter"],
        ROUTE: ["greeter"],
        CLUSTER: ["greeter"],
        ENDPOINT: ["greeter"],
    }
    acked = [args[1] for hook, args in xds.recorder.events if hook == "acked"]
    assert sorted(acked) == sorted([LISTENER, ROUTE, CLUSTER, ENDPOINT])
    assert xds.recorder.count("nacked") == 0


async def test_grpc_client_gets_no_secret_with_tls_at_the_edge(
    make_harness: Callable[..., Any], backends: dict[str, int]
) -> None:
    """docs/xds-protocol.md rule 39: with the router listener's certificate in
    the snapshot (router.tls), a real proxyless gRPC client is sent its four
    resources and never a Secret."""
    xds: Harness = await make_harness()
    await xds.publish(greeter(backends), edge_certificate(trustme.CA()))
    assert SECRET in xds.snapshot.types
    await run_client(xds, "xds:///greeter", "greeter-a,greeter-b", calls=2)
    sent = {type_url for node, type_url, _ in xds.recorder.sent() if node == CLIENT_NODE}
    assert sent == {LISTENER, ROUTE, CLUSTER, ENDPOINT}


async def test_named_lds_request_gets_exactly_the_api_listener(xds: Harness) -> None:
    """docs/xds-protocol.md rule 18 with the harness client: an LDS request
    naming a gRPC service's listener is answered with that listener alone; its
    RDS name exists."""
    await xds.publish(greeter({"greeter-a": 50_051}))
    client = xds.client(node_id="grpc-like")
    client.send(LISTENER, ["greeter"])
    response = await client.recv_type(LISTENER)
    assert names_of(response) == ["greeter"]
    listener = unpack(response)["greeter"]
    assert listener.HasField("api_listener") and not listener.filter_chains
    client.send(ROUTE, ["greeter"])
    routes = await client.recv_type(ROUTE)
    [virtual_host] = unpack(routes)["greeter"].virtual_hosts
    assert list(virtual_host.domains) == ["greeter"]
    await poll(lambda: "grpc-like" in xds.registry.proxies)


@pytest.mark.parametrize("policy", ["MAGLEV", "LEAST_REQUEST", "RANDOM"])
async def test_grpc_client_nacks_what_validation_refuses(
    make_harness: Callable[..., Any], backends: dict[str, int], policy: str
) -> None:
    """Why validation refuses maglev, least_connections and random for gRPC
    services: published anyway (bypassing the translator), the real client
    NACKs the cluster, and CSDS reports it NACKED with the client's message."""
    xds: Harness = await make_harness()
    resources = {t: dict(messages) for t, messages in translate(greeter(backends)).items()}
    cluster = cluster_pb2.Cluster()
    cluster.CopyFrom(resources[CLUSTER]["greeter"])
    cluster.lb_policy = cluster_pb2.Cluster.LbPolicy.Value(policy)
    resources[CLUSTER]["greeter"] = cluster
    await xds.cache.publish(build_snapshot(resources, 1))
    child = await start_client(xds, "xds:///greeter", "", calls=1, ready=None)
    try:
        await poll(lambda: xds.recorder.count("nacked") == 1, timeout=20.0)
        stub = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(xds.channel())
        report = await stub.FetchClientStatus(csds_pb2.ClientStatusRequest())
    finally:
        await child.stop()
    [config] = report.config
    [row] = [c for c in config.generic_xds_configs if c.type_url == CLUSTER]
    assert (config.node.id, row.name, row.client_status) == (
        CLIENT_NODE,
        "greeter",
        dump_pb2.NACKED,
    )
    assert "LB policy is not supported" in row.error_state.details


async def test_sample_backend_command_answers_with_its_name() -> None:
    """`grpc_sample serve` prints its address once listening and answers the
    method with its name (raw bytes, no generated code); SIGTERM stops it."""
    argv = [sys.executable, "-m", "xds_server.samples.grpc_sample", "serve", "--name", "solo"]
    child = await start_process(argv, ready_line_prefix="READY", timeout_s=30.0)
    try:
        assert child.ready_line is not None
        address = child.ready_line.split()[2]
        async with grpc.aio.insecure_channel(address) as channel:
            answer = await channel.unary_unary(METHOD)(b"", timeout=5.0)
        assert answer == b"solo"
    finally:
        assert await child.stop() == 0


async def test_grpc_client_over_mutual_tls_is_named_by_its_certificate(
    make_harness: Callable[..., Any], backends: dict[str, int], tmp_path: Path
) -> None:
    """docs/xds-protocol.md rule 34 for proxyless clients: the bootstrap's `tls`
    channel creds (gRFC A65) reach a server that demands client certificates
    naming the node, and the calls go through; the same client with a
    certificate for another node gets no configuration."""
    pki = Pki(tmp_path)
    xds: Harness = await make_harness(
        tls=ReloadingCredentials(pki.server_files()),
        admission=Admission(require_certificate=True),
    )
    await xds.publish(greeter(backends))
    own = pki.client_files(CLIENT_NODE)
    tls_files = (str(own.cert_file), str(own.key_file), str(own.ca_file))
    answers = await run_client(xds, "xds:///greeter", "greeter-a,greeter-b", 4, tls_files)
    assert set(answers) == {"greeter-a", "greeter-b"}
    other = pki.client_files("grpc-client-2")
    refused = (str(other.cert_file), str(other.key_file), str(other.ca_file))
    child = await start_client(xds, "xds:///greeter", "greeter-a", 1, None, refused)
    try:
        assert await child.wait(20.0) == 1, child.output_tail()
    finally:
        await child.stop()
    assert CLIENT_NODE not in xds.registry.proxies


async def test_grpc_client_learns_at_once_that_a_listener_does_not_exist(xds: Harness) -> None:
    """docs/xds-protocol.md rule 38 with a real grpcio client: `xds:///does-not-exist`
    names a listener that is not served. The server answers the LDS request at
    once, the name NOT_FOUND in `resource_errors`, which grpcio 1.85 reads
    with GRPC_EXPERIMENTAL_XDS_DATA_ERROR_HANDLING (gRFC A88): the call fails
    well before the client's 15 s does-not-exist timer (0.02 to 0.05 s measured; 15.0
    s when the server sent nothing)."""
    address = SocketAddress("127.0.0.1", xds.port)
    env = {
        "GRPC_XDS_BOOTSTRAP_CONFIG": json.dumps(bootstrap_config(address, CLIENT_NODE)),
        "GRPC_EXPERIMENTAL_XDS_DATA_ERROR_HANDLING": "true",
    }
    argv = [sys.executable, str(MISSING_TARGET_CLIENT), "xds:///does-not-exist"]
    child = await start_process(argv, ready_line_prefix="FAILED", timeout_s=60.0, env=env)
    try:
        assert await child.wait(10.0) == 0, child.output_tail()
    finally:
        await child.stop()
    assert child.ready_line is not None
    _, seconds, code, *words = child.ready_line.split()
    details = " ".join(words)
    print(f"grpcio: xds:///does-not-exist failed after {float(seconds):.2f} s: {code} {details}")
    assert code == "UNAVAILABLE", child.ready_line
    assert "does-not-exist" in details, child.ready_line
    assert float(seconds) < 5.0, child.ready_line
    sent = [(t, names) for node, t, names in xds.recorder.sent() if node == CLIENT_NODE]
    assert sent[0] == (LISTENER, [])

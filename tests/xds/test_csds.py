"""CSDS (envoy.service.status.v3): per client and resource, what was sent,
ACKed or NACKed, read back over gRPC from the controller's own server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from envoy.admin.v3 import config_dump_shared_pb2 as dump_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from envoy.type.matcher.v3 import node_pb2, regex_pb2, string_pb2, struct_pb2

from tests.xds.conftest import Harness, names_of, poll
from xds_server.model.edits import update_backend, with_policies
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE

GenericXdsConfig = csds_pb2.ClientConfig.GenericXdsConfig


def csds(xds: Harness) -> csds_pb2_grpc.ClientStatusDiscoveryServiceStub:
    return csds_pb2_grpc.ClientStatusDiscoveryServiceStub(xds.channel())


async def fetch(xds: Harness, **request: object) -> list[csds_pb2.ClientConfig]:
    response = await csds(xds).FetchClientStatus(csds_pb2.ClientStatusRequest(**request))
    return list(response.config)


def rows(config: csds_pb2.ClientConfig, type_url: str) -> dict[str, GenericXdsConfig]:
    return {c.name: c for c in config.generic_xds_configs if c.type_url == type_url}


def node_id(matcher: string_pb2.StringMatcher) -> node_pb2.NodeMatcher:
    return node_pb2.NodeMatcher(node_id=matcher)


async def test_acking_client_shows_acked_at_the_version(xds: Harness) -> None:
    """A client that ACKed CDS, EDS, LDS and RDS shows every resource it was
    sent as ACKED / SYNCED at the version of the response that carried it,
    with the resource exactly as sent."""
    client = xds.client(node_id="envoy-a")
    got = await client.subscribe_all()
    await xds.settled(client)
    [config] = await fetch(xds)
    assert (config.node.id, config.node.cluster) == ("envoy-a", "test")
    for type_url in (CLUSTER, ENDPOINT, LISTENER, ROUTE):
        reported = rows(config, type_url)
        assert sorted(reported) == sorted(names_of(got[type_url])), type_url
        for row in reported.values():
            assert (row.client_status, row.config_status) == (dump_pb2.ACKED, csds_pb2.SYNCED)
            assert row.version_info == got[type_url].version_info
            assert not row.HasField("error_state")
    sent = {r.value for r in got[CLUSTER].resources}
    assert {r.xds_config.value for r in rows(config, CLUSTER).values()} == sent
    cluster = cluster_pb2.Cluster()
    assert rows(config, CLUSTER)["svc-0"].xds_config.Unpack(cluster)
    assert cluster.name == "svc-0"


async def test_nacking_client_shows_nacked_with_the_message(xds: Harness) -> None:
    """A NACKed change shows the changed resource NACKED / ERROR, with the
    client's message and the rejected version in error_state; a resource the
    rejected response carried unchanged keeps its ACKED copy
    (docs/xds-protocol.md rule 14 sends the full set)."""
    client = xds.client()
    client.send(CLUSTER)
    good = await client.recv_type(CLUSTER)
    client.ack(good)
    await xds.settled(client)
    assert xds.intent is not None
    await xds.publish(with_policies(xds.intent, max_connections=7))  # every cluster changes
    changed = await client.recv_type(CLUSTER)
    client.ack(changed)
    await xds.settled(client)
    await xds.publish(update_backend(xds.intent, "svc-0", "svc-0-b0", port=33_000))  # EDS only
    await xds.publish(with_policies(xds.intent, max_connections=8))
    bad = await client.recv_type(CLUSTER)
    client.nack(bad, "cluster svc-0: max_connections 8 refused")
    await xds.settled(client)
    [config] = await fetch(xds)
    reported = rows(config, CLUSTER)
    rejected = reported["svc-0"]
    assert (rejected.client_status, rejected.config_status) == (dump_pb2.NACKED, csds_pb2.ERROR)
    assert rejected.version_info == bad.version_info
    assert rejected.error_state.details == "cluster svc-0: max_connections 8 refused"
    assert rejected.error_state.version_info == bad.version_info
    assert rejected.error_state.failed_configuration == rejected.xds_config
    admin = reported["xds-server-admin"]  # unchanged since the first response
    assert (admin.client_status, admin.version_info) == (dump_pb2.ACKED, good.version_info)


async def test_unanswered_response_shows_requested(xds: Harness) -> None:
    """Sent and not yet answered: REQUESTED / STALE."""
    client = xds.client()
    client.send(ENDPOINT, ["svc-1"])
    sent = await client.recv_type(ENDPOINT)
    [config] = await fetch(xds)
    row = rows(config, ENDPOINT)["svc-1"]
    assert (row.client_status, row.config_status) == (dump_pb2.REQUESTED, csds_pb2.STALE)
    assert row.version_info == sent.version_info
    assert list(rows(config, CLUSTER)) == []


async def test_incremental_nack_leaves_other_resources_acked(xds: Harness) -> None:
    """SotW EDS sends only what changed (docs/xds-protocol.md rule 15): a NACK
    marks the changed resource only, and a later ACK of another resource does
    not clear it (the rejected version is never re-sent,
    docs/xds-protocol.md rule 7)."""
    client = xds.client()
    client.send(ENDPOINT, ["svc-0", "svc-1"])
    client.ack(await client.recv_type(ENDPOINT))
    await xds.settled(client)
    assert xds.intent is not None
    await xds.publish(update_backend(xds.intent, "svc-0", "svc-0-b0", port=34_000))
    client.nack(await client.recv_type(ENDPOINT), "svc-0 refused")
    await xds.settled(client)
    await xds.publish(update_backend(xds.intent, "svc-1", "svc-1-b0", port=34_001))
    client.ack(await client.recv_type(ENDPOINT))
    await xds.settled(client)
    [config] = await fetch(xds)
    reported = rows(config, ENDPOINT)
    assert reported["svc-0"].client_status == dump_pb2.NACKED
    assert reported["svc-0"].error_state.details == "svc-0 refused"
    assert reported["svc-1"].client_status == dump_pb2.ACKED


async def test_node_matchers_select_clients_by_node_id(xds: Harness) -> None:
    """No matcher: every connected client. Matchers are ORed; exact, prefix,
    suffix, contains, ignore_case and safe_regex on the node id are honoured."""
    for name in ("edge-1", "edge-2", "grpc-client"):
        client = xds.client(node_id=name)
        client.send(CLUSTER)
        await client.recv_type(CLUSTER)

    async def ids(*matchers: node_pb2.NodeMatcher) -> list[str]:
        return [c.node.id for c in await fetch(xds, node_matchers=list(matchers))]

    assert await ids() == ["edge-1", "edge-2", "grpc-client"]
    assert await ids(node_id(string_pb2.StringMatcher(exact="edge-2"))) == ["edge-2"]
    assert await ids(node_id(string_pb2.StringMatcher(prefix="edge-"))) == ["edge-1", "edge-2"]
    assert await ids(node_id(string_pb2.StringMatcher(suffix="client"))) == ["grpc-client"]
    assert await ids(node_id(string_pb2.StringMatcher(contains="ge-1"))) == ["edge-1"]
    upper = string_pb2.StringMatcher(exact="EDGE-1", ignore_case=True)
    assert await ids(node_id(upper)) == ["edge-1"]
    regex = string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex="edge-[2-9]"))
    assert await ids(node_id(regex)) == ["edge-2"]
    assert await ids(
        node_id(string_pb2.StringMatcher(exact="edge-1")),
        node_id(string_pb2.StringMatcher(prefix="grpc")),
    ) == ["edge-1", "grpc-client"]
    assert await ids(node_id(string_pb2.StringMatcher(exact="nobody"))) == []


async def test_node_id_regexes_are_re2_like_envoys(xds: Harness) -> None:
    """A safe_regex is RE2, as in Envoy: matched in linear time whatever the
    pattern, so a CSDS caller cannot stall the server with a backtracking
    one; a pattern RE2 refuses (a backreference) is INVALID_ARGUMENT. Python's
    `re`, used before, accepted it, and took exponential time on `(a+)+$`."""
    client = xds.client(node_id="a" * 40 + "b")
    client.send(CLUSTER)
    await client.recv_type(CLUSTER)
    backtracking = string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex="(a+)+$"))
    assert await fetch(xds, node_matchers=[node_id(backtracking)]) == []
    backreference = string_pb2.StringMatcher(safe_regex=regex_pb2.RegexMatcher(regex=r"(a)\1"))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await fetch(xds, node_matchers=[node_id(backreference)])
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "node_id regex" in (raised.value.details() or "")


async def test_metadata_matchers_are_refused(xds: Harness) -> None:
    """Node metadata is not known to the server: matching on it is refused
    (INVALID_ARGUMENT) rather than silently ignored."""
    matcher = node_pb2.NodeMatcher(node_metadatas=[struct_pb2.StructMatcher()])
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await fetch(xds, node_matchers=[matcher])
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "node_metadatas" in (raised.value.details() or "")


async def test_exclude_resource_contents(xds: Harness) -> None:
    """exclude_resource_contents: statuses and versions without the resources."""
    client = xds.client()
    client.send(CLUSTER)
    await client.recv_type(CLUSTER)
    [config] = await fetch(xds, exclude_resource_contents=True)
    assert config.generic_xds_configs
    assert not any(c.HasField("xds_config") for c in config.generic_xds_configs)


async def test_stream_client_status_answers_every_request(xds: Harness) -> None:
    """StreamClientStatus: one fresh report per request on the same stream."""
    requests: asyncio.Queue[csds_pb2.ClientStatusRequest | None] = asyncio.Queue()

    async def outgoing() -> AsyncIterator[csds_pb2.ClientStatusRequest]:
        while (request := await requests.get()) is not None:
            yield request

    call = csds(xds).StreamClientStatus(outgoing())
    try:
        requests.put_nowait(csds_pb2.ClientStatusRequest())
        first = await asyncio.wait_for(call.read(), 2)
        assert list(first.config) == []
        client = xds.client(node_id="late")
        client.send(CLUSTER)
        client.ack(await client.recv_type(CLUSTER))
        await xds.settled(client)
        requests.put_nowait(csds_pb2.ClientStatusRequest())
        second = await asyncio.wait_for(call.read(), 2)
        assert [c.node.id for c in second.config] == ["late"]
        assert {c.client_status for c in second.config[0].generic_xds_configs} == {dump_pb2.ACKED}
    finally:
        requests.put_nowait(None)
        call.cancel()


async def test_closed_stream_leaves_the_report(xds: Harness) -> None:
    """docs/xds-protocol.md rule 31 for CSDS: a client whose stream closed is
    no longer reported."""
    client = xds.client(node_id="gone")
    client.send(CLUSTER)
    await client.recv_type(CLUSTER)
    assert [c.node.id for c in await fetch(xds)] == ["gone"]
    await client.close()
    await poll(lambda: "gone" not in xds.registry.proxies)
    assert await fetch(xds) == []


async def test_delta_client_reports_resource_versions(xds: Harness) -> None:
    """On a Delta stream each resource's version_info is its own version, as
    the client tracks it; ACKs are reported the same way."""
    stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(xds.channel())
    requests: asyncio.Queue[discovery_pb2.DeltaDiscoveryRequest | None] = asyncio.Queue()

    async def outgoing() -> AsyncIterator[discovery_pb2.DeltaDiscoveryRequest]:
        while (request := await requests.get()) is not None:
            yield request

    call = stub.DeltaAggregatedResources(outgoing())
    try:
        requests.put_nowait(
            discovery_pb2.DeltaDiscoveryRequest(
                node=base_pb2.Node(id="delta-1"),
                type_url=ENDPOINT,
                resource_names_subscribe=["svc-0"],
            )
        )
        response = await asyncio.wait_for(call.read(), 2)
        [resource] = response.resources
        requests.put_nowait(
            discovery_pb2.DeltaDiscoveryRequest(type_url=ENDPOINT, response_nonce=response.nonce)
        )
        await poll(lambda: xds.registry.proxies["delta-1"].type(ENDPOINT).acks == 1)
        [config] = await fetch(xds)
        row = rows(config, ENDPOINT)["svc-0"]
        assert (row.client_status, row.version_info) == (dump_pb2.ACKED, resource.version)
        assert row.xds_config == resource.resource
    finally:
        requests.put_nowait(None)
        call.cancel()

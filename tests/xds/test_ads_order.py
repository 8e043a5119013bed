"""docs/xds-protocol.md rules 23 and 24: cluster warming and make-before-break
order on ADS."""

from __future__ import annotations

import dataclasses

from tests.factories import intent_of
from tests.xds.conftest import Harness, names_of, unpack
from xds_server.model.edits import with_policies, with_service, without_service
from xds_server.model.intent import Strategy
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE

ADMIN = "xds-server-admin"


async def test_changed_cluster_gets_its_endpoints_again(xds: Harness) -> None:
    """docs/xds-protocol.md rule 23: after a CDS change touching only svc-0
    (its LB policy), svc-0's unchanged EDS is sent again right after the CDS
    response on the same ADS stream, so the re-warming cluster does not wait
    15 s; svc-1's is not."""
    client = xds.client()
    before = await client.subscribe_all()
    await xds.settled(client)
    assert xds.intent is not None
    await xds.publish(with_service(xds.intent, "svc-0", strategy=Strategy.LEAST_CONNECTIONS))
    clusters = await client.recv_type(CLUSTER)
    assert names_of(clusters) == ["svc-0", "svc-1", ADMIN]
    endpoints = await client.recv_type(ENDPOINT)
    assert names_of(endpoints) == ["svc-0"]
    assert endpoints.version_info == before[ENDPOINT].version_info  # endpoints did not change
    assert unpack(endpoints)["svc-0"] == unpack(before[ENDPOINT])["svc-0"]
    client.ack(clusters)
    client.ack(endpoints)
    await client.expect_silence(0.5)


async def test_policy_change_rewarms_every_service_cluster(xds: Harness) -> None:
    """docs/xds-protocol.md rule 23: a circuit-breaker threshold change touches
    every service cluster; each one's EDS is re-sent, in one response after the
    CDS."""
    client = xds.client()
    await client.subscribe_all()
    await xds.settled(client)
    assert xds.intent is not None
    await xds.publish(with_policies(xds.intent, circuit_breaker_threshold=3))
    clusters = await client.recv_type(CLUSTER)
    assert unpack(clusters)["svc-1"].outlier_detection.consecutive_5xx.value == 3
    endpoints = await client.recv_type(ENDPOINT)
    assert names_of(endpoints) == ["svc-0", "svc-1"]
    client.ack(clusters)
    client.ack(endpoints)
    await client.expect_silence(0.5)


async def test_rewarming_reaches_the_nodes_eds_stream(xds: Harness) -> None:
    """docs/xds-protocol.md rule 23 across streams: a node with separate CDS
    and EDS streams gets the changed cluster's EDS again on its EDS stream, and
    only that one."""
    cds = xds.client("cds", node_id="split")
    eds = xds.client("eds", node_id="split")
    other = xds.client("eds", node_id="bystander")
    cds.send()
    cds.ack(await cds.recv_type(CLUSTER))
    for client in (eds, other):
        client.send(ENDPOINT, ["svc-0", "svc-1"])
        client.ack(await client.recv_type(ENDPOINT))
    for client in (cds, eds, other):
        await xds.settled(client)
    assert xds.intent is not None
    await xds.publish(with_service(xds.intent, "svc-1", strategy=Strategy.RING_HASH))
    cds.ack(await cds.recv_type(CLUSTER))
    again = await eds.recv_type(ENDPOINT)
    assert names_of(again) == ["svc-1"]
    await other.expect_silence(0.3)  # another node's clusters did not change


async def test_removal_is_make_before_break(xds: Harness) -> None:
    """docs/xds-protocol.md rule 24: removing svc-1 (cluster and route) sends,
    in order: CDS with the old and new clusters, then the routes without svc-1,
    and only then CDS without svc-1, so no route ever names a missing
    cluster."""
    client = xds.client()
    await client.subscribe_all()
    await xds.settled(client)
    assert xds.intent is not None
    await xds.publish(without_service(xds.intent, "svc-1"))
    order = []
    for _ in range(3):
        response = await client.recv()
        order.append((response.type_url, names_of(response)))
        if response.type_url == ROUTE:
            routes = unpack(response)["router"].virtual_hosts[0].routes
            assert "svc-1" not in {r.route.cluster for r in routes}
    assert order == [
        (CLUSTER, ["svc-0", "svc-1", ADMIN]),
        (ROUTE, ["router"]),
        (CLUSTER, ["svc-0", ADMIN]),
    ]
    await client.expect_silence(0.5)


async def test_removal_with_changes_keeps_ads_order_and_rewarms(xds: Harness) -> None:
    """docs/xds-protocol.md rules 24 and 23 together: removing svc-1 while
    svc-0's cluster changes and a listener changes sends CDS (old + new), EDS
    for the re-warming svc-0, LDS, RDS, then the final CDS; the last CDS
    triggers no second EDS."""
    client = xds.client()
    await client.subscribe_all()
    await xds.settled(client)
    assert xds.intent is not None
    changed = with_policies(without_service(xds.intent, "svc-1"), max_connections=5)
    await xds.publish(dataclasses.replace(changed, listen=changed.admin))
    order = []
    for _ in range(5):
        response = await client.recv()
        order.append((response.type_url, names_of(response)))
    assert order == [
        (CLUSTER, ["svc-0", "svc-1", ADMIN]),
        (ENDPOINT, ["svc-0"]),
        (LISTENER, ["router"]),
        (ROUTE, ["router"]),
        (CLUSTER, ["svc-0", ADMIN]),
    ]
    await client.expect_silence(0.5)


async def test_adding_a_service_sends_clusters_before_routes(xds: Harness) -> None:
    """docs/xds-protocol.md rule 24: adding svc-2 sends CDS before RDS; its EDS
    follows the client's request for it."""
    client = xds.client()
    await client.subscribe_all()
    await xds.settled(client)
    await xds.publish(intent_of(3))
    clusters = await client.recv_type(CLUSTER)
    assert names_of(clusters) == ["svc-0", "svc-1", "svc-2", ADMIN]
    client.ack(clusters)
    routes = await client.recv_type(ROUTE)
    assert "svc-2" in {r.route.cluster for r in unpack(routes)["router"].virtual_hosts[0].routes}
    client.ack(routes)
    last = [r for r in client.received if r.type_url == ENDPOINT][-1]
    client.send(ENDPOINT, ["svc-0", "svc-1", "svc-2"], nonce=last.nonce, version=last.version_info)
    endpoints = await client.recv_type(ENDPOINT)
    assert names_of(endpoints) == ["svc-2"]

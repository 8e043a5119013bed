"""Incremental (Delta) xDS: docs/xds-protocol.md rules 9 and 19-22, and the
rules shared with SotW (ACK/NACK, warming, make-before-break) in Delta form."""

from __future__ import annotations

from envoy.service.discovery.v3 import discovery_pb2

from tests.factories import intent_of, service_names
from tests.xds.conftest import DeltaClient, Harness, poll
from xds_server.model.edits import update_backend, with_policies, without_service
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE

Response = discovery_pb2.DeltaDiscoveryResponse


def names(response: Response) -> list[str]:
    return [r.name for r in response.resources]


async def test_wildcard_start_ack_and_silence(xds: Harness) -> None:
    """A wildcard CDS subscription gets every cluster with per-resource
    versions (content digests); after the ACK the stream is silent."""
    client = DeltaClient(xds)
    client.send(CLUSTER)
    response = await client.recv()
    current = xds.snapshot.of(CLUSTER)
    assert current is not None
    assert sorted(names(response)) == sorted(current.resources)
    assert {r.name: r.version for r in response.resources} == {
        n: r.digest for n, r in current.resources.items()
    }
    assert response.system_version_info == current.version
    client.ack(response)
    await client.expect_silence(0.5)
    await client.close()


async def test_reconnect_with_current_versions_gets_one_empty_response(xds: Harness) -> None:
    """docs/xds-protocol.md rule 22: initial_resource_versions are honoured
    (nothing re-sent), yet the first wildcard request is answered, empty, so Envoy
    can finish start-up."""
    current = xds.snapshot.of(CLUSTER)
    assert current is not None
    client = DeltaClient(xds)
    client.send(CLUSTER, initial={n: r.digest for n, r in current.resources.items()})
    response = await client.recv()
    assert list(response.resources) == [] and list(response.removed_resources) == []
    client.ack(response)
    await client.expect_silence(0.5)
    await client.close()


async def test_reconnect_with_an_old_version_gets_only_that_resource(xds: Harness) -> None:
    """docs/xds-protocol.md rule 22: only resources whose held version differs
    are sent."""
    current = xds.snapshot.of(CLUSTER)
    assert current is not None
    held = {n: r.digest for n, r in current.resources.items()}
    held["svc-1"] = "stale-version"
    client = DeltaClient(xds)
    client.send(CLUSTER, initial=held)
    assert names(await client.recv()) == ["svc-1"]
    await client.close()


async def test_missing_resource_is_reported_removed_once(xds: Harness) -> None:
    """docs/xds-protocol.md rule 19: subscribing a name that does not exist
    puts it in removed_resources, once; when it appears it is sent
    (docs/xds-protocol.md rule 12)."""
    client = DeltaClient(xds)
    client.send(ENDPOINT, subscribe=["svc-0", "svc-9"])
    response = await client.recv()
    assert names(response) == ["svc-0"] and list(response.removed_resources) == ["svc-9"]
    client.ack(response)
    await client.expect_silence(0.5)
    await xds.publish(intent_of(10))
    grown = await client.recv()
    assert names(grown) == ["svc-9"] and list(grown.removed_resources) == []
    await client.close()


async def test_deleted_resource_is_removed(xds: Harness) -> None:
    """docs/xds-protocol.md rule 19: a held resource that is deleted is named in
    removed_resources."""
    client = DeltaClient(xds, kind="eds")
    client.send(ENDPOINT, subscribe=["svc-0", "svc-1"])
    client.ack(await client.recv())
    await xds.publish(without_service(intent_of(2), "svc-1"))
    response = await client.recv()
    assert names(response) == [] and list(response.removed_resources) == ["svc-1"]
    await client.close()


async def test_subscription_change_with_stale_nonce_is_honoured(xds: Harness) -> None:
    """docs/xds-protocol.md rule 9: a subscription change counts even when its
    nonce is stale."""
    client = DeltaClient(xds)
    client.send(ENDPOINT, subscribe=["svc-0"])
    client.ack(await client.recv())
    client.send(ENDPOINT, subscribe=["svc-1"], nonce="an-old-nonce")
    assert names(await client.recv()) == ["svc-1"]
    await client.close()


async def test_resubscribing_a_held_resource_sends_it_again(xds: Harness) -> None:
    """docs/xds-protocol.md rule 20: the client may have dropped it; a
    re-subscription is answered."""
    client = DeltaClient(xds)
    client.send(ENDPOINT, subscribe=["svc-0"])
    client.ack(await client.recv())
    client.send(ENDPOINT, subscribe=["svc-0"])
    assert names(await client.recv()) == ["svc-0"]
    await client.close()


async def test_unsubscribing_a_name_under_wildcard_mentions_it_again(xds: Harness) -> None:
    """docs/xds-protocol.md rule 21: with {*, A}, unsubscribing A leaves it
    covered by the wildcard, so the server sends A again (the client may have
    dropped it)."""
    client = DeltaClient(xds)
    client.send(CLUSTER, subscribe=["*", "svc-0"])
    client.ack(await client.recv())
    client.send(CLUSTER, unsubscribe=["svc-0"])
    assert names(await client.recv()) == ["svc-0"]
    await client.close()


async def test_unsubscribed_name_is_no_longer_sent(xds: Harness) -> None:
    """Without wildcard, an unsubscribed name's changes are not sent."""
    client = DeltaClient(xds)
    client.send(ENDPOINT, subscribe=["svc-0", "svc-1"])
    client.ack(await client.recv())
    client.send(ENDPOINT, unsubscribe=["svc-1"])
    await client.expect_silence(0.3)
    await xds.publish(update_backend(intent_of(2), "svc-1", "svc-1-b0", port=29_999))
    await client.expect_silence(0.5)
    await client.close()


async def test_one_endpoint_change_sends_one_resource(xds: Harness) -> None:
    """Only the changed resource travels, at its new version."""
    client = DeltaClient(xds)
    client.send(ENDPOINT, subscribe=service_names(2))
    client.ack(await client.recv())
    await xds.publish(update_backend(intent_of(2), "svc-0", "svc-0-b1", port=29_998))
    response = await client.recv()
    assert names(response) == ["svc-0"]
    current = xds.snapshot.of(ENDPOINT)
    assert current is not None
    assert response.resources[0].version == current.resources["svc-0"].digest
    await client.close()


async def test_nack_is_recorded_and_not_resent(xds: Harness) -> None:
    """docs/xds-protocol.md rules 6 and 7 in Delta: the NACK is recorded with
    its message, and the rejected content is not sent again until the config
    changes."""
    client = DeltaClient(xds)
    client.send(ENDPOINT, subscribe=["svc-0"])
    response = await client.recv()
    client.send(ENDPOINT, nonce=response.nonce, error="bad endpoint")
    await poll(lambda: xds.registry.proxies["delta-1"].type(ENDPOINT).nacks == 1)
    nack = xds.registry.proxies["delta-1"].type(ENDPOINT).last_nack
    assert nack is not None and nack.message == "bad endpoint"
    await client.expect_silence(1.0)
    await xds.publish(update_backend(intent_of(2), "svc-0", "svc-0-b0", port=29_997))
    assert names(await client.recv()) == ["svc-0"]
    await client.close()


async def test_changed_cluster_gets_its_endpoints_again(xds: Harness) -> None:
    """docs/xds-protocol.md rule 23 in Delta: after a cluster changes, its
    unchanged EDS resource is re-sent right behind it (Envoy re-warms the
    cluster and waits for it)."""
    client = DeltaClient(xds)
    client.send(CLUSTER)
    client.ack(await client.recv())
    client.send(ENDPOINT, subscribe=service_names(2))
    client.ack(await client.recv())
    await xds.publish(with_policies(intent_of(2), circuit_breaker_threshold=3))
    clusters = await client.recv()
    assert clusters.type_url == CLUSTER
    endpoints = await client.recv()
    assert endpoints.type_url == ENDPOINT
    assert sorted(names(endpoints)) == service_names(2)
    await client.close()


async def test_removal_is_make_before_break(xds: Harness) -> None:
    """docs/xds-protocol.md rule 24 in Delta: routes stop using a service
    before its cluster and endpoints are removed; removals go out last,
    referrers first."""
    client = DeltaClient(xds)
    for type_url, subscribe in ((CLUSTER, ()), (LISTENER, ())):
        client.send(type_url, subscribe=subscribe)
        client.ack(await client.recv())
    client.send(ENDPOINT, subscribe=service_names(2))
    client.ack(await client.recv())
    client.send(ROUTE, subscribe=["router"])
    client.ack(await client.recv())
    await xds.publish(without_service(intent_of(2), "svc-1"))
    order = []
    for _ in range(3):
        response = await client.recv()
        order.append((response.type_url, names(response), list(response.removed_resources)))
    assert order == [
        (ROUTE, ["router"], []),
        (CLUSTER, [], ["svc-1"]),
        (ENDPOINT, [], ["svc-1"]),
    ]
    await client.close()

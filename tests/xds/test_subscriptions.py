"""docs/xds-protocol.md rules 11-13, 17, 18 and 26: what a subscription makes
the server send."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from tests.factories import intent_of
from tests.xds.conftest import Harness, names_of, unpack
from xds_server.model.edits import with_policies, with_service
from xds_server.model.intent import SocketAddress, Strategy
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER

ALL_CLUSTERS = ["svc-0", "svc-1", "xds-server-admin"]


async def test_growing_subscription_resends_known_resources(xds: Harness) -> None:
    """docs/xds-protocol.md rule 11: {A,B} -> {B} -> {A,B}: A is sent again
    although it did not change, because the client dropped it when it
    unsubscribed."""
    client = xds.client()
    client.send(ENDPOINT, ["svc-0", "svc-1"])
    both = await client.recv_type(ENDPOINT)
    assert names_of(both) == ["svc-0", "svc-1"]
    client.ack(both, names=["svc-1"])
    await client.expect_silence(0.5)
    client.ack(both, names=["svc-0", "svc-1"])
    again = await client.recv_type(ENDPOINT)
    assert names_of(again) == ["svc-0"]
    assert again.resources[0] == both.resources[0]
    assert again.version_info == both.version_info


async def test_names_that_do_not_exist_yet_are_pushed_when_they_appear(xds: Harness) -> None:
    """docs/xds-protocol.md rule 12: a subscription to a missing name is
    remembered; when the resource is published it is pushed without a new
    request."""
    client = xds.client()
    client.send(ENDPOINT, ["svc-2"])
    await client.expect_silence(0.5)
    await xds.publish(intent_of(3))
    response = await client.recv_type(ENDPOINT)
    assert names_of(response) == ["svc-2"]
    assert response.version_info == xds.version(ENDPOINT)


async def test_missing_name_at_current_version_gets_no_response(xds: Harness) -> None:
    """docs/xds-protocol.md rule 13: ACKing the current version while still
    naming a missing resource must not make the server re-send that version
    (the go-control-plane #1319 loop): nothing for 2 s."""
    client = xds.client()
    client.send(ENDPOINT, ["svc-0", "missing"])
    response = await client.recv_type(ENDPOINT)
    assert names_of(response) == ["svc-0"]
    client.ack(response)
    await client.expect_silence(2.0)
    assert len(client.received) == 1


async def test_missing_name_does_not_withhold_the_others(xds: Harness) -> None:
    """docs/xds-protocol.md rule 26: EDS {a, missing} is answered with a at
    once (within 1 s); the missing name does not hold back the response."""
    client = xds.client()
    client.send(ENDPOINT, ["missing", "svc-1"])
    response = await client.recv_type(ENDPOINT, timeout=1.0)
    assert names_of(response) == ["svc-1"]


async def test_empty_service_still_gets_its_load_assignment(xds: Harness) -> None:
    """docs/xds-protocol.md rule 26: a cluster without backends still has a
    (empty) CLA, so Envoy never waits 15 s for it."""
    assert xds.intent is not None
    await xds.publish(with_service(xds.intent, "svc-1", backends=()))
    client = xds.client()
    client.send(ENDPOINT, ["svc-0", "svc-1"])
    response = await client.recv_type(ENDPOINT, timeout=1.0)
    assert names_of(response) == ["svc-0", "svc-1"]
    assert len(unpack(response)["svc-1"].endpoints) == 0
    assert len(unpack(response)["svc-0"].endpoints[0].lb_endpoints) == 2


async def test_wildcard_four_step_sequence(xds: Harness) -> None:
    """docs/xds-protocol.md rule 17: the spec's sequence on CDS. [] is legacy wildcard;
    [*, A] stays wildcard; [A] narrows to A; [] then means nothing at all; [*] is
    wildcard again."""
    assert xds.intent is not None
    base = xds.intent
    client = xds.client()
    client.send(CLUSTER, [])
    step1 = await client.recv_type(CLUSTER)
    assert names_of(step1) == ALL_CLUSTERS

    client.ack(step1, names=["*", "svc-0"])
    await xds.settled(client)
    await xds.publish(with_service(base, "svc-1", strategy=Strategy.RANDOM))
    step2 = await client.recv_type(CLUSTER)
    assert names_of(step2) == ALL_CLUSTERS  # still wildcard

    client.ack(step2, names=["svc-0"])
    await xds.settled(client)
    await xds.publish(with_service(base, "svc-1", strategy=Strategy.MAGLEV))
    await client.expect_silence(0.5)  # svc-1 is no longer subscribed
    await xds.publish(with_service(base, "svc-0", strategy=Strategy.MAGLEV))
    step3 = await client.recv_type(CLUSTER)
    assert names_of(step3) == ["svc-0"]

    client.ack(step3, names=[])
    await xds.settled(client)
    await xds.publish(with_policies(base, max_retries=7))  # changes every cluster
    await xds.publish(intent_of(3))  # adds one
    await client.expect_silence(0.5)  # [] after naming something: subscribed to nothing

    client.ack(step3, names=["*"])
    step4 = await client.recv_type(CLUSTER)
    assert names_of(step4) == ["svc-0", "svc-1", "svc-2", "xds-server-admin"]


async def test_legacy_wildcard_ends_for_listeners_too(xds: Harness) -> None:
    """docs/xds-protocol.md rule 17: LDS [] is wildcard; after [router] then []
    the stream is subscribed to no listener, so a listener change is not
    pushed."""
    client = xds.client()
    client.send(LISTENER, [])
    first = await client.recv_type(LISTENER)
    assert names_of(first) == ["router"]
    client.ack(first, names=["router"])
    await client.expect_silence(0.3)
    client.ack(first, names=[])
    await xds.barrier(client, LISTENER)
    assert xds.intent is not None
    await xds.publish(dataclasses.replace(xds.intent, listen=SocketAddress("127.0.0.1", 8001)))
    await client.expect_silence(0.5)


async def test_empty_request_gets_nothing_without_legacy_wildcard(
    make_harness: Callable[..., Any],
) -> None:
    """docs/xds-protocol.md rule 18: with legacy wildcard off (proxyless gRPC
    clients), an empty CDS or LDS request subscribes to nothing; an explicit *
    gets everything."""
    xds: Harness = await make_harness(legacy_wildcard=False)
    await xds.publish(intent_of(2))
    client = xds.client()
    client.send(CLUSTER, [])
    client.send(LISTENER, [])
    await client.expect_silence(0.5)
    await xds.publish(intent_of(3))
    await client.expect_silence(0.3)
    client.send(CLUSTER, ["*"])
    response = await client.recv_type(CLUSTER)
    assert names_of(response) == ["svc-0", "svc-1", "svc-2", "xds-server-admin"]
    client.ack(response, names=["svc-1"])
    await xds.settled(client)
    await xds.publish(with_service(intent_of(3), "svc-2", strategy=Strategy.RANDOM))
    await client.expect_silence(0.3)
    await xds.publish(with_service(intent_of(3), "svc-1", strategy=Strategy.RANDOM))
    narrowed = await client.recv_type(CLUSTER)
    assert names_of(narrowed) == ["svc-1"]

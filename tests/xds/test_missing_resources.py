"""docs/xds-protocol.md rule 38: a subscription to a resource that does not
exist is answered at once. SotW CDS and LDS: a response without it (empty if
nothing asked for exists) that names it in `resource_errors` as NOT_FOUND;
SotW EDS and RDS: nothing of its own (docs/xds-protocol.md rules 13 and 26); Delta,
every type: the name in `removed_resources` (docs/xds-protocol.md rule 19)."""

from __future__ import annotations

import pytest
from envoy.service.discovery.v3 import discovery_pb2
from google.rpc import code_pb2

from tests.factories import intent_of
from tests.xds.conftest import DeltaClient, Harness, names_of
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE

FULL_STATE = [CLUSTER, LISTENER]
# What exists in the harness's two-service intent, per type.
PRESENT = {CLUSTER: "svc-0", ENDPOINT: "svc-0", LISTENER: "router"}


def not_found(response: discovery_pb2.DiscoveryResponse) -> list[str]:
    """The names a SotW response reports NOT_FOUND (every error must be one)."""
    errors = list(response.resource_errors)
    assert all(e.error_detail.code == code_pb2.NOT_FOUND for e in errors), errors
    return [e.resource_name.name for e in errors]


@pytest.mark.parametrize("type_url", FULL_STATE)
async def test_a_missing_name_alone_gets_an_empty_response_at_once(
    xds: Harness, type_url: str
) -> None:
    """docs/xds-protocol.md rule 38: SotW CDS or LDS naming only resources that
    do not exist is answered within 1 s: no resources, the type's version, a
    fresh nonce, the names NOT_FOUND. Its ACK gets silence, not the same
    answer again (docs/xds-protocol.md rule 13)."""
    client = xds.client()
    client.send(type_url, ["does-not-exist", "nor-this"])
    response = await client.recv_type(type_url, timeout=1.0)
    assert names_of(response) == []
    assert not_found(response) == ["does-not-exist", "nor-this"]
    assert response.version_info == xds.version(type_url)
    assert response.nonce
    client.ack(response)
    await client.expect_silence(1.0)


@pytest.mark.parametrize("type_url", FULL_STATE)
async def test_a_missing_name_beside_existing_ones_is_reported_with_them(
    xds: Harness, type_url: str
) -> None:
    """docs/xds-protocol.md rule 38 on a per-type stream: {present, missing}
    gets the present resource and the missing name NOT_FOUND in one response."""
    client = xds.client(kind="cds" if type_url == CLUSTER else "lds")
    client.send(type_url, [PRESENT[type_url], "does-not-exist"])
    response = await client.recv_type(type_url, timeout=1.0)
    assert names_of(response) == [PRESENT[type_url]]
    assert not_found(response) == ["does-not-exist"]


@pytest.mark.parametrize("type_url", FULL_STATE)
async def test_naming_a_missing_resource_later_is_answered_at_once(
    xds: Harness, type_url: str
) -> None:
    """docs/xds-protocol.md rule 38: a request that adds a missing name to a
    subscription the client is up to date on is answered at once, although
    nothing it holds changed: the complete set and the name NOT_FOUND. Dropped
    and named again, it is answered again; while it stays named, never twice."""
    present = PRESENT[type_url]
    client = xds.client()
    client.send(type_url, [present])
    first = await client.recv_type(type_url)
    client.ack(first)
    await client.expect_silence(0.3)
    client.ack(first, names=[present, "does-not-exist"])
    grown = await client.recv_type(type_url, timeout=1.0)
    assert names_of(grown) == [present]
    assert not_found(grown) == ["does-not-exist"]
    assert grown.version_info == first.version_info
    client.ack(grown)
    await client.expect_silence(0.5)
    client.ack(grown, names=[present])
    await client.expect_silence(0.5)
    client.ack(grown, names=[present, "does-not-exist"])
    again = await client.recv_type(type_url, timeout=1.0)
    assert names_of(again) == [present] and not_found(again) == ["does-not-exist"]


async def test_a_missing_name_is_pushed_when_it_appears(xds: Harness) -> None:
    """docs/xds-protocol.md rules 38 and 12: reported NOT_FOUND, the name stays
    subscribed; published later, it is pushed, with no error."""
    client = xds.client()
    client.send(CLUSTER, ["svc-2"])
    absent = await client.recv_type(CLUSTER, timeout=1.0)
    assert names_of(absent) == [] and not_found(absent) == ["svc-2"]
    client.ack(absent)
    await xds.settled(client)
    await xds.publish(intent_of(3))
    appeared = await client.recv_type(CLUSTER)
    assert names_of(appeared) == ["svc-2"] and not_found(appeared) == []


async def test_a_held_resource_that_is_deleted_is_left_out_without_an_error(
    xds: Harness,
) -> None:
    """docs/xds-protocol.md rules 14 and 38: a cluster the client holds and that
    is deleted is left out of the next response, which deletes it for every
    client; it is not reported NOT_FOUND, which is only for names a client
    never received."""
    await xds.publish(intent_of(3))
    client = xds.client()
    client.send(CLUSTER, ["svc-1", "svc-2"])
    held = await client.recv_type(CLUSTER)
    assert names_of(held) == ["svc-1", "svc-2"]
    client.ack(held)
    await xds.settled(client)
    await xds.publish(intent_of(2))
    deleted = await client.recv_type(CLUSTER)
    assert names_of(deleted) == ["svc-1"] and not_found(deleted) == []
    client.ack(deleted)
    await client.expect_silence(0.5)


@pytest.mark.parametrize("type_url", [ENDPOINT, ROUTE])
async def test_missing_eds_or_rds_names_get_no_response_of_their_own(
    xds: Harness, type_url: str
) -> None:
    """docs/xds-protocol.md rule 38: SotW EDS and RDS responses cannot tell a
    client that a name does not exist (the protocol's "Knowing When a Requested
    Resource Does Not Exist"), and our snapshots never refer to a missing one
    (docs/xds-protocol.md rule 25), so a request naming only missing ones is not answered."""
    client = xds.client()
    client.send(type_url, ["does-not-exist"])
    await client.expect_silence(1.0)


@pytest.mark.parametrize("type_url", [CLUSTER, ENDPOINT, LISTENER, ROUTE])
async def test_delta_reports_a_missing_name_removed_at_once(xds: Harness, type_url: str) -> None:
    """docs/xds-protocol.md rules 38 and 19, every type: a Delta subscription to
    a name that does not exist is answered within 1 s with the name in
    removed_resources; its ACK gets silence; subscribed again, it is reported
    again."""
    client = DeltaClient(xds)
    client.send(type_url, subscribe=["does-not-exist"])
    response = await client.recv(timeout=1.0)
    assert response.type_url == type_url
    assert list(response.resources) == []
    assert list(response.removed_resources) == ["does-not-exist"]
    assert response.nonce
    client.ack(response)
    await client.expect_silence(0.5)
    client.send(type_url, subscribe=["does-not-exist"])
    again = await client.recv(timeout=1.0)
    assert list(again.removed_resources) == ["does-not-exist"]
    await client.close()

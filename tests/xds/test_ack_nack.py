"""docs/xds-protocol.md rules 6-8 and 10: NACKs, no re-send of a rejected version, stale
nonces, superseding."""

from __future__ import annotations

import dataclasses

from tests.factories import service
from tests.xds.conftest import Harness, names_of, poll
from xds_server.model.edits import update_backend
from xds_server.resources import CLUSTER, ENDPOINT
from xds_server.xds.status import TypeStatus


def status(xds: Harness, type_url: str, node: str = "node-1") -> TypeStatus:
    return xds.registry.proxies[node].type(type_url)


async def test_nack_is_recorded_with_its_message(xds: Harness) -> None:
    """docs/xds-protocol.md rule 6: a request with error_detail is a NACK; its
    version_info is the last good version. The proxy status counts it, keeps the
    message and the rejected version, and keeps the ACKed version at the last good
    one."""
    client = xds.client()
    client.send(ENDPOINT, ["svc-0"])
    good = await client.recv_type(ENDPOINT)
    client.ack(good)
    await xds.settled(client)
    assert xds.intent is not None
    await xds.publish(update_backend(xds.intent, "svc-0", "svc-0-b0", port=33_000))
    bad = await client.recv_type(ENDPOINT)
    client.nack(bad, "endpoint rejected: port 33000")
    await poll(lambda: status(xds, ENDPOINT).nacks == 1)
    recorded = status(xds, ENDPOINT)
    assert recorded.last_nack is not None
    assert recorded.last_nack.message == "endpoint rejected: port 33000"
    assert recorded.last_nack.version == bad.version_info != good.version_info
    assert (recorded.acks, recorded.version_acked) == (1, good.version_info)
    assert [f.reason for f in xds.registry.failures(xds.generation)] == [
        "eds NACK: endpoint rejected: port 33000"
    ]


async def test_nack_is_detected_by_error_detail_not_by_version(xds: Harness) -> None:
    """docs/xds-protocol.md rule 6: a NACK quoting the very version it rejects
    (as some clients do) is still a NACK, because error_detail is present."""
    client = xds.client()
    client.send(CLUSTER)
    response = await client.recv_type(CLUSTER)
    client.send(
        CLUSTER, nonce=response.nonce, version=response.version_info, error="cluster invalid"
    )
    await poll(lambda: status(xds, CLUSTER).nacks == 1)
    recorded = status(xds, CLUSTER)
    assert (recorded.acks, recorded.version_acked) == (0, None)
    assert recorded.last_nack is not None and recorded.last_nack.message == "cluster invalid"


async def test_rejected_version_is_never_resent(xds: Harness) -> None:
    """docs/xds-protocol.md rule 7: after a NACK of v2 nothing is sent for 2 s
    (no NACK loop); the next config change v3 is sent, and the NACK counter
    stays at 1."""
    client = xds.client()
    client.send(ENDPOINT, ["svc-0", "svc-1"])
    v1 = await client.recv_type(ENDPOINT)
    client.ack(v1)
    await xds.settled(client)
    assert xds.intent is not None
    await xds.publish(update_backend(xds.intent, "svc-0", "svc-0-b0", port=34_000))
    v2 = await client.recv_type(ENDPOINT)
    client.nack(v2, "v2 is bad")
    await client.expect_silence(2.0)
    assert xds.intent is not None
    await xds.publish(update_backend(xds.intent, "svc-0", "svc-0-b0", port=34_001))
    v3 = await client.recv_type(ENDPOINT)
    assert v3.version_info == xds.version(ENDPOINT) not in (v1.version_info, v2.version_info)
    assert names_of(v3) == ["svc-0"]
    assert v3.resources[0] != v2.resources[0]
    client.ack(v3)
    await poll(lambda: status(xds, ENDPOINT).acks == 2)
    recorded = status(xds, ENDPOINT)
    assert recorded.nacks == 1
    assert recorded.last_nack is not None and recorded.last_nack.message == "v2 is bad"
    assert recorded.version_acked == v3.version_info
    assert recorded.responses == 3


async def test_stale_nonce_is_ignored(xds: Harness) -> None:
    """docs/xds-protocol.md rule 8: a request quoting a nonce that is not the
    latest sent for its type is ignored (no response, even though it names a new
    resource) and counted; the same subscription with the latest nonce is
    served."""
    client = xds.client()
    client.send(ENDPOINT, ["svc-0"])
    first = await client.recv_type(ENDPOINT)
    client.ack(first)
    await xds.settled(client)
    assert xds.intent is not None
    await xds.publish(update_backend(xds.intent, "svc-0", "svc-0-b0", port=35_000))
    latest = await client.recv_type(ENDPOINT)
    client.send(ENDPOINT, ["svc-0", "svc-1"], nonce=first.nonce, version=first.version_info)
    await client.expect_silence(0.5)
    assert xds.recorder.count("stale_nonce") == 1
    assert status(xds, ENDPOINT).stale_nonces == 1
    client.ack(latest, names=["svc-0", "svc-1"])
    response = await client.recv_type(ENDPOINT)
    assert names_of(response) == ["svc-1"]
    assert xds.recorder.count("stale_nonce") == 1


async def test_newer_request_supersedes_a_waiting_one(xds: Harness) -> None:
    """docs/xds-protocol.md rule 10: a request waiting for a resource that does
    not exist yet is superseded by the next request of its type: the answer
    follows the newer request, and the older one's resource is not sent when it
    appears."""
    client = xds.client()
    client.send(ENDPOINT, ["svc-5"])  # missing: nothing to answer yet
    await client.expect_silence(0.3)
    client.send(ENDPOINT, ["svc-1"])
    response = await client.recv_type(ENDPOINT)
    assert names_of(response) == ["svc-1"]
    client.ack(response)
    await xds.settled(client)
    assert xds.intent is not None
    await xds.publish(dataclasses.replace(xds.intent, services=(*xds.intent.services, service(5))))
    await client.expect_silence(0.5)


async def test_back_to_back_requests_end_with_the_latest(xds: Harness) -> None:
    """docs/xds-protocol.md rule 10: two EDS requests sent back to back. grpc
    hands the server one request at a time, so the first may be answered before
    the second is read; but the last response matches the second request,
    nothing for the first follows it, and nothing is answered twice."""
    client = xds.client()
    client.send(CLUSTER)
    client.ack(await client.recv_type(CLUSTER))
    client.send(ENDPOINT, ["svc-0"])
    client.send(ENDPOINT, ["svc-1"])
    responses = await client.drain(quiet=0.5)
    assert [(r.type_url, names_of(r)) for r in responses] in (
        [(ENDPOINT, ["svc-1"])],
        [(ENDPOINT, ["svc-0"]), (ENDPOINT, ["svc-1"])],
    )

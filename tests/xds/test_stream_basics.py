"""docs/xds-protocol.md rules 1-5: node, type_url, nonces, per-type versions,
ACK and silence."""

from __future__ import annotations

import grpc

from tests.xds.conftest import Harness, names_of, poll
from xds_server.model.edits import update_backend
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE


async def test_node_is_remembered_from_the_first_request(xds: Harness) -> None:
    """docs/xds-protocol.md rule 1: only the first request carries node; a
    later request without it is still served, and attributed to that node."""
    client = xds.client(node_id="edge-7")
    client.send(CLUSTER, node=True)
    clusters = await client.recv_type(CLUSTER)
    client.ack(clusters)
    client.send(ENDPOINT, ["svc-0", "svc-1"], node=False)
    endpoints = await client.recv_type(ENDPOINT)
    assert names_of(endpoints) == ["svc-0", "svc-1"]
    client.ack(endpoints)
    await poll(lambda: xds.registry.proxies["edge-7"].type(ENDPOINT).acks == 1)
    proxy = xds.registry.proxies["edge-7"]
    assert [p.node_id for p in xds.registry.connected()] == ["edge-7"]
    assert proxy.type(ENDPOINT).version_acked == xds.version(ENDPOINT)
    assert proxy.type(CLUSTER).version_acked == xds.version(CLUSTER)
    eds_sent_to = [node for node, type_url, _ in xds.recorder.sent() if type_url == ENDPOINT]
    assert eds_sent_to == ["edge-7"]


async def test_ads_request_without_type_url_is_invalid(xds: Harness) -> None:
    """docs/xds-protocol.md rule 2: on ADS every request names its type; an
    empty type_url ends the stream with INVALID_ARGUMENT."""
    client = xds.client("ads")
    client.send("")
    ended = await client.ended()
    assert ended.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "type_url" in (ended.details or "")


async def test_per_type_stream_may_leave_type_url_empty(xds: Harness) -> None:
    """docs/xds-protocol.md rule 2: a CDS stream may leave type_url empty and
    gets clusters."""
    client = xds.client("cds")
    client.send("")
    response = await client.recv()
    assert response.type_url == CLUSTER
    assert names_of(response) == ["svc-0", "svc-1", "xds-server-admin"]


async def test_per_type_stream_refuses_another_type(xds: Harness) -> None:
    """docs/xds-protocol.md rule 2: a per-type stream asked for another type ends with
    INVALID_ARGUMENT."""
    client = xds.client("cds")
    client.send(ENDPOINT, ["svc-0"])
    ended = await client.ended()
    assert ended.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_nonces_are_unique_within_and_across_streams(xds: Harness) -> None:
    """docs/xds-protocol.md rule 3: 1,000 responses on one stream carry 1,000
    distinct nonces, and a second stream never reuses one of them."""
    base = xds.intent
    assert base is not None
    changed = update_backend(base, "svc-0", "svc-0-b0", port=30_000)
    client = xds.client()
    client.send(ENDPOINT, ["svc-0"])
    nonces = []
    for i in range(1_000):
        response = await client.recv_type(ENDPOINT)
        assert names_of(response) == ["svc-0"]
        nonces.append(response.nonce)
        client.ack(response)
        await xds.publish(changed if i % 2 == 0 else base)
    other = xds.client(node_id="node-2")
    other.send(ENDPOINT, ["svc-0"])
    first_of_other = await other.recv_type(ENDPOINT)
    assert len(set(nonces)) == 1_000
    assert first_of_other.nonce not in nonces


async def test_old_nonce_after_reconnect_is_an_initial_request(xds: Harness) -> None:
    """docs/xds-protocol.md rule 3: nonces do not survive a stream. A
    reconnecting client quoting the old stream's nonce and version is answered
    as a fresh subscription."""
    first = xds.client()
    first.send(ENDPOINT, ["svc-0", "svc-1"])
    old = await first.recv_type(ENDPOINT)
    first.ack(old)
    await first.close()

    second = xds.client()
    second.send(ENDPOINT, ["svc-0", "svc-1"], nonce=old.nonce, version=old.version_info)
    again = await second.recv_type(ENDPOINT)
    assert names_of(again) == ["svc-0", "svc-1"]
    assert again.version_info == old.version_info
    assert again.nonce != old.nonce


async def test_versions_are_per_type(xds: Harness) -> None:
    """docs/xds-protocol.md rule 4: changing only endpoints changes the EDS
    version and leaves the CDS, LDS and RDS versions alone; only EDS is
    sent."""
    client = xds.client()
    got = await client.subscribe_all()
    before = xds.snapshot.versions()
    assert xds.intent is not None
    await xds.publish(update_backend(xds.intent, "svc-1", "svc-1-b0", port=31_000))
    after = xds.snapshot.versions()
    response = await client.recv_type(ENDPOINT)
    assert names_of(response) == ["svc-1"]
    assert response.version_info == after[ENDPOINT] != before[ENDPOINT]
    assert {t: after[t] for t in (CLUSTER, LISTENER, ROUTE)} == {
        t: before[t] for t in (CLUSTER, LISTENER, ROUTE)
    }
    assert {t: got[t].version_info for t in (CLUSTER, LISTENER, ROUTE)} == {
        t: after[t] for t in (CLUSTER, LISTENER, ROUTE)
    }
    client.ack(response)
    await client.expect_silence(0.5)


async def test_after_ack_silence_and_one_change_gives_one_response(xds: Harness) -> None:
    """docs/xds-protocol.md rule 5: after every type is ACKed nothing is sent;
    republishing equal content sends nothing; one endpoint change gives exactly
    one response."""
    client = xds.client()
    await client.subscribe_all()
    await client.expect_silence(0.5)
    assert xds.intent is not None
    await xds.publish(xds.intent)  # a new generation with equal content
    await client.expect_silence(0.5)
    await xds.publish(update_backend(xds.intent, "svc-0", "svc-0-b1", port=32_000))
    response = await client.recv_type(ENDPOINT)
    assert names_of(response) == ["svc-0"]
    client.ack(response)
    await client.expect_silence(0.5)
    await poll(lambda: xds.registry.proxies["node-1"].type(ENDPOINT).acks == 2)
    assert len(client.received) == 5

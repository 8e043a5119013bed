"""What a stream's node may claim: its Envoy admin address, and its node id
(docs/xds-protocol.md rules 33 and 34)."""

from __future__ import annotations

import ipaddress

import grpc
import pytest

from tests.factories import intent_of
from tests.xds.conftest import Harness, poll
from xds_server.model.edits import set_strategy
from xds_server.model.intent import Strategy
from xds_server.resources import CLUSTER, ENDPOINT
from xds_server.xds.identity import Admission

# ---- docs/xds-protocol.md rule 34: the admin address -----------------------------


@pytest.mark.parametrize(
    "claimed",
    [
        "127.0.0.1:1/x?y=",  # a path after the port
        "127.0.0.1:9901/clusters#",
        "user@127.0.0.1:9901",
        "localhost:9901",  # a name the controller would resolve
        "127.0.0.1",
        "http://127.0.0.1:9901",
    ],
)
async def test_an_admin_address_that_is_not_plain_ip_port_is_refused(
    xds: Harness, claimed: str
) -> None:
    """The proxy is served, but no admin address is believed, and why is kept."""
    client = xds.client(metadata={"admin_address": claimed})
    await client.subscribe_all()
    proxy = xds.registry.proxies["node-1"]
    assert proxy.envoy_admin is None
    assert proxy.envoy_admin_problem is not None and "refused" in proxy.envoy_admin_problem


async def test_an_admin_address_on_another_ip_is_refused_unless_allowlisted(
    make_harness: object,
) -> None:
    """Our stream comes from 127.0.0.1: an admin on 10.1.2.3 is not its own."""
    plain: Harness = await make_harness()  # type: ignore[operator]
    await plain.publish(intent_of(1))
    await plain.client(metadata={"admin_address": "10.1.2.3:9901"}).subscribe_all()
    refused = plain.registry.proxies["node-1"]
    assert refused.envoy_admin is None
    assert "router.envoy_admin_allowlist" in (refused.envoy_admin_problem or "")

    allowlist = [ipaddress.ip_network("10.1.0.0/16")]
    listed: Harness = await make_harness(admission=Admission(admin_allowlist=allowlist))  # type: ignore[operator]
    await listed.publish(intent_of(1))
    await listed.client(metadata={"admin_address": "10.1.2.3:9901"}).subscribe_all()
    assert listed.registry.proxies["node-1"].envoy_admin == "10.1.2.3:9901"


async def test_an_admin_address_on_the_streams_own_ip_is_believed(xds: Harness) -> None:
    await xds.client(metadata={"admin_address": "127.0.0.1:9901"}).subscribe_all()
    proxy = xds.registry.proxies["node-1"]
    assert (proxy.envoy_admin, proxy.envoy_admin_problem) == ("127.0.0.1:9901", None)


async def test_an_admin_address_that_is_not_a_string_is_refused(xds: Harness) -> None:
    await xds.client(metadata={"admin_address": 9901}).subscribe_all()
    assert xds.registry.proxies["node-1"].envoy_admin is None


# ---- docs/xds-protocol.md rule 33: one stream per node and type ----------------------


async def test_a_newer_stream_of_the_node_ends_the_older_one(xds: Harness) -> None:
    """The older stream ends ABORTED, saying why; the node counts one stream."""
    older = xds.client(node_id="twin")
    await older.subscribe_all()
    newer = xds.client(node_id="twin")
    await newer.subscribe_all()
    ended = await older.ended()
    assert ended.code == grpc.StatusCode.ABORTED
    assert ended.details is not None and "newer stream" in ended.details
    await poll(lambda: xds.registry.proxies["twin"].streams == {_stream_of(xds, newer)})


async def test_applied_is_not_claimed_when_the_node_on_the_stream_does_not_ack(
    xds: Harness,
) -> None:
    """An ACKing client, then a second stream with its node id that never ACKs:
    the change must not be reported applied for that node. Before docs/xds-protocol.md rule 33 both
    streams fed one status, and the first client's ACK answered for the second."""
    acking = xds.client(node_id="twin")
    await acking.subscribe_all()
    silent = xds.client(node_id="twin")
    silent.send(CLUSTER)
    await silent.recv_type(CLUSTER)  # and never ACKed
    assert xds.intent is not None
    snapshot = await xds.publish(set_strategy(xds.intent, Strategy.RANDOM, "svc-0"))
    # The first client ACKs whatever it still receives, as a healthy Envoy would.
    try:
        while True:
            acking.ack(await acking.recv(timeout=1.0))
    except AssertionError:
        pass  # its stream was ended, or it has nothing more
    failures = await xds.registry.wait_until_applied(snapshot.generation, timeout_s=1.0)
    assert [f.node_id for f in failures] == ["twin"]


async def test_the_older_stream_of_a_node_cannot_answer_for_the_newer(xds: Harness) -> None:
    """Non-ACKing first, ACKing second: the ACKing one is the node's stream now,
    and its ACK is a true one."""
    silent = xds.client(node_id="twin")
    silent.send(CLUSTER)
    await silent.recv_type(CLUSTER)
    acking = xds.client(node_id="twin")
    await acking.subscribe_all()
    await xds.settled(acking)
    assert (await xds.registry.wait_until_applied(xds.generation, timeout_s=1.0)) == []
    assert (await silent.ended()).code == grpc.StatusCode.ABORTED


async def test_per_type_streams_of_one_node_live_side_by_side(xds: Harness) -> None:
    """Envoy without ADS opens one stream per type with one node id: not twins."""
    cds = xds.client("cds", node_id="split")
    eds = xds.client("eds", node_id="split")
    cds.send()
    cds.ack(await cds.recv())
    eds.send(names=["svc-0"])
    eds.ack(await eds.recv())
    await xds.settled(cds)
    await xds.settled(eds)
    assert len(xds.registry.proxies["split"].streams) == 2
    await cds.expect_silence(0.2)
    await eds.expect_silence(0.2)
    assert xds.registry.proxies["split"].type(ENDPOINT).acks == 1


async def test_a_second_stream_of_one_type_replaces_the_first(xds: Harness) -> None:
    first = xds.client("cds", node_id="split")
    first.send()
    await first.recv()
    second = xds.client("cds", node_id="split")
    second.send()
    await second.recv()
    assert (await first.ended()).code == grpc.StatusCode.ABORTED


def _stream_of(xds: Harness, client: object) -> int:
    """The id of the server's newest open stream (the client's)."""
    return max(stream.stream_id for stream in xds.engine.open_streams)

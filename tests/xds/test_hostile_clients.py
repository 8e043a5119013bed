"""docs/xds-protocol.md rules 35-37: what a hostile client can make a stream cost.

Unknown types are ignored and keep nothing; what a stream holds for its
client is capped, and past a cap the stream ends RESOURCE_EXHAUSTED keeping
nothing; NACK text is bounded where it is kept and clipped, escaped and
counted (not repeated) in the log.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.status.v3 import csds_pb2, csds_pb2_grpc
from google.protobuf import struct_pb2

from tests.factories import intent_of
from tests.xds.conftest import DeltaClient, Harness, XdsClient, poll
from xds_server.model.edits import update_backend
from xds_server.resources import ADS_ORDER, CLUSTER, ENDPOINT, ROUTE
from xds_server.telemetry.logs import XdsEventLog
from xds_server.xds import limits
from xds_server.xds.delta import DeltaStream
from xds_server.xds.sotw import SotwStream
from xds_server.xds.stream import XdsStream

ADS_SOTW = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
ADS_DELTA = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
UNKNOWN_TYPES = 2_000


def unknown_type(i: int) -> str:
    return f"type.googleapis.com/test.Unknown{i}"


def only_stream(xds: Harness) -> XdsStream[Any, Any]:
    [stream] = xds.engine.open_streams
    return stream


def indexed_types(xds: Harness) -> set[str]:
    """Every type the cache's watch index holds anything for."""
    index = xds.cache._index
    return set(index._named) | set(index._wildcard)


def states_of(stream: XdsStream[Any, Any]) -> set[str]:
    return set(stream._states)  # type: ignore[attr-defined]


def released(xds: Harness) -> bool:
    """docs/xds-protocol.md rule 31: nothing of a closed stream is left."""
    return (
        not xds.engine.open_streams
        and xds.cache.watcher_count == 0
        and not xds.registry.proxies
        and not any(xds.cache._index._named.values())
    )


def node(node_id: str = "node-1", **fields: Any) -> base_pb2.Node:
    return base_pb2.Node(id=node_id, cluster="test", **fields)


def request(
    type_url: str, names: Iterable[str] = (), with_node: base_pb2.Node | None = None
) -> discovery_pb2.DiscoveryRequest:
    out = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=list(names))
    if with_node is not None:
        out.node.CopyFrom(with_node)
    return out


async def exhausted(client: XdsClient | DeltaClient, timeout: float = 10.0) -> str:  # noqa: ASYNC109
    """Wait for the stream to end RESOURCE_EXHAUSTED; its details."""
    if isinstance(client, XdsClient):
        ended = await client.ended(timeout)
        code, details = ended.code, ended.details
    else:
        error = await client.ended(timeout)
        code, details = error.code(), error.details()
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
    return details or ""


# ---- docs/xds-protocol.md rule 35: unknown types and malformed requests ---------


async def test_unknown_types_on_sotw_ads_keep_no_state_and_wake_nothing(xds: Harness) -> None:
    """docs/xds-protocol.md rule 35: 2,000 distinct unknown types, each naming
    a resource, leave no trace: no per-type state on the stream, nothing in
    the cache's watch index, and the writer is not woken once (it used to
    evaluate every type on every request: quadratic). The known types go on."""
    client = xds.client()
    client.send(CLUSTER)
    clusters = await client.recv_type(CLUSTER)
    client.ack(clusters)
    await xds.settled(client)
    stream = only_stream(xds)
    wakeups = stream.wakeups
    for i in range(UNKNOWN_TYPES):
        client.send(unknown_type(i), ["a", f"b{i}"])
    await xds.barrier(client, CLUSTER)
    assert states_of(stream) == {CLUSTER}
    assert indexed_types(xds) <= set(ADS_ORDER)
    assert stream.wakeups == wakeups
    assert xds.registry.proxies["node-1"].types.keys() == {CLUSTER}
    await xds.publish(intent_of(3))  # a third cluster
    assert (await client.recv_type(CLUSTER)).version_info != clusters.version_info


async def test_unknown_types_on_delta_ads_keep_no_state_and_wake_nothing(xds: Harness) -> None:
    """docs/xds-protocol.md rule 35, Delta: the same 2,000 unknown types."""
    client = DeltaClient(xds)
    client.send(CLUSTER)
    clusters = await client.recv()
    client.ack(clusters)
    await poll(lambda: xds.recorder.count("acked") == 1)
    stream = only_stream(xds)
    wakeups = stream.wakeups
    for i in range(UNKNOWN_TYPES):
        client.send(unknown_type(i), ["a", f"b{i}"], initial={"c": "1"})
    client.send(CLUSTER, nonce="barrier")  # read in order: after it, all were read
    await poll(lambda: xds.recorder.count("stale_nonce") == 1)
    assert states_of(stream) == {CLUSTER}
    assert indexed_types(xds) <= set(ADS_ORDER)
    assert stream.wakeups <= wakeups + 1  # the barrier's own
    await client.close()


async def test_the_first_unknown_type_of_a_stream_is_logged_once(
    xds: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/xds-protocol.md rule 35: an operator learns once per stream that a
    client asks for a type this server does not serve (an Envoy configured
    for SDS over ADS waits for it in vain); the type URL is escaped."""
    xds.engine.observers.add(XdsEventLog())
    client = xds.client()
    for i in range(5):
        client.send(unknown_type(i) + "\nforged")
    client.send(CLUSTER)
    await client.recv_type(CLUSTER)
    lines = [r.getMessage() for r in caplog.records if "does not serve" in r.getMessage()]
    expected = f"node-1 asked for {unknown_type(0)}\\nforged, which this server does not serve"
    assert lines == [expected]


async def test_delta_request_that_does_not_decode_is_invalid_argument(xds: Harness) -> None:
    """docs/xds-protocol.md rule 35: bytes that are no DeltaDiscoveryRequest end
    the Delta stream INVALID_ARGUMENT, as on SotW."""
    call = xds.channel().stream_stream(ADS_DELTA)  # no serializers: raw bytes
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        async for _ in call(iter([b"\x0a\xff"])):
            pass
    assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not decode" in (ended.value.details() or "")
    await poll(lambda: released(xds))


async def test_delta_ads_request_without_type_url_is_invalid(xds: Harness) -> None:
    """docs/xds-protocol.md rules 2 and 35 for Delta: ADS needs a type."""
    client = DeltaClient(xds)
    client.send("")
    error = await client.ended()
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "type_url" in (error.details() or "")


async def test_a_refused_type_url_is_clipped_in_the_status(xds: Harness) -> None:
    """docs/xds-protocol.md rule 35: the INVALID_ARGUMENT of a per-type stream
    that is sent another type names that type clipped, not its megabyte."""
    client = xds.client("cds")
    client.send("type.googleapis.com/" + "x" * 1_000_000)
    ended = await client.ended()
    assert ended.code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(ended.details or "") < 2 * limits.LOG_TEXT_CHARS


def evaluated_types(monkeypatch: pytest.MonkeyPatch, stream_class: type[Any]) -> list[str]:
    """The types the writers of `stream_class` evaluate from now on, in order."""
    seen: list[str] = []
    evaluate = stream_class._evaluate

    def counted(self: Any, state: Any, snapshot: Any) -> Any:
        seen.append(state.type_url)
        return evaluate(self, state, snapshot)

    monkeypatch.setattr(stream_class, "_evaluate", counted)
    return seen


async def test_a_sotw_request_costs_the_evaluation_of_its_own_type_only(
    xds: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/xds-protocol.md rule 35: a 60-byte request of one type is not
    amplified into an evaluation of every type the stream holds (here 20,000
    subscribed EDS names): only its own type is looked at; a snapshot change
    likewise evaluates only the types it concerns."""
    client = xds.client()
    got = await client.subscribe_all()
    client.send(ENDPOINT, ["svc-0", "svc-1", *(f"missing-{i}" for i in range(20_000))])
    await xds.barrier(client, ENDPOINT)  # no response: svc-0 and svc-1 are held
    stream = only_stream(xds)
    await poll(lambda: not stream.pending)
    seen = evaluated_types(monkeypatch, SotwStream)
    for _ in range(50):
        client.ack(got[CLUSTER])  # the same ACK again: changes nothing
    await xds.barrier(client, CLUSTER)
    await poll(lambda: not stream.pending)
    assert set(seen) == {CLUSTER}, set(seen)
    seen.clear()
    assert xds.intent is not None
    await xds.publish(update_backend(xds.intent, "svc-0", "svc-0-b0", port=33_000))
    await client.recv_type(ENDPOINT)
    await poll(lambda: not stream.pending)
    assert set(seen) == {ENDPOINT}, set(seen)


async def test_a_delta_request_costs_the_evaluation_of_its_own_type_only(
    xds: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/xds-protocol.md rule 35, Delta: the same for a Delta stream."""
    client = DeltaClient(xds)
    client.send(CLUSTER)
    clusters = await client.recv()
    client.ack(clusters)
    client.send(ENDPOINT, ["svc-0", *(f"missing-{i}" for i in range(20_000))])
    endpoints = await client.recv()
    client.ack(endpoints)
    await poll(lambda: xds.recorder.count("acked") == 2)
    stream = only_stream(xds)
    await poll(lambda: not stream.pending)
    seen = evaluated_types(monkeypatch, DeltaStream)
    for _ in range(50):
        client.ack(clusters)  # the same ACK again: changes nothing
    client.send(CLUSTER, nonce="barrier")
    await poll(lambda: xds.recorder.count("stale_nonce") == 1)
    await poll(lambda: not stream.pending)
    assert set(seen) == {CLUSTER}, set(seen)
    await client.close()


# ---- docs/xds-protocol.md rule 36: caps -------------------------------------


def _oversized_nodes() -> dict[str, base_pb2.Node]:
    long = "n" * (limits.MAX_TEXT_CHARS + 1)
    metadata = struct_pb2.Struct()
    metadata.fields["blob"].string_value = "m" * limits.MAX_METADATA_BYTES
    admin = struct_pb2.Struct()
    admin.fields["admin_address"].string_value = long
    return {
        "node.id": node(long),
        "node.cluster": base_pb2.Node(id="node-1", cluster=long),
        "node.metadata admin_address": node(metadata=admin),
        "node.metadata": node(metadata=metadata),
    }


@pytest.mark.parametrize("field", list(_oversized_nodes()))
async def test_an_oversized_node_ends_the_stream_and_is_not_kept(xds: Harness, field: str) -> None:
    """docs/xds-protocol.md rule 36: a node string one character past its cap
    (or metadata past 1 MiB) ends the stream RESOURCE_EXHAUSTED naming the
    field; the node never reaches /proxies or CSDS (a 52 MB node id used to)."""
    client = xds.client()
    client.send_raw(request(CLUSTER, with_node=_oversized_nodes()[field]))
    details = await exhausted(client)
    assert details.startswith(field + " is "), details
    await poll(lambda: released(xds))
    assert xds.recorder.count("stream_opened") == 0


async def test_a_node_at_its_caps_is_served(xds: Harness) -> None:
    """docs/xds-protocol.md rule 36: exactly at every cap is accepted."""
    at_cap = "n" * limits.MAX_TEXT_CHARS
    client = xds.client(node_id=at_cap)
    client.send_raw(
        request(CLUSTER, with_node=base_pb2.Node(id=at_cap, cluster=at_cap)),
    )
    await client.recv_type(CLUSTER)
    assert list(xds.registry.proxies) == [at_cap]


async def test_too_many_names_end_a_sotw_stream(xds: Harness) -> None:
    """docs/xds-protocol.md rule 36: one name past MAX_NAMES ends the stream,
    keeping nothing; a neighbour stream is not disturbed."""
    neighbour = xds.client(node_id="neighbour")
    neighbour.send(CLUSTER)
    await neighbour.recv_type(CLUSTER)
    client = xds.client()
    client.send(ENDPOINT, [f"n{i}" for i in range(limits.MAX_NAMES + 1)])
    details = await exhausted(client)
    assert f"at most {limits.MAX_NAMES}" in details
    await poll(lambda: list(xds.registry.proxies) == ["neighbour"])
    assert xds.cache.watcher_count == 1
    assert not xds.cache._index._named.get(ENDPOINT)


async def test_too_many_names_over_several_types_end_the_stream(xds: Harness) -> None:
    """docs/xds-protocol.md rule 36: the cap is the stream's, over its types."""
    client = xds.client()
    half = limits.MAX_NAMES // 2 + 1
    client.send(ENDPOINT, [f"e{i}" for i in range(half)])
    client.send(ROUTE, [f"r{i}" for i in range(half)])
    await exhausted(client)
    await poll(lambda: released(xds))


async def test_a_name_past_its_cap_ends_the_stream(xds: Harness) -> None:
    """docs/xds-protocol.md rule 36: one name of MAX_TEXT_CHARS + 1 characters."""
    client = xds.client()
    client.send(ENDPOINT, ["svc-0", "x" * (limits.MAX_TEXT_CHARS + 1)])
    details = await exhausted(client)
    assert details.startswith("a resource name is "), details
    await poll(lambda: released(xds))


async def test_names_past_their_total_size_end_the_stream(xds: Harness) -> None:
    """docs/xds-protocol.md rule 36: names within every other cap, but more
    characters in all than MAX_NAME_CHARS_TOTAL, over two types."""
    client = xds.client()
    per_type = limits.MAX_NAME_CHARS_TOTAL // 2 // limits.MAX_TEXT_CHARS + 1
    for prefix, type_url in (("e", ENDPOINT), ("r", ROUTE)):
        names = [f"{prefix}{i:06d}".ljust(limits.MAX_TEXT_CHARS, "x") for i in range(per_type)]
        client.send(type_url, names)
    details = await exhausted(client)
    assert f"at most {limits.MAX_NAME_CHARS_TOTAL}" in details
    await poll(lambda: released(xds))


async def test_delta_subscriptions_accumulate_up_to_the_cap(xds: Harness) -> None:
    """docs/xds-protocol.md rule 36, Delta: subscriptions add up over requests;
    the request that passes MAX_NAMES ends the stream."""
    client = DeltaClient(xds)
    third = limits.MAX_NAMES // 3 + 1
    for part in range(3):
        client.send(ENDPOINT, [f"n{part}-{i}" for i in range(third)])
    details = await exhausted(client)
    assert f"at most {limits.MAX_NAMES}" in details
    await poll(lambda: released(xds))


async def test_delta_unsubscribing_gives_room_back(xds: Harness) -> None:
    """docs/xds-protocol.md rule 36, Delta: what is unsubscribed no longer counts."""
    client = DeltaClient(xds)
    names = [f"n{i}" for i in range(limits.MAX_NAMES // 2 + 1)]
    client.send(ENDPOINT, names)
    client.send(ENDPOINT, unsubscribe=names)
    client.send(ENDPOINT, [f"m{i}" for i in range(limits.MAX_NAMES // 2 + 1)])
    client.send(ENDPOINT, ["svc-0"])
    response = await client.recv()
    while not any(r.name == "svc-0" for r in response.resources):
        response = await client.recv()
    await client.close()


@pytest.mark.parametrize("part", ["name", "version"])
async def test_delta_initial_versions_are_capped(xds: Harness, part: str) -> None:
    """docs/xds-protocol.md rule 36, Delta: `initial_resource_versions` counts
    too, its names and versions each within MAX_TEXT_CHARS."""
    client = DeltaClient(xds)
    long = "x" * (limits.MAX_TEXT_CHARS + 1)
    client.send(CLUSTER, initial={long: "v"} if part == "name" else {"svc-0": long})
    details = await exhausted(client)
    assert details.startswith(f"a resource {part} is "), details
    await poll(lambda: released(xds))


async def test_a_request_past_the_message_cap_is_refused_by_grpc(xds: Harness) -> None:
    """docs/xds-protocol.md rules 30 and 36: a request over MAX_REQUEST_BYTES
    never reaches the stream: gRPC ends it RESOURCE_EXHAUSTED."""
    client = xds.client()
    names = [f"{i:06d}".ljust(4000, "x") for i in range(limits.MAX_REQUEST_BYTES // 4000 + 1)]
    sent = client.send(ENDPOINT, names)
    assert sent.ByteSize() > limits.MAX_REQUEST_BYTES
    await exhausted(client)
    await poll(lambda: released(xds))


# ---- docs/xds-protocol.md rule 37: NACK text ---------------------------------

FORGED = "bad\n2026-01-01 00:00:00 ERROR xds_server: forged\x1b[31m"


async def nack_cycles(xds: Harness, client: XdsClient, messages: Iterable[str]) -> None:
    """Get svc-0's CLA sent again and again (unsubscribe, subscribe again:
    docs/xds-protocol.md rule 11) and NACK each time with the next message."""
    nonce = ""
    for message in messages:
        client.send(ENDPOINT, ["svc-0"], nonce=nonce)
        response = await client.recv_type(ENDPOINT)
        client.nack(response, message)
        client.send(ENDPOINT, [], nonce=response.nonce)
        nonce = response.nonce
    await poll(lambda: xds.recorder.count("nacked") >= 1)
    await xds.settled(client)


async def test_nack_text_kept_for_proxies_and_csds_is_clipped(xds: Harness) -> None:
    """docs/xds-protocol.md rule 37: a 1 MB NACK message is kept as its first
    MAX_NACK_CHARS characters with a note, in the proxy status and in CSDS."""
    client = xds.client()
    await nack_cycles(xds, client, ["e" * 1_000_000])
    nack = xds.registry.proxies["node-1"].type(ENDPOINT).last_nack
    assert nack is not None
    assert nack.message == limits.clip("e" * 1_000_000, limits.MAX_NACK_CHARS)
    assert len(nack.message) < limits.MAX_NACK_CHARS + 100
    stub = csds_pb2_grpc.ClientStatusDiscoveryServiceStub(xds.channel())
    report = await stub.FetchClientStatus(csds_pb2.ClientStatusRequest())
    [config] = report.config
    [row] = [c for c in config.generic_xds_configs if c.type_url == ENDPOINT]
    assert row.error_state.details == nack.message


async def test_nack_log_line_is_clipped_and_escaped(
    xds: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/xds-protocol.md rule 37: the log line of a NACK carries at most
    LOG_TEXT_CHARS of its message, with line breaks and control characters
    escaped: one record, one line, no forged record."""
    xds.engine.observers.add(XdsEventLog())
    client = xds.client(node_id="node\nforged")
    await nack_cycles(xds, client, [FORGED + "y" * 100_000])
    [line] = [r.getMessage() for r in caplog.records if "NACKed" in r.getMessage()]
    assert line.isprintable() and "\x1b" not in line
    assert "bad\\n2026-01-01" in line and "\\x1b[31m" in line and "node\\nforged" in line
    assert len(line) < limits.LOG_TEXT_CHARS + 200


async def test_repeated_identical_nacks_are_logged_once_then_counted(
    xds: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/xds-protocol.md rule 37: a stream NACKing the same version with the
    same message over and over logs it once; the repeats are counted when the
    message changes and when the stream closes. Another message is logged."""
    xds.engine.observers.add(XdsEventLog())
    client = xds.client()
    await nack_cycles(xds, client, ["same"] * 5 + ["other"] + ["same"] * 3)
    await client.close()
    await poll(lambda: released(xds))
    lines = [r.getMessage() for r in caplog.records if "NACK" in r.getMessage()]
    version = xds.version(ENDPOINT)
    assert lines == [
        f"node-1 NACKed eds version {version}: same",
        f"node-1 NACKed eds version {version} 4 more times with the same message",
        f"node-1 NACKed eds version {version}: other",
        f"node-1 NACKed eds version {version}: same",
        f"node-1 NACKed eds version {version} 2 more times with the same message",
    ]


def test_loggable_escapes_what_is_not_printable() -> None:
    """docs/xds-protocol.md rule 37: line breaks of every kind, escape
    sequences and bidirectional overrides are escaped; backslashes doubled, so
    an escaped text cannot pass for another; printable Unicode stays."""
    text = "a\nb\r\u2028\u202e\\n\x00é✓\U000e0001"
    assert limits.loggable(text) == "a\\nb\\r\\u2028\\u202e\\\\n\\x00é✓\\U000e0001"
    assert limits.loggable("x" * 2000, 1024) == "x" * 1024 + "... [976 more characters]"
    assert limits.loggable("plain") == "plain"


# ---- a neighbour is never disturbed -----------------------------------------


@pytest.mark.parametrize(
    "attack",
    [
        lambda c: c.send_raw(request(CLUSTER, with_node=node("n" * 10**6))),
        lambda c: c.send(ENDPOINT, ["x" * (limits.MAX_TEXT_CHARS + 1)]),
    ],
    ids=["node", "name"],
)
async def test_a_capped_stream_leaves_others_on_its_channel_alone(
    xds: Harness, attack: Callable[[XdsClient], None]
) -> None:
    """docs/xds-protocol.md rule 36: ending a stream is all a cap does; another
    stream on the same channel (one HTTP/2 connection) goes on."""
    channel = xds.channel()
    good = xds.client(node_id="good", channel=channel)
    good.send(CLUSTER)
    clusters = await good.recv_type(CLUSTER)
    good.ack(clusters)
    bad = xds.client(node_id="bad", channel=channel)
    attack(bad)
    await exhausted(bad)
    await xds.publish(intent_of(3))  # a third cluster
    assert (await good.recv_type(CLUSTER)).version_info != clusters.version_info

"""How a stream ends when something goes wrong: the client's fault is
INVALID_ARGUMENT, a bug of ours is INTERNAL and logged with its traceback; a
bug never looks like the client going away, and the stream is released either way."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from typing import Any

import grpc
import pytest
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import discovery_pb2

from tests.xds.conftest import Harness, intent_of
from xds_server.cache import build_snapshot
from xds_server.resources import CLUSTER
from xds_server.translate import translate

ADS_SOTW = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
MISWIRED = "/test.Miswired/StreamAggregatedResources"


async def _status_of(call: Any) -> grpc.StatusCode:
    """Read the call to its end; the status it ended with."""
    try:
        async for _ in call:
            pass
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


def _bug_logged(caplog: pytest.LogCaptureFixture, kind: type[BaseException]) -> bool:
    return any(
        r.name == "xds_server.xds"
        and r.levelno == logging.ERROR
        and r.exc_info is not None
        and isinstance(r.exc_info[1], kind)
        for r in caplog.records
    )


async def test_a_snapshot_the_writer_cannot_send_ends_the_stream_internal(
    make_harness: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A bug on the writer's side (here a cluster whose packed form is not an Any,
    which the cache trusts and the response cannot hold) is logged with its
    traceback and ends the stream with INTERNAL, not grpc's generic UNKNOWN."""
    xds: Harness = await make_harness()
    good = build_snapshot(translate(intent_of(1)), 1)
    clusters = good.of(CLUSTER)
    assert clusters is not None
    broken = {
        name: dataclasses.replace(resource, packed=resource.message)  # type: ignore[arg-type]  # the bug
        for name, resource in clusters.resources.items()
    }
    types = {**good.types, CLUSTER: dataclasses.replace(clusters, resources=broken)}
    await xds.cache.publish(dataclasses.replace(good, types=types))
    client = xds.client("ads")
    client.send(CLUSTER)
    ended = await client.ended()
    assert ended.code == grpc.StatusCode.INTERNAL, ended
    assert "internal error" in (ended.details or "")
    assert _bug_logged(caplog, TypeError)
    assert not xds.engine.open_streams and xds.cache.watcher_count == 0


async def test_a_request_the_reader_cannot_apply_ends_the_stream_internal(
    make_harness: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A bug on the reader's side (here a wiring mistake: Delta requests handed to
    a SotW stream, which looks for fields they lack) used to be swallowed as a
    disconnect, and the stream ended OK. It is logged and ends INTERNAL."""
    xds: Harness = await make_harness()
    await xds.publish(intent_of(1))
    server = grpc.aio.server()

    async def miswired(requests: Any, context: grpc.aio.ServicerContext) -> None:
        await xds.engine.serve(requests, context, "ads", None, delta=False)

    handler = grpc.stream_stream_rpc_method_handler(
        miswired,
        request_deserializer=discovery_pb2.DeltaDiscoveryRequest.FromString,
        response_serializer=discovery_pb2.DiscoveryResponse.SerializeToString,
    )
    service = grpc.method_handlers_generic_handler(
        "test.Miswired", {"StreamAggregatedResources": handler}
    )
    server.add_generic_rpc_handlers((service,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.stream_stream(
                MISWIRED,
                request_serializer=discovery_pb2.DeltaDiscoveryRequest.SerializeToString,
                response_deserializer=discovery_pb2.DiscoveryResponse.FromString,
            )
            request = discovery_pb2.DeltaDiscoveryRequest(
                node=base_pb2.Node(id="node-1"), type_url=CLUSTER
            )
            assert await _status_of(call(iter([request]))) == grpc.StatusCode.INTERNAL
    finally:
        await server.stop(0)
    assert _bug_logged(caplog, AttributeError)
    assert not xds.engine.open_streams and xds.cache.watcher_count == 0


async def test_a_request_that_does_not_decode_is_invalid_argument(xds: Harness) -> None:
    """Bytes that are no DiscoveryRequest are the client's fault: INVALID_ARGUMENT
    (it used to pass for a disconnect, and the stream ended OK)."""
    channel = xds.channel()
    call = channel.stream_stream(ADS_SOTW)  # no serializers: raw bytes
    corrupt: Iterable[bytes] = iter([b"\x0a\xff"])  # field 1, length 255, then nothing
    assert await _status_of(call(corrupt)) == grpc.StatusCode.INVALID_ARGUMENT
    assert not xds.engine.open_streams

"""docs/xds-protocol.md rules 28, 30 and 31: fast first responses, large
requests, nothing leaks."""

from __future__ import annotations

import asyncio
import gc
import time

import grpc

from tests.xds.conftest import Harness, XdsClient, names_of, poll
from xds_server.resources import CLUSTER, ENDPOINT
from xds_server.xds.sotw import SotwStream


async def test_first_response_latency_under_load(xds: Harness) -> None:
    """docs/xds-protocol.md rule 28: 200 streams subscribing at once all get
    their first response, with p99 latency below 1 s (clients give up after
    ~15 s)."""
    channels = [xds.channel() for _ in range(4)]
    clients = [
        xds.client(node_id=f"load-{i}", channel=channels[i % len(channels)]) for i in range(200)
    ]

    async def first_response(client: XdsClient) -> float:
        started = time.monotonic()
        client.send(CLUSTER)
        response = await client.recv_type(CLUSTER, timeout=10.0)
        assert len(response.resources) == 3
        return time.monotonic() - started

    latencies = sorted(await asyncio.gather(*(first_response(c) for c in clients)))
    p99 = latencies[int(0.99 * len(latencies)) - 1]
    assert p99 < 1.0, f"p99 {p99:.3f} s, max {latencies[-1]:.3f} s"
    assert len(xds.registry.connected()) == 200


async def test_request_larger_than_six_mebibytes_is_accepted(xds: Harness) -> None:
    """docs/xds-protocol.md rule 30: a 6 MiB request (far above gRPC's 4 MiB
    default) is accepted and answered with what exists among its names."""
    names = ["svc-0", *(f"missing-{i:05d}-" + "x" * 1_000 for i in range(6_400))]
    client = xds.client()
    request = client.send(ENDPOINT, names)
    assert request.ByteSize() > 6 * 1024 * 1024
    response = await client.recv_type(ENDPOINT, timeout=10.0)
    assert names_of(response) == ["svc-0"]


def _stream_objects() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, SotwStream))


async def test_closed_streams_release_everything(xds: Harness) -> None:
    """docs/xds-protocol.md rule 31: after 300 streams opened and closed in
    every way (client cancel, half-close, protocol error, channel closed) no
    stream, watch, node index entry, proxy status, task or SotwStream object is
    left."""
    probe = xds.client(node_id="probe")  # warm up the server's own machinery
    probe.send(CLUSTER)
    await probe.recv_type(CLUSTER)
    await probe.close()
    await poll(lambda: not xds.engine.open_streams)
    tasks = len(asyncio.all_tasks())
    watchers = xds.cache.watcher_count

    async def one(i: int) -> None:
        channel = xds.channel() if i % 4 == 3 else channels[i % 3]
        client = XdsClient(channel, "ads" if i % 2 else "cds", f"churn-{i}")
        if i % 4 == 2:
            client.send(ENDPOINT, ["svc-0"])  # on a CDS stream: a protocol error
            assert (await client.ended()).code == grpc.StatusCode.INVALID_ARGUMENT
        else:
            client.send(CLUSTER)
            response = await client.recv_type(CLUSTER)
            client.ack(response)
            client.send(ENDPOINT if i % 2 else CLUSTER, ["svc-0"] if i % 2 else [])
            if i % 4 == 1:
                client.half_close()
                ended = await client.ended()
                assert ended.code in (None, grpc.StatusCode.OK), ended
        await client.close()
        if i % 4 == 3:
            await channel.close()

    channels = [xds.channel() for _ in range(3)]
    for batch in range(6):
        await asyncio.gather(*(one(batch * 50 + i) for i in range(50)))
    for channel in channels:
        await channel.close()

    def released() -> bool:
        return (
            not xds.engine.open_streams
            and xds.cache.watcher_count == watchers
            and not xds.registry.connected()
            and not xds.registry.proxies
            and len(asyncio.all_tasks()) <= tasks
        )

    def state() -> str:
        return (
            f"open={len(xds.engine.open_streams)} watchers={xds.cache.watcher_count}/{watchers}"
            f" proxies={sorted(xds.registry.proxies)} tasks={len(asyncio.all_tasks())}/{tasks}"
        )

    await poll(released, timeout=10.0, describe=state)
    assert not xds.engine._streams_by_node  # the rule-23 index of streams per node
    assert _stream_objects() == 0
    assert xds.recorder.count("stream_opened") == xds.recorder.count("stream_closed") == 301

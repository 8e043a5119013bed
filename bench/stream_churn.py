"""Open and close 10,000 xDS streams; tasks and memory must come back to baseline
(docs/xds-protocol.md rule 31).

    python -m bench.stream_churn [--streams 10000] [--batch 100]

The 300-stream version is a test (tests/xds/test_streams_at_scale.py); this
is the full size. Streams end in every way a client can end them, as in the
test: client cancel, half-close, a protocol error (EDS on a CDS stream), and
the channel closed under them; half are ADS, half CDS; each is answered and
ACKs first. The baseline is taken after a warm-up of ten batches, so gRPC's
and asyncio's one-time allocations are not counted as growth; RSS is also
shown after each quarter, to tell a plateau from a leak. Memory is the
controller process as a whole (clients run in it too and are closed with
their streams): RSS, Python's allocated blocks, and objects the GC tracks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import sys
import time
from collections.abc import AsyncIterator, Sequence

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.cluster.v3 import cds_pb2_grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from bench.ads_clients import rss_bytes
from bench.clients import CHANNEL_OPTIONS, Core, large_intent
from xds_server.resources import CLUSTER, ENDPOINT
from xds_server.xds.stream import XdsStream


class ChurnStream:
    """One SotW stream (ADS or CDS) driven by hand, to be ended in a chosen way."""

    def __init__(self, channel: grpc.aio.Channel, kind: str, node_id: str) -> None:
        self._node: base_pb2.Node | None = base_pb2.Node(id=node_id, cluster="bench")
        self._requests: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()
        if kind == "ads":
            method = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel).StreamAggregatedResources
        else:
            method = cds_pb2_grpc.ClusterDiscoveryServiceStub(channel).StreamClusters
        self._call = method(self._iterate())

    async def _iterate(self) -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        while (request := await self._requests.get()) is not None:
            yield request

    def send(
        self,
        type_url: str,
        names: Sequence[str] = (),
        answered: discovery_pb2.DiscoveryResponse | None = None,
    ) -> None:
        """A request; with `answered`, the ACK of that response. The node goes
        with the first request only, as Envoy sends it."""
        request = discovery_pb2.DiscoveryRequest(type_url=type_url, resource_names=list(names))
        if answered is not None:
            request.response_nonce, request.version_info = answered.nonce, answered.version_info
        if self._node is not None:
            request.node.CopyFrom(self._node)
            self._node = None
        self._requests.put_nowait(request)

    async def recv(self, timeout: float) -> discovery_pb2.DiscoveryResponse:  # noqa: ASYNC109
        async with asyncio.timeout(timeout):
            response = await self._call.read()
        assert isinstance(response, discovery_pb2.DiscoveryResponse), response
        return response

    def half_close(self) -> None:
        self._requests.put_nowait(None)

    async def ended(self, timeout: float) -> None:  # noqa: ASYNC109
        """Until the server ends the stream, with any status."""
        async with asyncio.timeout(timeout):
            with contextlib.suppress(grpc.aio.AioRpcError):
                while await self._call.read() is not grpc.aio.EOF:
                    pass

    async def close(self) -> None:
        self._requests.put_nowait(None)
        self._call.cancel()


def release_free_memory() -> None:
    """Ask glibc to give freed heap pages back to the OS, so RSS shows what is
    held rather than what malloc keeps for reuse (no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def state(core: Core) -> dict[str, int]:
    gc.collect()
    release_free_memory()
    return {
        "asyncio tasks": len(asyncio.all_tasks()),
        "open streams": len(core.engine.open_streams),
        "cache watchers": core.cache.watcher_count,
        "proxies in registry": len(core.registry.proxies),
        "XdsStream objects": sum(1 for o in gc.get_objects() if isinstance(o, XdsStream)),
        "GC-tracked objects": len(gc.get_objects()),
        "Python allocated blocks": sys.getallocatedblocks(),
        "RSS KiB": rss_bytes() // 1024,
    }


async def one(core: Core, shared: list[grpc.aio.Channel], i: int) -> None:
    """One stream, ended in the i-th of four ways."""
    own = i % 4 == 3
    channel = (
        grpc.aio.insecure_channel(core.address, options=CHANNEL_OPTIONS)
        if own
        else shared[i % len(shared)]
    )
    client = ChurnStream(channel, "ads" if i % 2 else "cds", f"churn-{i}")
    if i % 4 == 2:
        client.send(ENDPOINT, ["svc-0"])  # on a CDS stream: INVALID_ARGUMENT
        await client.ended(timeout=10.0)
    else:
        client.send(CLUSTER)
        client.send(CLUSTER, answered=await client.recv(timeout=10.0))
        if i % 4 == 1:
            client.half_close()
            await client.ended(timeout=10.0)
    await client.close()
    if own:
        await channel.close()


async def churn(core: Core, first: int, count: int, batch: int) -> None:
    shared = [grpc.aio.insecure_channel(core.address, options=CHANNEL_OPTIONS) for _ in range(3)]
    for start in range(first, first + count, batch):
        await asyncio.gather(*(one(core, shared, i) for i in range(start, start + batch)))
    for channel in shared:
        await channel.close()


async def settled(core: Core, baseline: dict[str, int], timeout: float = 30.0) -> None:  # noqa: ASYNC109
    """Until nothing of a stream is left (or the timeout: then the table shows it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (
            not core.engine.open_streams
            and core.cache.watcher_count == baseline["cache watchers"]
            and not core.registry.proxies
            and len(asyncio.all_tasks()) <= baseline["asyncio tasks"]
        ):
            return
        await asyncio.sleep(0.05)


async def measure(streams: int, batch: int) -> None:
    core = await Core(large_intent(2, 2)).start()
    await churn(core, 0, 10 * batch, batch)  # warm-up
    await settled(core, {"cache watchers": 0, "asyncio tasks": len(asyncio.all_tasks())})
    baseline = state(core)
    started = time.perf_counter()
    checkpoints = []
    quarter = max(batch, streams // 4 // batch * batch)
    for first in range(batch, batch + streams, quarter):
        await churn(core, first, min(quarter, batch + streams - first), batch)
        await settled(core, baseline)
        checkpoints.append((first - batch + quarter, state(core)["RSS KiB"]))
    elapsed = time.perf_counter() - started
    after = state(core)
    await core.stop()

    print(f"{streams} streams opened and closed in {elapsed:.1f} s ({batch} at a time)")
    print("  RSS KiB after " + ", ".join(f"{n}: {rss}" for n, rss in checkpoints))
    print(f"  {'':<26}{'baseline':>12}{'after':>12}{'change':>12}")
    for key, before in baseline.items():
        change = after[key] - before
        percent = f" ({100 * change / before:+.1f} %)" if before else ""
        print(f"  {key:<26}{before:>12}{after[key]:>12}{change:>+12}{percent}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    asyncio.run(measure(args.streams, args.batch))


if __name__ == "__main__":
    main()

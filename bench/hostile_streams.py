"""What a hostile client's requests cost, and what the real ones weigh against the caps.

    python -m bench.hostile_streams [--unknown 20000] [--batch 1000] [--extra-names 20000]
                                    [--services 5000]

docs/xds-protocol.md rule 35: one ADS stream (Envoy-like, subscribed to a
100-service config and synced) sends `--unknown` requests, each for a type
URL never seen before and naming two resources. Reported: the time per
request of the first batch and of the last (flat when a request costs
O(1), growing when its cost follows the types seen so far), and what the
server holds afterwards. The baseline, in the same run and on the same
stream: as many requests of a served type quoting a stale nonce (ignored by
docs/xds-protocol.md rule 8, so O(1) too). Every batch ends with a barrier:
a stale-nonce request, counted by the proxy registry once every earlier
request was read.

Then the same rule for a served type: `--batch` repetitions of a CDS ACK
(60 bytes, changing nothing) on a stream that also subscribes to
`--extra-names` EDS names; baseline, the same on a stream without them. The
time per request must not follow the names the stream holds.

docs/xds-protocol.md rules 30 and 36: the requests an Envoy of a
`--services` configuration sends at most (SotW EDS, and a Delta reconnect's
`initial_resource_versions` per type), in bytes, against the request cap.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator

import grpc
from envoy.config.core.v3 import base_pb2
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from bench.clients import Core, envoy_like, large_intent
from xds_server.cache import build_snapshot
from xds_server.resources import ADS_ORDER, CLUSTER, ENDPOINT
from xds_server.translate import translate
from xds_server.xds.status import TypeStatus

NODE = "hostile"


class RawStream:
    """One SotW ADS stream fed request by request."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._requests: asyncio.Queue[discovery_pb2.DiscoveryRequest | None] = asyncio.Queue()
        self.responses: asyncio.Queue[discovery_pb2.DiscoveryResponse] = asyncio.Queue()
        stub = ads_pb2_grpc.AggregatedDiscoveryServiceStub(channel)
        self._call = stub.StreamAggregatedResources(self._iterate())
        self._first = True
        self._reader = asyncio.create_task(self._read())

    async def _iterate(self) -> AsyncIterator[discovery_pb2.DiscoveryRequest]:
        while (request := await self._requests.get()) is not None:
            yield request

    async def _read(self) -> None:
        try:
            async for response in self._call:
                self.responses.put_nowait(response)
        except (grpc.aio.AioRpcError, asyncio.CancelledError):
            pass

    def send(self, type_url: str, names: list[str], nonce: str = "", version: str = "") -> None:
        request = discovery_pb2.DiscoveryRequest(
            type_url=type_url, resource_names=names, response_nonce=nonce, version_info=version
        )
        if self._first:  # docs/xds-protocol.md rule 1
            request.node.CopyFrom(base_pb2.Node(id=NODE, cluster="bench"))
            self._first = False
        self._requests.put_nowait(request)

    async def subscribe(
        self, type_url: str, names: list[str]
    ) -> discovery_pb2.DiscoveryResponse | None:
        """Subscribe and ACK the answer, as Envoy does (none if nothing exists)."""
        self.send(type_url, names)
        try:
            response = await asyncio.wait_for(self.responses.get(), 2.0)
        except TimeoutError:
            return None
        self.send(type_url, names, response.nonce, response.version_info)
        return response

    async def close(self) -> None:
        self._requests.put_nowait(None)
        self._call.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


def _status(core: Core) -> TypeStatus:
    return core.registry.proxies[NODE].type(CLUSTER)


async def _timed_batch(
    core: Core, stream: RawStream, requests: list[tuple[str, list[str]]]
) -> float:
    """Seconds from the first request of the batch to the server having read its last."""
    stale = sum(1 for type_url, _ in requests if type_url == CLUSTER)
    until = _status(core).stale_nonces + stale + 1  # theirs, and the barrier's
    started = time.perf_counter()
    for type_url, names in requests:
        stream.send(type_url, names, nonce="stale")
    stream.send(CLUSTER, [], nonce="barrier")
    while _status(core).stale_nonces < until:  # noqa: ASYNC110  (no event marks a stale nonce)
        await asyncio.sleep(0.001)
    return time.perf_counter() - started


async def unknown_types(unknown: int, batch: int) -> None:
    core = await Core(large_intent(100, 2)).start()
    channel = grpc.aio.insecure_channel(core.address)
    stream = RawStream(channel)
    try:
        for type_url, names in envoy_like(large_intent(100, 2)).items():
            await stream.subscribe(type_url, names)
        await asyncio.sleep(0.5)
        baseline = [(CLUSTER, []) for _ in range(batch)]
        known_s = await _timed_batch(core, stream, baseline)
        times = []
        for start in range(0, unknown, batch):
            requests = [
                (f"type.googleapis.com/bench.Unknown{i}", ["a", f"b{i}"])
                for i in range(start, min(start + batch, unknown))
            ]
            times.append(await _timed_batch(core, stream, requests))
        known_after_s = await _timed_batch(core, stream, baseline)
        [served] = core.engine.open_streams
        index = core.cache._index
        print(f"{unknown} unknown-type requests on one ADS stream, in batches of {batch}")
        print(f"  first batch   {times[0] / batch * 1e6:8.1f} us per request")
        print(f"  last batch    {times[-1] / batch * 1e6:8.1f} us per request")
        print(
            f"  served type, stale nonce (baseline) {known_s / batch * 1e6:8.1f} us per request"
            f" before, {known_after_s / batch * 1e6:8.1f} after"
        )
        print(f"  total {sum(times):.2f} s; writer wake-ups {served.wakeups}")
        print(
            f"  held afterwards: stream types {len(served._states)},"  # type: ignore[attr-defined]
            f" watch index types {len(set(index._named) | set(index._wildcard))}"
        )
    finally:
        await stream.close()
        await channel.close()
        await core.stop()


async def small_requests(extra_names: int, batch: int) -> None:
    """A CDS ACK sent again, `batch` times, on a stream that also subscribes to
    `extra_names` EDS names that do not exist; baseline: a stream without them."""
    core = await Core(large_intent(100, 2)).start()
    channel = grpc.aio.insecure_channel(core.address)
    try:
        print(f"{batch} repeated CDS ACKs (60 bytes each) on one ADS stream")
        for extra in (0, extra_names):
            stream = RawStream(channel)
            subscriptions = envoy_like(large_intent(100, 2))
            subscriptions[ENDPOINT] += [f"missing-{i}" for i in range(extra)]
            got = {t: await stream.subscribe(t, names) for t, names in subscriptions.items()}
            clusters = got[CLUSTER]
            assert clusters is not None
            await asyncio.sleep(0.5)
            ack = (CLUSTER, [], clusters.nonce, clusters.version_info)
            started = time.perf_counter()
            before = _status(core).acks
            for _ in range(batch):
                stream.send(*ack)
            stream.send(CLUSTER, [], nonce="barrier")
            until = _status(core).stale_nonces + 1
            while _status(core).stale_nonces < until:  # noqa: ASYNC110  (no event marks a stale nonce)
                await asyncio.sleep(0.001)
            elapsed = time.perf_counter() - started
            assert _status(core).acks == before  # repeats: no new ACK
            label = "baseline, 100 EDS names" if not extra else f"with {extra} more EDS names"
            print(f"  {label:32} {elapsed / batch * 1e6:8.1f} us per request")
            await stream.close()
            await asyncio.sleep(0.2)
    finally:
        await channel.close()
        await core.stop()


def request_sizes(services: int) -> None:
    intent = large_intent(services, 2)
    snapshot = build_snapshot(translate(intent), 1)
    eds = discovery_pb2.DiscoveryRequest(
        type_url=ENDPOINT, resource_names=envoy_like(intent)[ENDPOINT]
    )
    print(f"requests of an Envoy holding {services} services (bench/large_config.py's intent)")
    print(f"  SotW EDS request ({services} names): {eds.ByteSize() / 1e6:.3f} MB")
    for type_url in ADS_ORDER:
        current = snapshot.of(type_url)
        assert current is not None
        reconnect = discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url,
            initial_resource_versions={n: r.digest for n, r in current.resources.items()},
        )
        print(
            f"  Delta reconnect, {type_url.rsplit('.', 1)[-1]}"
            f" ({len(current.resources)} held): {reconnect.ByteSize() / 1e6:.3f} MB"
        )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.hostile_streams")
    parser.add_argument("--unknown", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--services", type=int, default=5_000)
    parser.add_argument("--extra-names", type=int, default=20_000)
    args = parser.parse_args()
    asyncio.run(unknown_types(args.unknown, args.batch))
    asyncio.run(small_requests(args.extra_names, args.batch))
    request_sizes(args.services)


if __name__ == "__main__":
    main()

"""A large configuration: full rebuild time, and one endpoint flip's way to its subscribers.

    python -m bench.large_config [--services 1000] [--backends 10] [--flips 40]

1,000 clusters with 10 endpoints each (10,000 endpoints). Reports:

- full rebuild: translate + build_snapshot from nothing (what every change
  cost before publishing became incremental), median of a few;
- admin check of a one-weight change (what every admin mutation validates
  before it is stored): Publisher.check, with the publisher's memory; its
  baseline is the full rebuild above, which is what a check from scratch does;
- one endpoint flip, incremental (the publisher: translator memory, snapshot
  built against the previous one): publisher.publish_now() until the EDS
  response has reached an Envoy-like SotW client and an Envoy-like Delta client
  (each subscribed to all 1,000 CLAs), and what the flip serialized;
- the same flips with memoization off (full rebuild, then publish): the
  baseline, in the same run, against the same clients;
- bystanders: clients subscribed only to a CLA that never flips; their
  writers must not wake and they must receive nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping

from bench.clients import (
    STREAMS_PER_CHANNEL,
    BenchClient,
    Core,
    channels_for,
    envoy_like,
    large_intent,
)
from bench.common import summary_ms
from xds_server.cache import build_snapshot
from xds_server.model.edits import update_backend
from xds_server.model.intent import Intent
from xds_server.resources import ENDPOINT, SHORT_NAMES
from xds_server.translate import translate

BYSTANDERS = 10  # per protocol


def full_rebuild_s(core: Core, intent: Intent, rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        build_snapshot(translate(intent, core.health), core.cache.generation + 1)
        samples.append(time.perf_counter() - started)
    return samples


def check_s(check: Callable[[Intent], None], intent: Intent, rounds: int) -> list[float]:
    """Seconds per check of a one-weight change, each of another service."""
    samples = []
    for i in range(rounds):
        service = f"svc-{(i * 7919) % len(intent.services)}"
        changed = update_backend(intent, service, f"{service}-b0", weight=2)  # every weight is 1
        started = time.perf_counter()
        check(changed)
        samples.append(time.perf_counter() - started)
    return samples


async def full_publish(core: Core) -> None:
    """Memoization off: translate from scratch, serialize everything, publish."""
    snapshot = build_snapshot(translate(core.store.intent, core.health), core.cache.generation + 1)
    await core.cache.publish(snapshot)


async def incremental_publish(core: Core) -> None:
    await core.publisher.publish_now()


async def flips(
    core: Core,
    subscribers: list[BenchClient],
    publish: Callable[[Core], Awaitable[None]],
    count: int,
    services: int,
) -> tuple[dict[str, list[float]], Counter[str]]:
    """`count` flips, each of another service's backend: seconds from the start
    of publishing until it returned ("publish": translate, build, wake) and
    until the EDS response arrived at each kind of subscriber."""
    samples: dict[str, list[float]] = {"publish": [], "sotw": [], "delta": []}
    serialized: Counter[str] = Counter()
    for i in range(count):
        service = (i * 7919) % (services - 1)  # never the bystanders' last service
        core.flip(f"svc-{service}-b{i % 10}")
        started = time.perf_counter()
        await publish(core)
        samples["publish"].append(time.perf_counter() - started)
        for client in subscribers:
            arrival = await client.next(ENDPOINT)
            assert arrival.names == [f"svc-{service}"], arrival.names
            samples["delta" if client.delta else "sotw"].append(arrival.at - started)
        snapshot = core.cache.snapshot
        assert snapshot is not None
        serialized[describe(snapshot.serialized)] += 1
        await asyncio.sleep(0.02)  # let the ACKs in before the next flip
    return samples, serialized


def describe(serialized: Mapping[str, tuple[str, ...]]) -> str:
    """e.g. "eds 1": how many resources of which types were serialized."""
    parts = [f"{SHORT_NAMES[t]} {len(names)}" for t, names in serialized.items() if names]
    return ", ".join(parts) or "nothing"


async def measure(services: int, backends: int, count: int) -> None:
    intent = large_intent(services, backends)
    core = await Core(intent).start()
    rebuild = full_rebuild_s(core, intent, 5)
    checks = check_s(core.publisher.check, intent, 20)
    channels = channels_for(core.address, 3 * STREAMS_PER_CHANNEL)
    subscribers = [
        BenchClient(channel, f"envoy-{kind}", envoy_like(intent), delta=kind == "delta")
        for kind, channel in zip(("sotw", "delta"), channels, strict=False)
    ]
    bystander_channel = channels[2]
    last = {ENDPOINT: [f"svc-{services - 1}"]}
    bystanders = [
        BenchClient(bystander_channel, f"bystander-{i}", last, delta=i % 2 == 1)
        for i in range(2 * BYSTANDERS)
    ]
    await core.wait_all_synced(2 + 2 * BYSTANDERS)
    await asyncio.sleep(0.5)
    for client in (*subscribers, *bystanders):
        client.forget_arrivals()
    wakeups = {s: s.wakeups for s in core.engine.open_streams}
    heard = sum(b.responses for b in bystanders)

    await flips(core, subscribers, incremental_publish, 5, services)  # warm-up
    incremental, serialized = await flips(core, subscribers, incremental_publish, count, services)
    baseline, _ = await flips(core, subscribers, full_publish, max(5, count // 4), services)

    bystander_wakeups = sum(
        s.wakeups - wakeups[s]
        for s in core.engine.open_streams
        if s.info is not None and s.info.node_id.startswith("bystander")
    )
    print(
        f"large config: {services} clusters, {services * backends} endpoints; "
        f"subscribers: 1 SotW + 1 Delta ADS client (all {services} CLAs each), "
        f"{2 * BYSTANDERS} bystanders (1 CLA that never flips)"
    )
    print(f"  full rebuild (translate + build_snapshot)   {summary_ms(rebuild)}")
    print(f"  admin check, Publisher.check              {summary_ms(checks)}")
    check_ratio = statistics.median(rebuild) / statistics.median(checks)
    print(f"  ratio full rebuild / Publisher.check (medians): {check_ratio:.1f}x")
    for label, samples in (("incremental    ", incremental), ("memo off (base)", baseline)):
        print(f"  flip, {label}: publish       {summary_ms(samples['publish'])}")
        for kind in ("sotw", "delta"):
            print(f"  flip, {label}: -> {kind:<5}     {summary_ms(samples[kind])}")
    ratio = statistics.median(baseline["sotw"]) / statistics.median(incremental["sotw"])
    print(f"  ratio memo off / incremental (SotW medians): {ratio:.1f}x")
    print(f"  serialized per incremental flip: {dict(serialized)}")
    heard_now = sum(b.responses for b in bystanders) - heard
    print(f"  bystanders: {bystander_wakeups} writer wake-ups, {heard_now} responses")
    for client in (*subscribers, *bystanders):
        await client.close()
    for channel in channels:
        await channel.close()
    await core.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--backends", type=int, default=10)
    parser.add_argument("--flips", type=int, default=40)
    args = parser.parse_args()
    asyncio.run(measure(args.services, args.backends, args.flips))


if __name__ == "__main__":
    main()

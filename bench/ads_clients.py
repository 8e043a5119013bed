"""Many ADS clients on one controller: time until all ACK one change, memory per idle stream.

    python -m bench.ads_clients [--clients 1000] [--processes 4] [--services 20] [--changes 5]

The controller's xDS core (publisher, cache, engine, proxy registry) runs in
this process; the clients run in `--processes` child processes (grpc.aio,
Envoy-like SotW ADS streams that subscribe to everything and ACK every
response at once). A change is timed from the start of publishing until the
proxy registry has the ACK of every client (server side, the same
`wait_until_applied` the admin API uses). Two kinds of change alternate:

- an endpoint flip: one backend's health, one CLA to every client;
- a cluster change: the service's strategy, i.e. its cluster, and its CLA
  again (warming, docs/xds-protocol.md rule 23), to every client.

Baseline, in the same run: the same changes with one client connected.

Memory per idle stream is measured twice: the controller's RSS (all of it:
Python objects and gRPC's C core) before and after the clients connected
and went idle, divided by the number of clients; and tracemalloc's count of
Python allocations made meanwhile (gRPC's C allocations are invisible to it).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

from bench.clients import BenchClient, Core, channels_for, envoy_like, large_intent
from bench.common import summary_ms
from xds_server.model.intent import Intent, Strategy

KIB = 1024


def rss_bytes() -> int:
    """This process's resident set size, from /proc."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * KIB
    raise RuntimeError("no VmRSS in /proc/self/status")


# ---- the client processes --------------------------------------------------------


async def run_clients(address: str, first: int, count: int, services: int) -> None:
    """`count` Envoy-like clients until stdin closes."""
    subscriptions = envoy_like(large_intent(services, 1))
    channels = channels_for(address, count)
    clients = [
        BenchClient(channels[i % len(channels)], f"client-{first + i}", subscriptions)
        for i in range(count)
    ]
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for client in clients:
        await client.close()
    for channel in channels:
        await channel.close()


def spawn(address: str, first: int, count: int, services: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "bench.ads_clients", "--serve-clients", address]
    command += ["--first", str(first), "--clients", str(count), "--services", str(services)]
    return subprocess.Popen(command, stdin=subprocess.PIPE)


def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    """Close each child's stdin (it closes its streams and exits); by PID, bounded."""
    for process in processes:
        assert process.stdin is not None
        process.stdin.close()
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


# ---- the controller side ---------------------------------------------------------


def endpoint_flip(core: Core, n: int) -> None:
    core.flip(f"svc-0-b{n % 2}")


def cluster_change(intent: Intent) -> Intent:
    """svc-0's strategy toggled between least connections and round robin."""
    first, *rest = intent.services
    toggled = (
        Strategy.ROUND_ROBIN
        if first.strategy is Strategy.LEAST_CONNECTIONS
        else Strategy.LEAST_CONNECTIONS
    )
    return dataclasses.replace(
        intent, services=(dataclasses.replace(first, strategy=toggled), *rest)
    )


async def all_ack(core: Core, changes: int, clients: int) -> dict[str, list[float]]:
    """Per kind of change, seconds from publishing until every client ACKed it."""
    samples: dict[str, list[float]] = {"endpoint flip": [], "cluster change": []}
    for n in range(2 * changes):
        before = core.cache.generation
        started = time.perf_counter()
        if n % 2 == 0:
            endpoint_flip(core, n)
            generation = await core.publisher.publish_now()
        else:
            await core.store.update(cluster_change)
            generation = await core.publisher.publish_now()
        assert generation > before, "the change published nothing"
        failures = await core.registry.wait_until_applied(generation, 30)
        elapsed = time.perf_counter() - started
        if failures:
            raise SystemExit(f"change {n}: {len(failures)} clients did not ACK: {failures[:3]}")
        assert len(core.registry.connected()) == clients
        samples["endpoint flip" if n % 2 == 0 else "cluster change"].append(elapsed)
        await asyncio.sleep(0.2)
    return samples


async def measure(clients: int, processes: int, services: int, changes: int) -> None:
    core = await Core(large_intent(services, 2)).start()
    channel = channels_for(core.address, 1)[0]
    single = BenchClient(channel, "client-single", envoy_like(core.store.intent))
    await core.wait_all_synced(1)
    baseline = await all_ack(core, changes, 1)

    gc.collect()
    rss_before = rss_bytes()
    tracemalloc.start()
    traced_before = tracemalloc.get_traced_memory()[0]
    others = clients - 1
    per_process = -(-others // processes)
    children = [
        spawn(core.address, 1 + first, min(per_process, others - first), services)
        for first in range(0, others, per_process)
    ]
    try:
        connect_started = time.perf_counter()
        await core.wait_all_synced(clients, timeout=300)
        connected_s = time.perf_counter() - connect_started
        await asyncio.sleep(2.0)  # idle: every response ACKed, nothing in flight
        gc.collect()
        traced = tracemalloc.get_traced_memory()[0] - traced_before
        tracemalloc.stop()
        gc.collect()
        rss = rss_bytes() - rss_before
        many = await all_ack(core, changes, clients)
    finally:
        stop(children)
    await single.close()
    await channel.close()
    await core.stop()

    print(
        f"{clients} ADS clients (SotW, Envoy-like: CDS+LDS wildcard, {services} EDS names, RDS) "
        f"in {len(children)} processes + 1, one controller; {services} services x 2 backends"
    )
    print(f"  connected and synced in {connected_s:.1f} s")
    for kind, values in many.items():
        print(f"  all {clients} ACK one {kind:<15} {summary_ms(values)}")
    for kind, values in baseline.items():
        print(f"  1 client ACKs one {kind:<15} {summary_ms(values)}   (baseline)")
    flips = statistics.median(many["endpoint flip"]) / statistics.median(baseline["endpoint flip"])
    print(f"  ratio {clients} clients / 1 client (endpoint flip medians): {flips:.0f}x")
    print(
        f"  memory per idle stream: RSS {rss / others / KIB:.1f} KiB "
        f"(all of it, gRPC core included), tracemalloc {traced / others / KIB:.1f} KiB "
        f"(Python objects only), over {others} streams"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--services", type=int, default=20)
    parser.add_argument("--changes", type=int, default=5)
    parser.add_argument("--serve-clients", metavar="ADDRESS", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_clients:
        asyncio.run(run_clients(args.serve_clients, args.first, args.clients, args.services))
    else:
        asyncio.run(measure(args.clients, args.processes, args.services, args.changes))


if __name__ == "__main__":
    main()

"""Admin change -> applied: an HTTP call to the admin API until it answers applied.

    python -m bench.admin_change [--changes 200]

Through a real Envoy 1.40 (`xds_server.demo.running_stack`, metrics on, so the
routing totals are kept and a strategy change takes its pre-change counter
reading). Two admin calls alternate, sent over HTTP by a client in a process
of its own (bench/admin_client.py, one kept connection), each timed there from
sending the request until the whole answer arrived, and must answer applied
(200):

- a strategy PUT of one service (CDS, plus its re-sent EDS: docs/xds-protocol.md rule 23), whose
  answer carries active_connections_before/after read from Envoy;
- a backend weight PATCH under the weighted strategy (EDS only).

Baseline, measured in the same run and interleaved with the admin calls: the
push-to-ACK of the same two kinds of change made directly on the store, as
bench/push_to_ack.py does (store.update -> every proxy ACKed). The difference
is what the admin path adds: HTTP, its Envoy reads, the check.

Also printed, to explain that difference: each answer's own `apply_ms` (store
-> every ACK, as the controller timed it); one traffic reading of the Envoy
(what a strategy change reads before it changes anything) and one
`GET /clusters` (what it reads after the ACK), timed alone over the kept
connections the admin path uses and one-shot; and, per kind, how many
pre-change counter readings the publisher had to take itself (0 for the admin
calls: their own reading stands for it).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.common import summary_ms
from bench.push_to_ack import push, weight_change
from xds_server.app import Controller
from xds_server.demo import local_settings, running_stack
from xds_server.model.edits import with_service
from xds_server.model.intent import Intent, SocketAddress, Strategy
from xds_server.telemetry import envoy_stats

STRATEGY = "/api/v1/router/strategy"
WEIGHT = "/api/v1/router/services/qdrant/backends/qdrant-primary"
KINDS = (
    "admin: strategy PUT (cds+eds)",
    "admin: weight PATCH (eds)",
    "push: strategy (cds+eds)",
    "push: weight (eds)",
)
Samples = dict[str, list[float]]
# Every call changes something: the admin calls and the pushes set different values.
ADMIN_STRATEGY, PUSH_STRATEGY = "least_connections", Strategy.ROUND_ROBIN
ADMIN_WEIGHTS, PUSH_WEIGHTS = 2, 8  # admin: 2..6, push: 8..12


def push_strategy(intent: Intent, n: int) -> Intent:
    return with_service(intent, "embedding", strategy=PUSH_STRATEGY)


def push_weight(intent: Intent, n: int) -> Intent:
    return weight_change(intent, n, lowest=PUSH_WEIGHTS, count=5)


class AdminClient:
    """bench/admin_client.py in a child process: the HTTP client off this event loop."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self._process = process
        self.apply_s: Samples = {}  # path -> the answers' own apply_ms, in seconds

    @classmethod
    async def start(cls, address: SocketAddress) -> AdminClient:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.admin_client",
            address.host,
            str(address.port),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def call(self, method: str, path: str, body: dict[str, Any]) -> float:
        """Seconds until the admin API answered; raises unless it answered applied (200)."""
        assert self._process.stdin is not None and self._process.stdout is not None
        self._process.stdin.write(f"{method} {path} {json.dumps(body)}\n".encode())
        await self._process.stdin.drain()
        status, seconds, apply_ms = (await self._process.stdout.readline()).split()
        if status != b"200":
            raise SystemExit(f"{method} {path} {body}: HTTP {status.decode()}")
        self.apply_s.setdefault(path, []).append(float(apply_ms) / 1000)
        return float(seconds)

    async def stop(self) -> None:
        assert self._process.stdin is not None
        self._process.stdin.close()
        await self._process.wait()


HTTP_FLOOR = "admin: GET /healthz (the HTTP floor)"


def calls(controller: Controller, client: AdminClient) -> list[Callable[[int], Awaitable[float]]]:
    """One timed change of each kind of KINDS, in that order, given a sequence number."""

    def strategy(n: int) -> Awaitable[float]:
        return client.call("PUT", STRATEGY, {"strategy": ADMIN_STRATEGY, "service": "embedding"})

    def weight(n: int) -> Awaitable[float]:
        return client.call("PATCH", WEIGHT, {"weight": ADMIN_WEIGHTS + n % 5})

    return [
        strategy,
        weight,
        lambda n: push(controller, push_strategy, n),
        lambda n: push(controller, push_weight, n),
    ]


async def envoy_reads(controller: Controller, rounds: int) -> Samples:
    """One traffic reading and one GET /clusters of every connected proxy, timed alone,
    over the sampler's kept connections (as the admin path reads) and one-shot."""
    assert controller.telemetry is not None
    kept, proxies = controller.telemetry.sampler.reader, controller.proxies.connected()
    reads: dict[str, Callable[[], Awaitable[object]]] = {
        "traffic reading, kept connection": lambda: kept.traffic(proxies),
        "GET /clusters, kept connection": lambda: kept.hosts(proxies),
        "traffic reading, one-shot": lambda: envoy_stats.read_traffic_of(proxies),
        "GET /clusters, one-shot": lambda: envoy_stats.read_proxies(proxies),
    }
    samples: Samples = {name: [] for name in reads}
    for _ in range(rounds):
        for name, read in reads.items():
            started = time.perf_counter()
            await read()
            samples[name].append(time.perf_counter() - started)
    return samples


async def measure(changes: int) -> tuple[Samples, dict[str, int]]:
    settings = local_settings(worker_threads=2, metrics_enabled=True)
    samples: Samples = {kind: [] for kind in KINDS}
    hook_reads = dict.fromkeys(KINDS, 0)  # pre-change readings the publisher took itself
    with tempfile.TemporaryDirectory(prefix="bench-admin-") as work:
        async with running_stack(settings, workdir=Path(work)) as stack:
            controller = stack.controller
            await controller.proxies.wait_until_applied(controller.cache.generation, 10)
            client = await AdminClient.start(controller.admin_address)
            try:
                await client.call("PUT", STRATEGY, {"strategy": "weighted", "service": "qdrant"})
                timed = calls(controller, client)
                assert controller.telemetry is not None
                sampler = controller.telemetry.sampler
                for n in range(changes):
                    for kind, call in zip(KINDS, timed, strict=True):
                        reads = sampler.hook_reads
                        samples[kind].append(await call(n))
                        hook_reads[kind] += sampler.hook_reads - reads
                # The floor under every admin call: one HTTP round trip through the
                # controller's middlewares that changes nothing.
                floor = samples.setdefault(HTTP_FLOOR, [])
                for _ in range(changes):
                    floor.append(await client.call("GET", "/healthz", {}))
            finally:
                await client.stop()
            samples[f"{KINDS[0]}: its apply_ms"] = client.apply_s[STRATEGY][1:]  # not the setup
            samples[f"{KINDS[1]}: its apply_ms"] = client.apply_s[WEIGHT]
            samples |= await envoy_reads(controller, changes)
    return samples, hook_reads


def report(samples: Samples, hook_reads: dict[str, int]) -> None:
    admin = samples[KINDS[0]] + samples[KINDS[1]]
    pushed = samples[KINDS[2]] + samples[KINDS[3]]
    print(f"admin change -> applied vs. push-to-ACK, one real Envoy 1.40, {len(admin)} admin calls")
    print(f"  {'admin: all calls':<44} {summary_ms(admin)}")
    print(f"  {'push: all changes (baseline)':<44} {summary_ms(pushed)}")
    for kind, values in samples.items():
        print(f"  {kind:<44} {summary_ms(values)}")
    print("  ratio admin / push (medians):")
    for label, mine, theirs in (
        ("all", admin, pushed),
        ("strategy", samples[KINDS[0]], samples[KINDS[2]]),
        ("weight", samples[KINDS[1]], samples[KINDS[3]]),
    ):
        print(f"    {label:<10} {statistics.median(mine) / statistics.median(theirs):5.2f}x")
    print("  pre-change readings the publisher took itself:")
    for kind, count in hook_reads.items():
        print(f"    {kind:<32} {count}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=200, help="changes of each kind")
    args = parser.parse_args()
    report(*asyncio.run(measure(args.changes)))


if __name__ == "__main__":
    main()

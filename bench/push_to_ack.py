"""Push-to-ACK latency: an intent change until the real Envoy ACKs it.

    python -m bench.push_to_ack [--changes 300]

Each sample: store.update() -> translate -> snapshot -> push -> Envoy applies
-> ACK recorded for every type that changed. Two kinds of change alternate:
one backend's weight under the weighted strategy (EDS only) and a strategy
switch (CDS, which also re-sends the cluster's EDS:
docs/xds-protocol.md rule 23). The baseline, measured in the same run, is the
wire part alone: response sent -> ACK received, i.e. Envoy's own apply time,
which no control plane can beat.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import summary_ms
from xds_server.app import Controller
from xds_server.demo import local_settings, running_stack
from xds_server.model.edits import with_service
from xds_server.model.intent import Intent, Strategy


def weight_change(intent: Intent, n: int, lowest: int = 1, count: int = 7) -> Intent:
    """qdrant weighted, its first backend's weight one of lowest .. lowest+count-1."""
    qdrant = intent.service("qdrant")
    assert qdrant is not None
    first, *rest = qdrant.backends
    backends = (dataclasses.replace(first, weight=lowest + n % count), *rest)
    return with_service(intent, "qdrant", backends=backends, strategy=Strategy.WEIGHTED)


def strategy_change(intent: Intent, n: int) -> Intent:
    strategy = Strategy.LEAST_CONNECTIONS if n % 4 == 1 else Strategy.ROUND_ROBIN
    return with_service(intent, "embedding", strategy=strategy)


async def push(controller: Controller, change: Callable[..., Intent], n: int) -> float:
    """One timed intent change on the store: seconds until every proxy ACKed it."""
    started = time.perf_counter()
    _, revision = await controller.store.update(functools.partial(change, n=n))
    generation = await controller.publisher.wait_for_revision(revision)
    failures = await controller.proxies.wait_until_applied(generation, 5)
    elapsed = time.perf_counter() - started
    if failures:
        raise SystemExit(f"change {n} not applied: {failures}")
    return elapsed


async def measure(changes: int) -> dict[str, list[float]]:
    settings = local_settings(worker_threads=2)
    samples: dict[str, list[float]] = {"eds (weight)": [], "cds+eds (strategy)": []}
    with tempfile.TemporaryDirectory(prefix="bench-push-") as work:
        async with running_stack(settings, workdir=Path(work)) as stack:
            controller = stack.controller
            await controller.proxies.wait_until_applied(controller.cache.generation, 10)
            controller.proxies.convergence_s.clear()
            for i in range(changes):
                kind, change = (
                    ("eds (weight)", weight_change)
                    if i % 2 == 0
                    else ("cds+eds (strategy)", strategy_change)
                )
                samples[kind].append(await push(controller, change, i))
            samples["wire only: sent -> ACK (baseline)"] = list(controller.proxies.convergence_s)
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=300)
    args = parser.parse_args()
    samples = asyncio.run(measure(args.changes))
    every = samples["eds (weight)"] + samples["cds+eds (strategy)"]
    print(f"push-to-ACK, one real Envoy 1.40, {len(every)} intent changes")
    print(f"  {'all changes':<36} {summary_ms(every)}")
    for kind, values in samples.items():
        print(f"  {kind:<36} {summary_ms(values)}")


if __name__ == "__main__":
    main()

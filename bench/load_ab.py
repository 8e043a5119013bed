"""The spec's load test through the xDS-configured Envoy, against the same
Envoy with the same resources loaded statically, in one run.

    python -m bench.load_ab [--rounds 5] [--requests 1000] [--concurrency 50]

Runs `ab -n 1000 -c 50 -p search.json -T application/json .../api/v1/vectors/search`
in turn against three Envoys (same binary, same worker threads, same sample
backends): the xDS-configured one, a static one with the very same resources,
and a static one whose listener lacks the exact connection balance (what the
balance costs). It reports medians and their ratios, and the median of each
round's ratio (the runs of a round are neighbours in time); these machines
are noisy, so the ratios are the figures to read.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import statistics
import tempfile
from pathlib import Path

import aiohttp
from google.protobuf.message import Message

from xds_server.demo import SEARCH_BODY, Stack, local_settings, running_stack
from xds_server.model.intent import SocketAddress
from xds_server.proxy.envoy_process import EnvoyProcess, start_envoy
from xds_server.proxy.processes import free_port
from xds_server.proxy.static_config import static_bootstrap
from xds_server.resources import LISTENER

UNBALANCED = "static-unbalanced"  # the static Envoy without exact connection balance
NAME_WIDTH = len(UNBALANCED) + 1

FIGURES = {
    "rps": r"Requests per second:\s+([\d.]+)",
    "mean_ms": r"Time per request:\s+([\d.]+) \[ms\] \(mean\)",
    "failed": r"Failed requests:\s+(\d+)",
    "complete": r"Complete requests:\s+(\d+)",
    "p50_ms": r"\s50%\s+(\d+)",
    "p99_ms": r"\s99%\s+(\d+)",
}


async def run_ab(url: str, body: Path, requests: int, concurrency: int) -> dict[str, float]:
    process = await asyncio.create_subprocess_exec(
        *("ab", "-q", "-n", str(requests), "-c", str(concurrency), "-s", "30"),
        *("-p", str(body), "-T", "application/json", url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output = (await asyncio.wait_for(process.communicate(), 300))[0].decode()
    if process.returncode != 0:
        raise SystemExit(f"ab failed:\n{output}")
    figures = {k: float(m.group(1)) for k, p in FIGURES.items() if (m := re.search(p, output))}
    non_2xx = re.search(r"Non-2xx responses:\s+(\d+)", output)
    figures["non_2xx"] = float(non_2xx.group(1)) if non_2xx else 0.0
    return figures


async def backend_counts(stack: Stack) -> dict[str, int]:
    counts = {}
    async with aiohttp.ClientSession() as session:
        for service in stack.controller.store.intent.services:
            if service.name != "qdrant":
                continue
            for b in service.backends:
                async with session.get(f"http://{b.address}:{b.port}/_control/stats") as response:
                    counts[b.name] = int((await response.json())["requests"])
    return counts


async def start_static_envoy(
    stack: Stack, workdir: Path, concurrency: int, *, exact_balance: bool = True
) -> tuple[EnvoyProcess, str]:
    """The same resources the controller serves, as a static bootstrap on other
    ports; without `exact_balance`, the listener leaves connections to the kernel."""
    snapshot = stack.controller.cache.snapshot
    assert snapshot is not None
    resources = {
        t: {n: copy(r.message) for n, r in ts.resources.items()} for t, ts in snapshot.types.items()
    }
    listen = SocketAddress("127.0.0.1", free_port())
    for listener in resources[LISTENER].values():
        listener.address.socket_address.port_value = listen.port  # type: ignore[attr-defined]
        if not exact_balance:
            listener.ClearField("connection_balance_config")
    admin = SocketAddress("127.0.0.1", free_port())
    envoy = await start_envoy(
        static_bootstrap(resources, admin), admin=admin, workdir=workdir, concurrency=concurrency
    )
    return envoy, f"http://{listen}/api/v1/vectors/search"


def copy(message: Message) -> Message:
    """A copy to change: the snapshot's messages are what the controller serves."""
    duplicate = type(message)()
    duplicate.CopyFrom(message)
    return duplicate


async def benchmark(rounds: int, requests: int, concurrency: int, workers: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as tmp:
        work = Path(tmp)
        body = work / "search.json"
        body.write_text(json.dumps(SEARCH_BODY))
        settings = local_settings(worker_threads=workers)
        async with (
            running_stack(settings, workdir=work) as stack,
            contextlib.AsyncExitStack() as envoys,
        ):
            urls = {"xds": f"http://{settings.intent.listen}/api/v1/vectors/search"}
            for name, exact in (("static", True), (UNBALANCED, False)):
                static, urls[name] = await start_static_envoy(
                    stack, work / name, workers, exact_balance=exact
                )
                envoys.push_async_callback(static.stop)
            before = await backend_counts(stack)
            results = await run_rounds(urls, body, rounds, requests, concurrency)
            after = await backend_counts(stack)
    report(results, {k: after[k] - before[k] for k in after}, requests, concurrency, workers)


async def run_rounds(
    urls: dict[str, str], body: Path, rounds: int, requests: int, concurrency: int
) -> dict[str, list[dict[str, float]]]:
    """Each round runs ab once per Envoy, starting with another one: no order bias."""
    results: dict[str, list[dict[str, float]]] = {name: [] for name in urls}
    names = list(urls)
    for round_ in range(rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            results[name].append(await run_ab(urls[name], body, requests, concurrency))
    return results


def report(
    results: dict[str, list[dict[str, float]]],
    served: dict[str, int],
    requests: int,
    concurrency: int,
    workers: int,
) -> None:
    print(f"ab -n {requests} -c {concurrency} POST /api/v1/vectors/search", end="")
    print(f", Envoy --concurrency {workers}")
    medians = print_table(results, "envoy", NAME_WIDTH)
    rps = {name: med["rps"] for name, med in medians.items()}
    for a, b, what in (("xds", "static", ""), ("static", UNBALANCED, ", exact balance on/off")):
        print(f"ratio {a}/{b}{what}: {rps[a] / rps[b]:.3f} (medians), ", end="")
        print(f"{paired_ratio(results[a], results[b]):.3f} (median of the rounds' ratios)")
    total = sum(served.values())
    shares = ", ".join(f"{k}: {v} ({100 * v / total:.1f} %)" for k, v in sorted(served.items()))
    print(f"backend distribution over the three Envoys: {shares}")


def print_table(
    results: dict[str, list[dict[str, float]]], first_column: str, width: int
) -> dict[str, dict[str, float]]:
    """The medians of each name's runs as one table row, the failures summed,
    then each round's rps; returns the medians (bench/openai_route.py prints
    its table with this too)."""
    header = ("rps (median)", "mean ms", "p50 ms", "p99 ms", "failed", "non-2xx")
    widths = (14, 10, 8, 8, 8, 9)
    print(
        f"{first_column:<{width}}"
        + "".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True))
    )
    medians = {}
    for name, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        medians[name] = med
        failed = sum(r["failed"] for r in runs)
        non_2xx = sum(r["non_2xx"] for r in runs)
        print(
            f"{name:<{width}}{med['rps']:>14.1f}{med['mean_ms']:>10.2f}{med['p50_ms']:>8.0f}"
            f"{med['p99_ms']:>8.0f}{failed:>8.0f}{non_2xx:>9.0f}"
        )
    for name, runs in results.items():
        print(f"rps per round, {name + ':':<{width}} {[round(r['rps']) for r in runs]}")
    return medians


def paired_ratio(a: list[dict[str, float]], b: list[dict[str, float]]) -> float:
    """The machine's load drifts between rounds; a round's two runs are
    neighbours in time, so their ratio is less disturbed by it."""
    return statistics.median(x["rps"] / y["rps"] for x, y in zip(a, b, strict=True))


def ab_arguments(doc: str, rounds: int = 5) -> argparse.Namespace:
    """The spec's ab figures and how many rounds (`rounds` by default): the
    command line of this benchmark, bench/openai_route.py and bench/load_tls.py."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=rounds)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--workers", type=int, default=8, help="Envoy --concurrency (spec: 8)")
    return parser.parse_args()


def main() -> None:
    args = ab_arguments(__doc__ or "")
    asyncio.run(benchmark(args.rounds, args.requests, args.concurrency, args.workers))


if __name__ == "__main__":
    main()

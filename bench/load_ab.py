"""The spec's load test through the xDS-configured Envoy, against the same
Envoy with the same resources loaded statically, in one run.

    python -m bench.load_ab [--rounds 5] [--requests 1000] [--concurrency 50]

Runs `ab -n 1000 -c 50 -p search.json -T application/json .../api/v1/vectors/search`
alternately against both Envoys (same binary, same worker threads, same
sample backends) and reports medians and their ratio; these machines are
noisy, so the ratio of medians is the figure to read.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import statistics
import tempfile
from pathlib import Path

import aiohttp

from xds_server.demo import SEARCH_BODY, Stack, local_settings, running_stack
from xds_server.model.intent import SocketAddress
from xds_server.proxy.envoy_process import EnvoyProcess, start_envoy
from xds_server.proxy.processes import free_port
from xds_server.proxy.static_config import static_bootstrap

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
    stack: Stack, work: Path, concurrency: int
) -> tuple[EnvoyProcess, str]:
    """The same resources the controller serves, as a static bootstrap on other ports."""
    snapshot = stack.controller.cache.snapshot
    assert snapshot is not None
    resources = {
        t: {n: r.message for n, r in ts.resources.items()} for t, ts in snapshot.types.items()
    }
    listen = SocketAddress("127.0.0.1", free_port())
    for listener in resources["type.googleapis.com/envoy.config.listener.v3.Listener"].values():
        listener.address.socket_address.port_value = listen.port  # type: ignore[attr-defined]
    admin = SocketAddress("127.0.0.1", free_port())
    envoy = await start_envoy(
        static_bootstrap(resources, admin),
        admin=admin,
        workdir=work / "static",
        concurrency=concurrency,
    )
    return envoy, f"http://{listen}/api/v1/vectors/search"


async def benchmark(rounds: int, requests: int, concurrency: int, workers: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-ab-") as tmp:
        work = Path(tmp)
        (work / "static").mkdir()
        body = work / "search.json"
        body.write_text(json.dumps(SEARCH_BODY))
        settings = local_settings(worker_threads=workers)
        async with running_stack(settings, workdir=work) as stack:
            xds_url = f"http://{settings.intent.listen}/api/v1/vectors/search"
            static, static_url = await start_static_envoy(stack, work, workers)
            try:
                results: dict[str, list[dict[str, float]]] = {"xds": [], "static": []}
                before = await backend_counts(stack)
                for _ in range(rounds):
                    results["xds"].append(await run_ab(xds_url, body, requests, concurrency))
                    results["static"].append(await run_ab(static_url, body, requests, concurrency))
                after = await backend_counts(stack)
            finally:
                await static.stop()
    report(results, {k: after[k] - before[k] for k in after}, requests, concurrency, workers)


def report(
    results: dict[str, list[dict[str, float]]],
    served: dict[str, int],
    requests: int,
    concurrency: int,
    workers: int,
) -> None:
    print(f"ab -n {requests} -c {concurrency} POST /api/v1/vectors/search", end="")
    print(f", Envoy --concurrency {workers}")
    header = ("rps (median)", "mean ms", "p50 ms", "p99 ms", "failed", "non-2xx")
    widths = (14, 10, 8, 8, 8, 9)
    print(f"{'envoy':<8}" + "".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True)))
    medians = {}
    for name, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        medians[name] = med
        failed = sum(r["failed"] for r in runs)
        non_2xx = sum(r["non_2xx"] for r in runs)
        print(
            f"{name:<8}{med['rps']:>14.1f}{med['mean_ms']:>10.2f}{med['p50_ms']:>8.0f}"
            f"{med['p99_ms']:>8.0f}{failed:>8.0f}{non_2xx:>9.0f}"
        )
    print(f"rps per round, xds:    {[round(r['rps']) for r in results['xds']]}")
    print(f"rps per round, static: {[round(r['rps']) for r in results['static']]}")
    print(f"ratio xds/static (medians): {medians['xds']['rps'] / medians['static']['rps']:.3f}")
    total = sum(served.values())
    shares = ", ".join(f"{k}: {v} ({100 * v / total:.1f} %)" for k, v in sorted(served.items()))
    print(f"backend distribution over both Envoys: {shares}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--workers", type=int, default=8, help="Envoy --concurrency (spec: 8)")
    args = parser.parse_args()
    asyncio.run(benchmark(args.rounds, args.requests, args.concurrency, args.workers))


if __name__ == "__main__":
    main()

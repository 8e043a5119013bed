"""What routing by the body's model costs on the data path, in one run.

    python -m bench.openai_route [--rounds 5] [--requests 1000] [--concurrency 50]

The spec's `ab` load test (bench/load_ab.py runs it the same way) with one chat
body, `{"model": "phi3", "messages": [...]}`, posted in turn to the OpenAI
front door (`POST /v1/chat/completions`: Envoy buffers the body, reads `model`
into metadata, matches again; translate/openai.py) and to phi3's path route
(`POST /api/v1/models/phi3/chat/completions`: a prefix match, the body
streamed through), on the same Envoy, the same backend, the same stack. The
sample answers a non-streamed chat at once, so the difference is Envoy's.
The ratio front door / path route is the figure (target >= 0.9); each round
runs both, starting with the other one than the round before.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from pathlib import Path

import aiohttp

from bench.load_ab import ab_arguments, paired_ratio, print_table, run_ab
from xds_server.demo import local_settings, running_stack

BODY = {"model": "phi3", "messages": [{"role": "user", "content": "hello router"}]}
PATHS = {
    "front door": "/v1/chat/completions",
    "path route": "/api/v1/models/phi3/chat/completions",
}
TARGET = 0.9


async def benchmark(rounds: int, requests: int, concurrency: int, workers: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-openai-") as tmp:
        work = Path(tmp)
        body = work / "chat.json"
        body.write_text(json.dumps(BODY))
        settings = local_settings(worker_threads=workers)
        async with running_stack(settings, workdir=work):
            urls = {name: f"http://{settings.intent.listen}{path}" for name, path in PATHS.items()}
            await check_answers(urls)
            results: dict[str, list[dict[str, float]]] = {name: [] for name in urls}
            names = list(urls)
            for round_ in range(rounds):
                shift = round_ % len(names)
                for name in names[shift:] + names[:shift]:
                    results[name].append(await run_ab(urls[name], body, requests, concurrency))
    report(results, requests, concurrency, workers)


async def check_answers(urls: dict[str, str]) -> None:
    """Both URLs reach phi3 before anything is timed: a 404 is fast, not a figure."""
    async with aiohttp.ClientSession() as session:
        for name, url in urls.items():
            async with session.post(url, json=BODY) as response:
                if response.status != 200 or response.headers.get("x-backend") != "phi3":
                    raise SystemExit(f"{name} {url}: HTTP {response.status}, not phi3's answer")


def report(
    results: dict[str, list[dict[str, float]]], requests: int, concurrency: int, workers: int
) -> None:
    print(f"ab -n {requests} -c {concurrency} POST chat body (model phi3)", end="")
    print(f", Envoy --concurrency {workers}, {len(results['front door'])} rounds")
    medians = print_table(results, "route", 12)
    door, path = results["front door"], results["path route"]
    ratio = medians["front door"]["rps"] / medians["path route"]["rps"]
    paired = paired_ratio(door, path)
    verdict = "meets" if paired >= TARGET else "misses"
    print(f"ratio front door / path route: {ratio:.3f} (medians), {paired:.3f} (median of the")
    print(f"rounds' ratios); {verdict} the target {TARGET}")


def main() -> None:
    args = ab_arguments(__doc__ or "")
    asyncio.run(benchmark(args.rounds, args.requests, args.concurrency, args.workers))


if __name__ == "__main__":
    main()

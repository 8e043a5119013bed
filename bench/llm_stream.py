"""LLM streams through the router: time to first token and gaps between chunks.

    python -m bench.llm_stream [--streams 40] [--tokens 50] [--token-interval-ms 20]

Each stream is one `stream: true` chat completion of the sample phi3 backend,
`--tokens` server-sent events at the backend's pace. Streams alternate between
the router (the real Envoy 1.40 configured by the controller) and the backend
directly (the baseline, same run, same backend), one at a time. Time to first
token: request sent -> the first chunk carrying content. Gaps: between
successive token chunks at the client; a proxy that buffers shows as a long
first token and near-zero gaps. Target: router's median first token within
1.1 x the direct one + 2 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bench.common import summary_ms
from xds_server.demo import local_settings, running_stack

MODEL = "phi3"
PATH = f"/api/v1/models/{MODEL}/chat/completions"


@dataclass
class Samples:
    first_token_s: list[float] = field(default_factory=list)
    gaps_s: list[float] = field(default_factory=list)


async def one_stream(
    session: aiohttp.ClientSession, url: str, tokens: int, pace_ms: float, into: Samples
) -> None:
    body = {
        "messages": [{"role": "user", "content": "bench"}],
        "stream": True,
        "max_tokens": tokens,
        "ignore_eos": True,
    }
    arrivals: list[float] = []
    started = time.perf_counter()
    headers = {"x-sample-token-interval-ms": str(pace_ms)}  # the sample's test-only pace
    async with session.post(url, json=body, headers=headers) as response:
        if response.status != 200:
            raise SystemExit(f"{url}: HTTP {response.status}")
        async for line in response.content:
            if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
                continue
            choices = json.loads(line[6:])["choices"]
            if choices and choices[0]["delta"].get("content"):
                arrivals.append(time.perf_counter())
    if len(arrivals) != tokens:
        raise SystemExit(f"{url}: {len(arrivals)} tokens, expected {tokens}")
    into.first_token_s.append(arrivals[0] - started)
    into.gaps_s.extend(b - a for a, b in itertools.pairwise(arrivals))


async def measure(streams: int, tokens: int, pace_ms: float) -> dict[str, Samples]:
    settings = local_settings(worker_threads=2)
    results = {"router (Envoy)": Samples(), "direct (baseline)": Samples()}
    with tempfile.TemporaryDirectory(prefix="bench-stream-") as work:
        async with (
            running_stack(settings, workdir=Path(work)) as stack,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session,
        ):
            intent = stack.controller.store.intent
            backend = next(b for b in intent.backends() if b.name == MODEL)
            urls = {
                "router (Envoy)": f"http://{intent.listen}{PATH}",
                "direct (baseline)": f"http://{backend.address}:{backend.port}{PATH}",
            }
            for url in urls.values():  # warm both connections
                await one_stream(session, url, 2, pace_ms, Samples())
            for i in range(streams * 2):
                name = list(urls)[i % 2]
                await one_stream(session, urls[name], tokens, pace_ms, results[name])
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=40, help="streams per path")
    parser.add_argument("--tokens", type=int, default=50, help="tokens per stream")
    parser.add_argument("--token-interval-ms", type=float, default=20.0, help="backend pace")
    args = parser.parse_args()
    results = asyncio.run(measure(args.streams, args.tokens, args.token_interval_ms))
    print(
        f"LLM streams, one real Envoy 1.40, {args.streams} streams of {args.tokens} tokens "
        f"per path, {args.token_interval_ms:g} ms per token"
    )
    for name, samples in results.items():
        print(f"  {name:<18} first token {summary_ms(samples.first_token_s)}")
        print(f"  {'':<18} chunk gaps  {summary_ms(samples.gaps_s)}")
    router = statistics.median(results["router (Envoy)"].first_token_s)
    direct = statistics.median(results["direct (baseline)"].first_token_s)
    limit = 1.1 * direct + 0.002
    verdict = "met" if router <= limit else "MISSED"
    print(
        f"  target: router first token <= 1.1 x direct + 2 ms = {limit * 1e3:.2f} ms; "
        f"router {router * 1e3:.2f} ms: {verdict}"
    )


if __name__ == "__main__":
    main()

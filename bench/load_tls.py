"""The spec's load test over HTTPS at the edge: the xDS-configured Envoy (its
certificate served by SDS) against a static Envoy with the same TLS config, in
one run.

    python -m bench.load_tls [--rounds 3] [--requests 1000] [--concurrency 50]

Runs `ab -n 1000 -c 50 -p search.json -T application/json https://.../api/v1/vectors/search`
in turn against two Envoys (same binary, same worker threads, same sample
backends, same certificate, made here by `openssl` as `xds-server demo --tls`
makes it): the xDS-configured one and a static one whose bootstrap holds the
very same resources, its listener naming the same secrets as static secrets
(proxy/static_config.py). ab sends no keep-alive, so each request is a new TLS
handshake, as in the spec's plain-HTTP test (bench/load_ab.py). It reports
medians and their ratio, and the median of each round's ratio; short by
default (3 rounds), `--rounds` for more.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import tempfile
from pathlib import Path

from bench.load_ab import ab_arguments, paired_ratio, print_table, run_rounds, start_static_envoy
from xds_server.demo import SEARCH_BODY, demo_certificates, local_settings, running_stack

SEARCH_PATH = "/api/v1/vectors/search"
DEFAULT_ROUNDS = 3


async def benchmark(rounds: int, requests: int, concurrency: int, workers: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-tls-") as tmp:
        work = Path(tmp)
        body = work / "search.json"
        body.write_text(json.dumps(SEARCH_BODY))
        tls, _ca = demo_certificates(work)
        settings = dataclasses.replace(local_settings(worker_threads=workers), tls=tls)
        async with (
            running_stack(settings, workdir=work) as stack,
            contextlib.AsyncExitStack() as envoys,
        ):
            static, static_url = await start_static_envoy(stack, work / "static", workers)
            envoys.push_async_callback(static.stop)
            urls = {
                "xds-https": f"https://{settings.intent.listen}{SEARCH_PATH}",
                "static-https": static_url.replace("http://", "https://", 1),
            }
            results = await run_rounds(urls, body, rounds, requests, concurrency)
    print(f"ab -n {requests} -c {concurrency} POST {SEARCH_PATH} over HTTPS", end="")
    print(f" (a TLS handshake per request), Envoy --concurrency {workers}")
    medians = print_table(results, "envoy", len("static-https") + 1)
    ratio = medians["xds-https"]["rps"] / medians["static-https"]["rps"]
    print(f"ratio xds-https/static-https: {ratio:.3f} (medians), ", end="")
    paired = paired_ratio(results["xds-https"], results["static-https"])
    print(f"{paired:.3f} (median of the rounds' ratios)")


def main() -> None:
    args = ab_arguments(__doc__ or "", rounds=DEFAULT_ROUNDS)
    asyncio.run(benchmark(args.rounds, args.requests, args.concurrency, args.workers))


if __name__ == "__main__":
    main()

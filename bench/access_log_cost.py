"""What the access log costs: the spec's load test against three Envoys that
differ only in `router.access_log` (stdout, a file, off), in one run.

    python -m bench.access_log_cost [--rounds 5] [--requests 1000] [--concurrency 50]

Runs `ab -n 1000 -c 50 -p search.json -T application/json .../api/v1/vectors/search`
in turn against three static Envoys (same binary, same worker threads, same
sample backends) loaded with the resources the controller serves, each
listener's access log set by the translator (translate/access_log.py) to
stdout, a file in the work directory, or none. "stdout" is Envoy's stdout as
the demo and the tests take it: a pipe that a Python reader copies to a file
(proxy/processes.py), on the same cores; a container runtime or the journal
reads it in another process too. It reports medians, their ratios to `off`,
the median of each round's ratio, and the lines each log got (one per request).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import tempfile
from pathlib import Path

from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from bench.load_ab import ab_arguments, copy, paired_ratio, print_table, run_rounds
from xds_server.demo import SEARCH_BODY, Stack, local_settings, running_stack
from xds_server.model.access_log import AccessLog, AccessLogSink
from xds_server.model.intent import SocketAddress
from xds_server.proxy.envoy_process import EnvoyProcess, start_envoy
from xds_server.proxy.processes import free_port
from xds_server.proxy.static_config import static_bootstrap
from xds_server.resources import LISTENER
from xds_server.translate.access_log import access_logs

FLUSH_WAIT_S = 2.0  # Envoy flushes its access log every second (proxy/bootstrap.py)


def with_access_log(listener: listener_pb2.Listener, log: AccessLog) -> None:
    """Set the HCM's access log of every filter chain, as the translator builds it."""
    for chain in listener.filter_chains:
        for network_filter in chain.filters:
            hcm = hcm_pb2.HttpConnectionManager()
            if network_filter.typed_config.Unpack(hcm):
                del hcm.access_log[:]
                hcm.access_log.extend(access_logs(log))
                network_filter.typed_config.Pack(hcm)


async def start_logging_envoy(
    stack: Stack, workdir: Path, concurrency: int, log: AccessLog
) -> tuple[EnvoyProcess, str]:
    snapshot = stack.controller.cache.snapshot
    assert snapshot is not None
    resources = {
        t: {n: copy(r.message) for n, r in ts.resources.items()} for t, ts in snapshot.types.items()
    }
    listen = SocketAddress("127.0.0.1", free_port())
    for listener in resources[LISTENER].values():
        assert isinstance(listener, listener_pb2.Listener)
        listener.address.socket_address.port_value = listen.port
        with_access_log(listener, log)
    admin = SocketAddress("127.0.0.1", free_port())
    envoy = await start_envoy(
        static_bootstrap(resources, admin), admin=admin, workdir=workdir, concurrency=concurrency
    )
    return envoy, f"http://{listen}/api/v1/vectors/search"


def json_lines(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(1 for line in path.read_text(errors="replace").splitlines() if line.startswith("{"))


async def benchmark(rounds: int, requests: int, concurrency: int, workers: int) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-access-log-") as tmp:
        work = Path(tmp)
        body = work / "search.json"
        body.write_text(json.dumps(SEARCH_BODY))
        # The controller's own Envoy takes no load here; off keeps its log out of the way.
        off = AccessLog(AccessLogSink.OFF)
        base = local_settings(worker_threads=2)
        settings = dataclasses.replace(
            base, intent=dataclasses.replace(base.intent, access_log=off)
        )
        logs = {
            "stdout": AccessLog(AccessLogSink.STDOUT),
            "file": AccessLog(AccessLogSink.FILE, str(work / "file" / "access.log")),
            "off": off,
        }
        written = {
            "stdout": work / "stdout" / "envoy.out",
            "file": work / "file" / "access.log",
            "off": work / "off" / "envoy.out",
        }
        async with (
            running_stack(settings, workdir=work) as stack,
            contextlib.AsyncExitStack() as envoys,
        ):
            urls = {}
            for name, log in logs.items():
                (work / name).mkdir()
                envoy, urls[name] = await start_logging_envoy(stack, work / name, workers, log)
                envoys.push_async_callback(envoy.stop)
            results = await run_rounds(urls, body, rounds, requests, concurrency)
            await asyncio.sleep(FLUSH_WAIT_S)
            lines = {name: json_lines(path) for name, path in written.items()}
    print(f"ab -n {requests} -c {concurrency} POST /api/v1/vectors/search", end="")
    print(f", Envoy --concurrency {workers}, access log stdout / file / off")
    medians = print_table(results, "access log", 11)
    for name in ("stdout", "file"):
        ratio = medians[name]["rps"] / medians["off"]["rps"]
        print(f"ratio {name}/off: {ratio:.3f} (medians), ", end="")
        print(f"{paired_ratio(results[name], results['off']):.3f} (median of the rounds' ratios)")
    print(f"lines logged (requests sent: {rounds * requests} each): {lines}")


def main() -> None:
    args = ab_arguments(__doc__ or "")
    asyncio.run(benchmark(args.rounds, args.requests, args.concurrency, args.workers))


if __name__ == "__main__":
    main()

"""Many Envoy-like clients (bench/envoy_like.py) in one process, and the handle the
benchmark drives that process with.

    python -m bench.envoy_fleet --mode ads|static|hds --clients N --xds HOST:PORT ...

ads: N ADS streams (bench/clients.py), no probes. static: N checkers of every
`--targets` endpoint (Envoy's active health checks in CDS), no xDS. hds: N ADS
streams, each with an HDS client of the same node id.

The process prints `READY` once every client is started, `SKIPPED <reason>` when
an HDS stream ends (UNIMPLEMENTED: the controller does not serve HDS), and
`VERDICT <node> <host:port> healthy|unhealthy <time.monotonic()>` on every verdict
change of a client's own checker; it stops when its stdin closes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from bench.clients import BenchClient, channels_for
from bench.envoy_like import ActiveCheck, CheckConfig, Endpoint, HdsClient, HdsUnimplemented
from xds_server.resources import CLUSTER, ENDPOINT, LISTENER, ROUTE, ROUTE_CONFIG_NAME

FIRST_SPECIFIER_S = 10.0

# ---- the process ------------------------------------------------------------------


def print_verdict(node: str, endpoint: Endpoint, healthy: bool) -> None:
    state = "healthy" if healthy else "unhealthy"
    print(f"VERDICT {node} {endpoint[0]}:{endpoint[1]} {state} {time.monotonic():.6f}", flush=True)


def endpoint_of(text: str) -> Endpoint:
    host, _, port = text.rpartition(":")
    return host, int(port)


async def run_fleet(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    nodes = [f"envoy-{i}" for i in range(args.clients)]
    config = CheckConfig(
        args.path, args.interval, args.timeout, args.healthy_threshold, args.unhealthy_threshold
    )
    async with contextlib.AsyncExitStack() as stack:
        channels = channels_for(args.xds, args.clients) if args.mode != "static" else []
        for channel in channels:
            stack.push_async_callback(channel.close)
        subscriptions = {
            CLUSTER: [],
            ENDPOINT: args.services.split(","),
            LISTENER: [],
            ROUTE: [ROUTE_CONFIG_NAME],
        }
        tasks: list[asyncio.Task[None]] = []
        streams: list[HdsClient] = []
        for i, node in enumerate(nodes):
            if args.mode == "static":
                for endpoint in map(endpoint_of, args.targets.split(",")):
                    check = ActiveCheck(node, endpoint, config, print_verdict, cluster="bench")
                    check.start(rng.uniform(0, config.interval_s))
                    stack.push_async_callback(check.stop)
                continue
            ads = BenchClient(channels[i % len(channels)], node, subscriptions)
            stack.push_async_callback(ads.close)
            if args.mode == "hds":
                streams.append(HdsClient(channels[i % len(channels)], node, print_verdict))
                tasks.append(asyncio.create_task(streams[-1].run()))
        stdin = asyncio.ensure_future(
            asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
        )
        if failed := await first_answers(streams, tasks):
            print(f"SKIPPED {failed}", flush=True)
        else:
            print("READY", flush=True)
        await asyncio.wait([stdin, *tasks], return_when=asyncio.FIRST_COMPLETED)
        await stdin
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def first_answers(
    streams: Sequence[HdsClient], tasks: Sequence[asyncio.Task[None]]
) -> str | None:
    """Until every HDS stream got its first specifier or one of them ended (then why:
    UNIMPLEMENTED when the controller does not serve HDS). A server that assigns a
    client nothing may send it nothing: after FIRST_SPECIFIER_S the fleet is ready."""
    deadline = time.monotonic() + FIRST_SPECIFIER_S
    while any(s.specifiers == 0 for s in streams) and time.monotonic() < deadline:
        ended = [t for t in tasks if t.done()]
        if ended:
            error = None if ended[0].cancelled() else ended[0].exception()
            if isinstance(error, HdsUnimplemented):
                return "UNIMPLEMENTED"
            return f"the HDS stream ended: {error!r}"
        await asyncio.sleep(0.02)
    return None


def parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.envoy_fleet", description=__doc__)
    parser.add_argument("--mode", choices=("ads", "static", "hds"), required=True)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--xds", default="", help="the controller's xDS address (ads, hds)")
    parser.add_argument("--services", default="", help="EDS names the ADS streams ask for")
    parser.add_argument("--targets", default="", help="host:port,... to probe (static)")
    parser.add_argument("--path", default="/health")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--timeout", type=float, default=0.5)
    parser.add_argument("--healthy-threshold", type=int, default=2)
    parser.add_argument("--unhealthy-threshold", type=int, default=3)
    parser.add_argument("--seed", type=int, default=None)
    return parser.parse_args(argv)


# ---- the handle ---------------------------------------------------------------


@dataclass
class Fleet:
    """`python -m bench.envoy_fleet` with N clients; its verdict lines, as they come."""

    process: asyncio.subprocess.Process
    verdicts: dict[tuple[str, int], list[tuple[bool, float]]] = field(default_factory=dict)
    ready: asyncio.Future[str] = field(default_factory=asyncio.Future)
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    reader: asyncio.Task[None] | None = None

    async def read(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            words = raw.decode().split()
            if words[:1] == ["VERDICT"]:
                node, endpoint, state, at = words[1:5]
                key = (node, int(endpoint.rpartition(":")[2]))
                self.verdicts.setdefault(key, []).append((state == "healthy", float(at)))
                self.changed.set()
            elif words[:1] in (["READY"], ["SKIPPED"]) and not self.ready.done():
                self.ready.set_result(" ".join(words))
        if not self.ready.done():
            self.ready.set_result("SKIPPED the fleet process exited")

    def healthy(self, port: int) -> int:
        """How many clients' latest verdict on `port` is healthy."""
        return sum(
            1 for (_, p), seen in self.verdicts.items() if p == port and seen and seen[-1][0]
        )

    def unhealthy_since(self, port: int, since: float) -> list[float]:
        found = []
        for (_, p), seen in self.verdicts.items():
            times = [at for healthy, at in seen if p == port and not healthy and at >= since]
            found += times[:1]
        return found

    async def until(self, done: Callable[[], bool], timeout: float) -> bool:  # noqa: ASYNC109
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while not done():
                    self.changed.clear()
                    await self.changed.wait()
                return True
        return False

    async def stop(self) -> None:
        """Close its stdin (it closes its streams and exits), bounded; then by PID."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 15)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
        if self.reader is not None:  # ends with the process's stdout; awaited, not left behind
            await self.reader


async def start_fleet(
    mode: str,
    clients: int,
    config: CheckConfig,
    *,
    xds: str = "",
    services: Sequence[str] = (),
    targets: Sequence[Endpoint] = (),
) -> Fleet:
    """The fleet process, started; stop it with `Fleet.stop` (by its stdin, then PID)."""
    argv = [sys.executable, "-m", "bench.envoy_fleet", "--mode", mode, "--clients", str(clients)]
    argv += ["--xds", xds, "--services", ",".join(services)]
    argv += ["--targets", ",".join(f"{host}:{port}" for host, port in targets)]
    argv += ["--path", config.path, "--interval", str(config.interval_s)]
    argv += ["--timeout", str(config.timeout_s)]
    argv += ["--healthy-threshold", str(config.healthy_threshold)]
    argv += ["--unhealthy-threshold", str(config.unhealthy_threshold)]
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    fleet = Fleet(process)
    fleet.reader = asyncio.create_task(fleet.read())
    return fleet


if __name__ == "__main__":
    asyncio.run(run_fleet(parse()))

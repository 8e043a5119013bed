"""A private Prometheus server for a test: Debian's `prometheus` on a free
loopback port, a generated scrape config, storage in a tmp dir, stopped by PID."""

from __future__ import annotations

import asyncio
import math
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from xds_server.proxy.processes import ChildProcess, free_port, start_process

START_TIMEOUT_S = 20.0
SCRAPE_INTERVAL = "1s"


def prometheus_binary() -> str:
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed (scripts/ensure-system-tools installs it)"
    return binary


class PrometheusServer:
    """One prometheus process scraping `targets` (job -> (metrics_path, host:port))."""

    def __init__(self, workdir: Path, targets: Mapping[str, tuple[str, str]]) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.targets = dict(targets)
        self.child: ChildProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> dict[str, Any]:
        return {
            "global": {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL},
            "scrape_configs": [
                {
                    "job_name": job,
                    "metrics_path": path,
                    "static_configs": [{"targets": [address]}],
                }
                for job, (path, address) in self.targets.items()
            ],
        }

    async def start(self) -> None:
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config()))
        argv = [
            prometheus_binary(),
            f"--config.file={config}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        self.child = await start_process(
            argv,
            ready_line_prefix=None,
            timeout_s=START_TIMEOUT_S,
            log_path=self.workdir / "prometheus.log",
        )
        await self._wait_ready()

    async def stop(self) -> None:
        if self.child is not None:
            await self.child.stop(grace_s=5.0)
            self.child = None

    async def query(self, session: aiohttp.ClientSession, promql: str) -> list[dict[str, Any]]:
        """The instant vector of `promql` now; raises on a query error."""
        async with session.get(f"{self.url}/api/v1/query", params={"query": promql}) as response:
            body = await response.json()
        assert body["status"] == "success", (promql, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1)) as session:
            while time.monotonic() < deadline:
                assert self.child is not None and self.child.returncode is None, (
                    self.child.output_tail() if self.child else "not started"
                )
                try:
                    async with session.get(f"{self.url}/-/ready") as response:
                        if response.status == 200:
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"prometheus not ready within {START_TIMEOUT_S} s")


def has_data(result: list[dict[str, Any]]) -> bool:
    """At least one series with a finite value (NaN from 0/0 is no data)."""
    return any(math.isfinite(float(series["value"][1])) for series in result)

"""`xds-server run` under systemd's notification protocol: a real process, a real socket.

The test plays systemd: it binds the `$NOTIFY_SOCKET` datagram socket, starts
`xds-server run` as a subprocess with it (and `$WATCHDOG_USEC`), and reads what
arrives: READY=1 once the first snapshot is published (the admin API's /readyz
says so at that moment, and the xDS port accepts), WATCHDOG=1 at half the
watchdog interval, RELOADING=1 then READY=1 around a SIGHUP, STOPPING=1 on SIGTERM.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from xds_server.proxy.processes import free_port

ROOT = Path(__file__).resolve().parent.parent
WATCHDOG_USEC = 200_000  # pings every 100 ms


class Systemd:
    """The notify socket's end: datagrams as they come, each with its arrival time."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(os.fspath(path))
        self.sock.setblocking(False)

    async def next(self, timeout_s: float = 30.0) -> tuple[float, dict[str, str]]:
        async with asyncio.timeout(timeout_s):
            data = await asyncio.get_running_loop().sock_recv(self.sock, 4096)
        fields = dict(line.split("=", 1) for line in data.decode().splitlines())
        return time.monotonic(), fields

    async def until(self, key: str, timeout_s: float = 30.0) -> tuple[dict[str, str], int]:
        """The first message with `key`, and how many WATCHDOG pings came before it."""
        pings = 0
        while True:
            _, fields = await self.next(timeout_s)
            if key in fields:
                return fields, pings
            pings += "WATCHDOG" in fields


@pytest.fixture
async def controller(
    tmp_path: Path,
) -> AsyncIterator[tuple[Systemd, asyncio.subprocess.Process, str]]:
    systemd = Systemd(tmp_path / "notify")
    admin = f"127.0.0.1:{free_port()}"
    config = tmp_path / "router_config.yaml"
    config.write_text((ROOT / "config/router_config.yaml").read_text())
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")},
        "PYTHONPATH": os.fspath(ROOT),
        "NOTIFY_SOCKET": os.fspath(systemd.path),
        "WATCHDOG_USEC": str(WATCHDOG_USEC),
        "ROUTER_XDS_ADDRESS": f"127.0.0.1:{free_port()}",
        "ROUTER_ADMIN_ADDRESS": admin,
        "ROUTER_ENVOY_ADMIN_ADDRESS": f"127.0.0.1:{free_port()}",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "xds_server.cli", "run", "--config", str(config),
        env=env, cwd=tmp_path, stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        yield systemd, process, admin
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        systemd.sock.close()


async def readyz(admin: str) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as http, http.get(f"http://{admin}/readyz") as answer:
        return answer.status, await answer.json()


async def test_ready_after_the_first_snapshot_then_watchdog_reload_and_stop(
    controller: tuple[Systemd, asyncio.subprocess.Process, str],
) -> None:
    systemd, process, admin = controller
    _, ready = await systemd.next()
    # READY=1 is the first thing said, and by then the snapshot is out and the port open.
    assert ready["READY"] == "1", ready
    status, body = await readyz(admin)
    assert status == 200 and body["ready"] is True and int(str(body["generation"])) >= 1
    xds = ready["STATUS"].split()[2].rstrip(",")  # "xDS on HOST:PORT, admin API on ..."
    host, port = xds.rsplit(":", 1)
    _, writer = await asyncio.open_connection(host, int(port))
    writer.close()

    arrivals = []
    while len(arrivals) < 6:
        at, fields = await systemd.next(timeout_s=5)
        assert fields == {"WATCHDOG": "1"}
        arrivals.append(at)
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    print(f"watchdog gaps (expected {WATCHDOG_USEC / 2e6:.3f} s): {[round(g, 3) for g in gaps]}")
    assert 0.05 < sum(gaps) / len(gaps) < 0.3

    process.send_signal(signal.SIGHUP)
    reloading, _ = await systemd.until("RELOADING")
    assert "MONOTONIC_USEC" in reloading
    reloaded, _ = await systemd.until("READY")
    assert reloaded["STATUS"] == "config reloaded"

    process.send_signal(signal.SIGTERM)
    await systemd.until("STOPPING")
    async with asyncio.timeout(15):
        assert await process.wait() == 0

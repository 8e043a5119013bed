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
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.systemd_support import Run, start_run, stop_run

WATCHDOG_USEC = 200_000  # pings every 100 ms


@pytest.fixture
async def controller(tmp_path: Path) -> AsyncIterator[Run]:
    run = await start_run(tmp_path, watchdog_usec=WATCHDOG_USEC)
    try:
        yield run
    finally:
        await stop_run(run)


def break_queue_size(config: Path) -> None:
    config.write_text(config.read_text().replace("queue_size: ", "queue_size: -"))


async def readyz(admin: str) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as http, http.get(f"http://{admin}/readyz") as answer:
        return answer.status, await answer.json()


async def test_ready_after_the_first_snapshot_then_watchdog_reload_and_stop(
    controller: Run,
) -> None:
    systemd, process, admin = controller.notify, controller.process, controller.admin
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
    reloading = await systemd.until("RELOADING")
    assert "MONOTONIC_USEC" in reloading
    reloaded = await systemd.until("READY")
    assert reloaded["STATUS"] == "config reloaded"
    break_queue_size(controller.config)
    process.send_signal(signal.SIGHUP)
    refused = await systemd.until("READY")
    assert refused["STATUS"].startswith("config reload refused"), refused
    assert (await readyz(admin))[0] == 200

    process.send_signal(signal.SIGTERM)
    await systemd.until("STOPPING")
    async with asyncio.timeout(15):
        assert await process.wait() == 0


async def test_a_reload_keeps_what_the_env_file_set(tmp_path: Path) -> None:
    """The file is read at start; a SIGHUP reload of the config file applies the
    same ROUTER_* values, not the file's own strategy."""
    run = await start_run(tmp_path, watchdog_usec=0, dot_env="ROUTER_STRATEGY=least_connections\n")
    try:
        await run.notify.until("READY")
        assert await default_strategy(run.admin) == "least_connections"
        run.process.send_signal(signal.SIGHUP)
        assert (await run.notify.until("READY"))["STATUS"] == "config reloaded"
        assert await default_strategy(run.admin) == "least_connections"
    finally:
        await stop_run(run)


async def default_strategy(admin: str) -> str:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://{admin}/api/v1/router/strategy") as answer,
    ):
        strategy: str = (await answer.json())["default_strategy"]
        return strategy

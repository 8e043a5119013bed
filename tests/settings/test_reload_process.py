"""The real `xds-server run` outlives config bombs: its file is replaced by a depth
bomb, then an alias bomb; it stays up, answers /healthz, logs the refusal, keeps
the last good config, and stops promptly on SIGTERM.

The process runs under a 2 GiB address-space cap (prlimit), so a regression that
lets a bomb expand fails this test instead of eating the machine's memory."""

from __future__ import annotations

import asyncio
import shutil
import signal
from pathlib import Path

import aiohttp
import pytest

from tests.settings.test_reload import replace_file
from tests.settings.test_yaml_limits import alias_bomb, depth_bomb
from tests.support import eventually
from tests.systemd_support import start_run, stop_run

MEMORY_CAP = 2 << 30
REFUSED = "config reload refused"


def prlimit() -> list[str]:
    found = shutil.which("prlimit")
    if found is None:
        pytest.fail("prlimit (util-linux) is missing")
    return [found, f"--as={MEMORY_CAP}", "--"]


async def get(admin: str, path: str) -> tuple[int, object]:
    async with aiohttp.ClientSession() as http, http.get(f"http://{admin}{path}") as answer:
        return answer.status, await answer.json()


async def test_the_controller_outlives_config_bombs_and_stops_on_sigterm(tmp_path: Path) -> None:
    log_path = tmp_path / "stderr.log"
    with log_path.open("wb") as log:
        run = await start_run(tmp_path, watchdog_usec=0, wrapper=prlimit(), stderr=log)
    try:
        await run.notify.until("READY")
        status, services = await get(run.admin, "/api/v1/router/services")
        assert status == 200 and services
        bombs = [("nested deeper than", depth_bomb(500)), ("aliases", alias_bomb())]
        for refusals, (reason, bomb) in enumerate(bombs, start=1):
            replace_file(run.config, bomb)

            async def refused(count: int = refusals) -> bool:
                assert run.process.returncode is None, log_path.read_text()
                return log_path.read_text().count(REFUSED) == count

            await eventually(refused, timeout_s=30)
            assert reason in log_path.read_text().rsplit(REFUSED, 1)[1]
            status, health = await get(run.admin, "/healthz")
            assert status == 200
            assert {k: health[k] for k in ("status", "store", "store_kind")} == {
                "status": "ok",
                "store": "ok",
                "store_kind": "memory",
            }
            assert await get(run.admin, "/api/v1/router/services") == (200, services)
        run.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(15):
            assert await run.process.wait() == 0
    finally:
        await stop_run(run)

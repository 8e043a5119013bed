"""Playing systemd: the units' directives, `systemd-analyze`, the notify socket, and
`xds-server run` started with it.

Shared by tests/test_service.py (the notifications), tests/deploy/test_systemd.py
(the units) and tests/deploy/test_hardening.py (the run under strace)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from xds_server.proxy.processes import free_port

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "deploy/systemd"


class NotifySocket:
    """The `$NOTIFY_SOCKET` end: datagrams as they come, each with its arrival time."""

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

    async def until(self, key: str, timeout_s: float = 30.0) -> dict[str, str]:
        """The first message with `key` (watchdog pings before it are skipped)."""
        while True:
            _, fields = await self.next(timeout_s)
            if key in fields:
                return fields

    def close(self) -> None:
        self.sock.close()


@dataclass
class Run:
    process: asyncio.subprocess.Process
    notify: NotifySocket
    admin: str  # host:port of the admin API
    config: Path  # the config file it runs with


async def start_run(
    tmp_path: Path,
    *,
    watchdog_usec: int,
    wrapper: Sequence[str] = (),
    dot_env: str = "",
    stderr: IO[bytes] | None = None,
) -> Run:
    """`xds-server run --config <a copy of config/router_config.yaml>` on free ports,
    told to notify, `wrapper` (e.g. strace) in front of the interpreter, `dot_env`
    as `.env` in its working directory, its log to `stderr` (default: the test's)."""
    notify = NotifySocket(tmp_path / "notify")
    if dot_env:
        (tmp_path / ".env").write_text(dot_env)
    admin = f"127.0.0.1:{free_port()}"
    config = tmp_path / "router_config.yaml"
    config.write_text((ROOT / "config/router_config.yaml").read_text())
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")},
        "PYTHONPATH": os.fspath(ROOT),
        "NOTIFY_SOCKET": os.fspath(notify.path),
        "WATCHDOG_USEC": str(watchdog_usec),
        "ROUTER_XDS_ADDRESS": f"127.0.0.1:{free_port()}",
        "ROUTER_ADMIN_ADDRESS": admin,
        "ROUTER_ENVOY_ADMIN_ADDRESS": f"127.0.0.1:{free_port()}",
    }
    # Run in tmp_path: a .env there is the test's own, and no other is read.
    argv = [*wrapper, sys.executable, "-m", "xds_server.cli", "run", "--config", str(config)]
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, cwd=tmp_path, stdout=asyncio.subprocess.DEVNULL, stderr=stderr
    )
    return Run(process, notify, admin, config)


async def stop_run(run: Run) -> None:
    if run.process.returncode is None:
        run.process.kill()
        await run.process.wait()
    run.notify.close()


def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.fail("systemd-analyze is missing: scripts/ensure-system-tools installs it")
    return found


def directives(unit: str) -> dict[str, list[str]]:
    """Key -> every value, continuation lines joined (systemd.syntax)."""
    text = re.sub(r"\\\n\s*", " ", (UNITS / unit).read_text())
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            found.setdefault(key.strip(), []).append(value.strip())
    return found

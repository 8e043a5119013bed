"""A private redis-server for a test: a free loopback port, no persistence, a tmp dir,
stopped by its PID. Never the machine's shared Redis on 6379."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import RedisError

from xds_server.proxy.processes import ChildProcess, free_port, start_process

REDIS_BIN = "/usr/bin/redis-server"
START_TIMEOUT_S = 10.0


def redis_binary() -> str:
    binary = REDIS_BIN if Path(REDIS_BIN).exists() else shutil.which("redis-server")
    assert binary, "redis-server is not installed"
    return binary


class RedisServer:
    """One redis-server process; `restart()` brings it back (empty) on the same port."""

    def __init__(self, workdir: Path, port: int | None = None) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.child: ChildProcess | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        binary = redis_binary()
        argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        argv += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        log = self.workdir / "redis.log"
        self.child = await start_process(
            argv, ready_line_prefix=None, timeout_s=START_TIMEOUT_S, log_path=log
        )
        await self._wait_answering()

    async def stop(self) -> None:
        """SIGTERM by PID (it exits at once: nothing to save), SIGKILL after the grace."""
        if self.child is not None:
            await self.child.stop(grace_s=3.0)
            self.child = None

    def pause(self) -> None:
        """SIGSTOP by PID: connections stay open and nothing answers (a hung Redis).
        `resume()` must follow, or `stop()` waits out its grace before SIGKILL."""
        assert self.child is not None and self.child.returncode is None
        os.kill(self.child.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.child is not None and self.child.returncode is None
        os.kill(self.child.pid, signal.SIGCONT)

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    def client(self) -> Redis:
        return Redis.from_url(self.url, decode_responses=True)

    async def _wait_answering(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        client = self.client()
        try:
            while True:
                try:
                    if await client.ping():
                        return
                except (RedisError, OSError):
                    if time.monotonic() > deadline:
                        raise
                assert self.child is not None and self.child.returncode is None, (
                    self.child.output_tail() if self.child else "redis-server not started"
                )
                await asyncio.sleep(0.02)
        finally:
            await client.aclose()

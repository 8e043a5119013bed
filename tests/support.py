"""Shared test helpers: HTTP through Envoy, and bounded waits that say what hung.

Builders (settings, intents, controllers) are in tests/factories.py."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import aiohttp

from xds_server.demo import SEARCH_BODY
from xds_server.model.intent import SocketAddress
from xds_server.proxy.envoy_process import EnvoyProcess, start_envoy


async def send_many(
    session: aiohttp.ClientSession,
    url: str,
    count: int,
    *,
    concurrency: int = 8,
    json: object = SEARCH_BODY,
) -> collections.Counter[str]:
    """POST `count` requests; count answers by x-backend (or by status when not 200)."""
    seen: collections.Counter[str] = collections.Counter()
    queue = iter(range(count))

    async def worker() -> None:
        for _ in queue:
            async with session.post(url, json=json) as response:
                await response.read()
                ok = response.status == 200
                seen[response.headers.get("x-backend", "?") if ok else str(response.status)] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return seen


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0, interval_s: float = 0.05
) -> float:
    """Poll `check` until true; returns the seconds it took. Fails at the deadline."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > timeout_s:
            raise AssertionError(f"condition not met within {timeout_s} s")
        await asyncio.sleep(interval_s)
    return time.monotonic() - start


async def finished(task: asyncio.Task[None], timeout_s: float) -> None:
    """Wait for `task` to end by itself. A task that does not end in time fails the
    test with the stack of every task still running, rather than hanging: on 3.11,
    wait_for waits without bound for a task that ignores its cancellation."""
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if done:
        task.result()
        return
    stacks = []
    for other in asyncio.all_tasks():
        if not other.done() and other is not asyncio.current_task():
            stacks.append("\n".join([f"{other.get_name()}:", *awaiting(other.get_coro())]))
    raise AssertionError(
        f"{task.get_name()} still running after {timeout_s} s:\n" + "\n".join(stacks)
    )


def awaiting(coro: object) -> list[str]:
    """Where a suspended coroutine waits, outermost first: its frame, then the frame of
    what it awaits, down the chain (Task.get_stack shows only the outermost)."""
    lines = []
    for _ in range(50):  # bounded: chains are short
        frame = getattr(coro, "cr_frame", None) or getattr(coro, "ag_frame", None)
        if frame is None:
            lines.append(f"  {coro!r}"[:200])
            break
        lines.append(f"  {frame.f_code.co_filename}:{frame.f_lineno} {frame.f_code.co_name}")
        coro = getattr(coro, "cr_await", None) or getattr(coro, "ag_await", None)
        if coro is None:
            break
    return lines


@contextlib.asynccontextmanager
async def envoy_running(
    bootstrap: Mapping[str, Any],
    admin: SocketAddress,
    workdir: Path,
    *,
    concurrency: int = 1,
    wait_ready: bool = True,
) -> AsyncIterator[EnvoyProcess]:
    """A real Envoy on `bootstrap` for the block, stopped by PID at its end."""
    envoy = await start_envoy(
        bootstrap, admin=admin, workdir=workdir, concurrency=concurrency, wait_ready=wait_ready
    )
    try:
        yield envoy
    finally:
        await envoy.stop()

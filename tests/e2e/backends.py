"""The sample backends of a running stack, seen from a test: where each one is,
its control endpoints (xds_server/samples/backend.py), what it counted and how
to fault it."""

from __future__ import annotations

from typing import Any

import aiohttp

from xds_server.demo import Stack
from xds_server.model.intent import Backend


def backend(stack: Stack, name: str) -> Backend:
    return next(b for b in stack.controller.store.intent.backends() if b.name == name)


def control(stack: Stack, name: str, what: str) -> str:
    b = backend(stack, name)
    return f"http://{b.address}:{b.port}/_control/{what}"


async def served(http: aiohttp.ClientSession, stack: Stack, name: str) -> int:
    """Requests the backend itself counted (health probes and control calls excluded)."""
    async with http.get(control(stack, name, "stats")) as response:
        return int((await response.json())["requests"])


async def set_fault(http: aiohttp.ClientSession, stack: Stack, name: str, **fault: Any) -> None:
    async with http.post(control(stack, name, "fault"), json=fault) as response:
        assert response.status == 200

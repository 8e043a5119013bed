"""Round robin as a user sees it: one curl after another, through an Envoy with
the spec's 8 worker threads."""

from __future__ import annotations

import aiohttp
import pytest

from tests.e2e.conftest import StackFactory
from tests.factories import SEARCH_BODY, local_settings
from tests.support import eventually
from xds_server.demo import Stack

pytestmark = pytest.mark.envoy

QDRANT = ("qdrant-primary", "qdrant-secondary")


async def put_strategy(stack: Stack, strategy: str) -> None:
    url = f"http://{stack.controller.store.intent.listen}/api/v1/router/strategy"
    async with (
        aiohttp.ClientSession() as http,
        http.put(url, json={"strategy": strategy}) as response,
    ):
        body = await response.json()
    assert response.status == 200 and body["strategy_change"]["strategy_applied"], body


async def open_connections(stack: Stack) -> int:
    """Envoy's count of open downstream connections on the router listener."""
    listen = stack.controller.store.intent.listen
    name = f"listener.{listen.host}_{listen.port}.downstream_cx_active"
    stats = await stack.envoy.admin_json(f"/stats?format=json&filter=^{name}$")
    return int(stats["stats"][0]["value"])


async def search_on_a_new_connection(stack: Stack) -> str:
    """One POST on a connection of its own, closed after the answer, as curl does.

    A curl starts after the previous one has exited; this one waits until Envoy
    has seen the previous connection close, so that "sequential" does not
    depend on how long a process takes to start."""
    await eventually(lambda: _none_open(stack))
    url = f"http://{stack.controller.store.intent.listen}/api/v1/vectors/search"
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.post(url, json=SEARCH_BODY) as response,
    ):
        assert response.status == 200
        return response.headers["x-backend"]


async def _none_open(stack: Stack) -> bool:
    return await open_connections(stack) == 0


async def test_round_robin_alternates_for_sequential_clients(make_stack: StackFactory) -> None:
    """With `round_robin` set, ten sequential requests, each on a new connection,
    alternate strictly between qdrant-primary and qdrant-secondary through an
    Envoy with 8 workers. Each worker keeps its own round-robin position; the
    listener's exact connection balance gives each new connection to the worker
    with the fewest open ones, so sequential clients share one rotation. Without
    it the kernel spreads them over the workers (measured: S P P S S S P P P S)."""
    stack = await make_stack(local_settings(worker_threads=8))
    await put_strategy(stack, "weighted")  # where the README's commands leave the demo
    await put_strategy(stack, "round_robin")
    seen = [await search_on_a_new_connection(stack) for _ in range(10)]
    first = QDRANT.index(seen[0])
    assert seen == [QDRANT[(first + i) % 2] for i in range(10)], seen

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

from tests.factories import local_settings
from xds_server.demo import Stack, running_stack
from xds_server.settings import Settings

StackFactory = Callable[..., Awaitable[Stack]]  # (settings, *, delta=False)


@pytest.fixture(params=["sotw", "delta"])
async def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Stack]:
    """Sample backends + controller + a real Envoy 1.40, all on free loopback
    ports; every test using it runs twice, with Envoy bootstrapped for
    state-of-the-world (GRPC) and for incremental (DELTA_GRPC) ADS."""
    settings = local_settings(worker_threads=2)
    workdir = tmp_path_factory.mktemp("stack")
    delta = request.param == "delta"
    async with running_stack(settings, workdir=workdir, delta=delta) as running:
        yield running


@pytest.fixture
async def make_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[StackFactory]:
    """Like `stack`, on the test's own settings: `await make_stack(settings)`
    (`delta=True`: Envoy on Delta ADS). Every stack started is stopped at teardown."""
    async with contextlib.AsyncExitStack() as exits:

        async def start(settings: Settings, *, delta: bool = False) -> Stack:
            workdir = tmp_path_factory.mktemp("stack")
            running = running_stack(settings, workdir=workdir, delta=delta)
            return await exits.enter_async_context(running)

        yield start


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.support import local_settings
from xds_server.demo import Stack, running_stack


@pytest.fixture
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    """Sample backends + controller + a real Envoy 1.40, all on free loopback ports."""
    settings = local_settings(worker_threads=2)
    async with running_stack(settings, workdir=tmp_path_factory.mktemp("stack")) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session

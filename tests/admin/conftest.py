"""Fixtures of the admin tests: a real controller (store, publisher, xDS and admin
servers on free loopback ports, no proxy connected), one with a bearer token, and
an HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from tests.factories import local_settings, running_controller
from xds_server.app import Controller

TOKEN = "s3cret-token"


@pytest.fixture
async def controller() -> AsyncIterator[Controller]:
    async with running_controller(local_settings()) as started:
        yield started


@pytest.fixture
async def guarded() -> AsyncIterator[Controller]:
    """A controller with ROUTER_ADMIN_TOKEN set to TOKEN."""
    async with running_controller(local_settings(admin_token=TOKEN)) as started:
        yield started


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
        yield session

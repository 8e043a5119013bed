from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis

from tests.dns_support import DnsServer
from tests.redis_support import RedisServer
from xds_server.redis_io import connect


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--regenerate-golden",
        action="store_true",
        help="rewrite tests/golden/*/expected.yaml from the translator and delete stale ones",
    )


@pytest.fixture
async def redis_server(tmp_path: Path) -> AsyncIterator[RedisServer]:
    """A private redis-server on a free loopback port (no persistence), stopped by PID."""
    workdir = tmp_path / "redis"
    workdir.mkdir()
    server = RedisServer(workdir)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def dns_server(tmp_path: Path) -> AsyncIterator[DnsServer]:
    """A private dnsmasq on a free loopback port, started without records
    (`await dns_server.set_records(...)`), stopped by PID."""
    workdir = tmp_path / "dnsmasq"
    workdir.mkdir()
    server = DnsServer(workdir)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def silent_admin() -> AsyncIterator[str]:
    """An 'Envoy admin' that accepts connections and never answers."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # until the client gives up and closes
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield f"127.0.0.1:{port}"
    server.close()


@pytest.fixture
async def redis_client(redis_server: RedisServer) -> AsyncIterator[Redis]:
    """A client of the test's private redis-server."""
    redis = connect(redis_server.url)
    yield redis
    await redis.aclose()

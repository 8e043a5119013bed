"""The admin API on in-memory parts: no controller, no xDS port, no Envoy.

The handlers receive an `AdminContext` of narrow collaborators, so a test wires
the real store, publisher and change path in memory and replaces what it wants
to control (here the health view) with a small twin of its Protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tests.factories import local_settings
from xds_server.admin import make_admin_app
from xds_server.admin.context import AdminContext
from xds_server.cache import SnapshotCache
from xds_server.experiments import Experiments, LabPorts
from xds_server.health.verdict import BackendHealth
from xds_server.model.intent import Health, Strategy
from xds_server.pipeline.changes import IntentChanges
from xds_server.pipeline.publisher import Publisher
from xds_server.store.memory import MemoryStore
from xds_server.xds.status import ProxyRegistry


class FixedHealth:
    """A HealthView/HealthHolds twin: verdicts the test sets."""

    def __init__(self, verdicts: dict[str, Health]) -> None:
        self._verdicts = verdicts

    @property
    def verdicts(self) -> Mapping[str, Health]:
        return self._verdicts

    @property
    def states(self) -> Mapping[str, BackendHealth]:
        return {name: BackendHealth(verdict=v) for name, v in self._verdicts.items()}

    @contextlib.asynccontextmanager
    async def held(self, name: str, ttl_s: float) -> AsyncIterator[None]:
        yield


@pytest.fixture
async def wired() -> AsyncIterator[tuple[TestClient[Any, Any], MemoryStore, FixedHealth]]:
    store = MemoryStore(local_settings().intent)
    cache, proxies = SnapshotCache(), ProxyRegistry()
    health = FixedHealth({"qdrant-primary": Health.UNHEALTHY})
    publisher = Publisher(store, cache, lambda: health.verdicts)
    changes = IntentChanges(store, publisher, proxies)
    context = AdminContext(
        intent=store,
        changes=changes,
        health=health,
        proxies=proxies,
        published=publisher,
        lab=LabPorts(store, changes, health, proxies, Experiments()),
        telemetry=None,
        admin_token=None,
    )
    publishing = asyncio.create_task(publisher.run())  # as the controller's TaskGroup runs it
    try:
        async with TestClient(TestServer(make_admin_app(context))) as client:
            yield client, store, health
    finally:
        publishing.cancel()


async def test_a_change_goes_through_the_change_path_without_a_controller(
    wired: tuple[TestClient[Any, Any], MemoryStore, FixedHealth],
) -> None:
    """PUT strategy: stored, published, applied (no proxy connected), answered."""
    client, store, _ = wired
    response = await client.put("/api/v1/router/strategy", json={"strategy": "random"})
    body = await response.json()
    assert response.status == 200, body
    assert body["strategy_change"]["strategy_applied"] is True
    assert store.intent.default_strategy is Strategy.RANDOM


async def test_health_answers_come_from_the_health_view(
    wired: tuple[TestClient[Any, Any], MemoryStore, FixedHealth],
) -> None:
    """The report and the backend listing read the view they were given."""
    client, _, _ = wired
    report = await (await client.get("/api/v1/router/health")).json()
    assert report["health_status"]["qdrant"]["primary"]["status"] == "unhealthy"
    listing = await (await client.get("/api/v1/router/services/qdrant/backends")).json()
    verdicts = {b["name"]: b["health"] for b in listing["backends"]}
    assert verdicts == {"qdrant-primary": "unhealthy", "qdrant-secondary": "unknown"}


async def test_metrics_routes_answer_404_without_telemetry(
    wired: tuple[TestClient[Any, Any], MemoryStore, FixedHealth],
) -> None:
    client, _, _ = wired
    for path in ("/metrics", "/api/v1/router/metrics"):
        response = await client.get(path)
        assert response.status == 404
        assert "ROUTER_METRICS_ENABLED" in (await response.json())["detail"]

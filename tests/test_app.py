"""The controller without Envoy: config reload and change coalescing."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.factories import local_settings, running_controller
from tests.support import eventually
from xds_server.app import Controller
from xds_server.cache import SnapshotCache
from xds_server.model.intent import Strategy
from xds_server.pipeline.publisher import Publisher
from xds_server.settings import EMBEDDED_DEFAULTS
from xds_server.store.memory import MemoryStore


@pytest.fixture
async def controller(tmp_path: Path) -> AsyncIterator[Controller]:
    config = tmp_path / "router_config.yaml"
    config.write_text(EMBEDDED_DEFAULTS.read_text())
    async with running_controller(local_settings(), config_path=config) as running:
        yield running


def rewrite(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


async def test_config_file_change_is_applied(controller: Controller) -> None:
    """Editing the config file changes the intent and publishes a new snapshot."""
    assert controller.config_path is not None
    generation = controller.cache.generation
    rewrite(controller.config_path, "strategy: round_robin", "strategy: least_connections")

    async def reloaded() -> bool:
        return controller.store.intent.default_strategy is Strategy.LEAST_CONNECTIONS

    await eventually(reloaded, timeout_s=5)
    await eventually(lambda: _true(controller.cache.generation > generation), timeout_s=5)
    # The admin address the controller really listens on survives the reload.
    assert controller.store.intent.admin == controller.admin_address


async def test_sighup_reload_request(controller: Controller) -> None:
    """request_reload() (the SIGHUP handler) reloads even when mtime is unchanged."""
    assert controller.config_path is not None
    await controller.store.update(
        lambda i: dataclasses.replace(i, default_strategy=Strategy.RANDOM)
    )
    controller.request_reload()

    async def back_to_file() -> bool:
        return controller.store.intent.default_strategy is Strategy.ROUND_ROBIN

    await eventually(back_to_file, timeout_s=5)


async def test_a_reload_waits_for_a_running_experiment(controller: Controller) -> None:
    """A config reload during an experiment is stored only once it has ended (and
    restored its temporary changes), so the file's values are the last word."""
    assert controller.config_path is not None
    rewrite(controller.config_path, "strategy: round_robin", "strategy: maglev")
    with controller.experiments.claim("failover", "qdrant-primary"):
        reload = asyncio.create_task(controller.reload())
        await asyncio.sleep(0.3)
        assert not reload.done()
        assert controller.store.intent.default_strategy is Strategy.ROUND_ROBIN
    assert await asyncio.wait_for(reload, timeout=5) is True
    assert controller.store.intent.default_strategy is Strategy.MAGLEV


async def test_invalid_config_keeps_running_config(
    controller: Controller, caplog: pytest.LogCaptureFixture
) -> None:
    """An invalid file changes nothing and every problem is logged with its path."""
    assert controller.config_path is not None
    # The revision, not the cache's generation: health verdicts may publish meanwhile.
    before, revision = controller.store.intent, controller.store.revision
    rewrite(controller.config_path, "queue_size: 1000", "queue_size: -1")
    rewrite(controller.config_path, "port: 6334", "port: 700000")
    with caplog.at_level(logging.ERROR, logger="xds_server.app"):
        assert await controller.reload() is False
    assert controller.store.intent == before
    assert controller.store.revision == revision
    assert "router.queue_size" in caplog.text
    assert "services[0].backends[1].port" in caplog.text


async def test_isolated_change_is_not_delayed_and_bursts_coalesce() -> None:
    """The first change publishes at once; a burst after it becomes one more publish."""
    settings = local_settings()
    store, cache = MemoryStore(settings.intent), SnapshotCache()
    publisher = Publisher(store, cache, min_hold_off_s=0.2)
    task = asyncio.create_task(publisher.run())
    try:
        await eventually(lambda: _true(cache.generation == 1))
        started = time.monotonic()
        await store.update(lambda i: dataclasses.replace(i, default_strategy=Strategy.RANDOM))
        await eventually(lambda: _true(cache.generation == 2), interval_s=0.001)
        assert time.monotonic() - started < 0.1  # well under the 0.2 s hold-off
        for strategy in [Strategy.ROUND_ROBIN, Strategy.MAGLEV, Strategy.RING_HASH] * 5:
            await store.update(lambda i, s=strategy: dataclasses.replace(i, default_strategy=s))
        await eventually(lambda: _true(publisher.published_revision == store.revision))
        assert cache.generation == 3  # fifteen changes in the hold-off: one publish
        assert cache.snapshot is not None
    finally:
        task.cancel()


async def _true(value: bool) -> bool:
    return value

"""A change during an experiment, both orders, with a real Envoy 1.40 and the
sample backends: the user's change is never lost (experiments/__init__.py).

- During an experiment, intent changes through the admin API are refused (409
  naming it) and a config reload waits for its end: the file's value wins even
  when it equals the experiment's temporary one, which a restore by value
  comparison alone would have undone.
- An experiment asked for while a (slow) change is being applied is refused
  (409 naming the change); after it, the experiment runs and keeps the change.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.e2e.conftest import StackFactory
from tests.e2e.test_resilience import (
    EJECTION_S,
    POLL_S,
    fault_status,
    post_experiment,
    resilience_settings,
    url,
)
from tests.support import eventually
from xds_server.demo import Stack, running_stack
from xds_server.model.intent import Strategy
from xds_server.settings import EMBEDDED_DEFAULTS, Settings, load_settings

pytestmark = pytest.mark.envoy

STRATEGY = "/api/v1/router/strategy"
QDRANT = "/api/v1/router/services/qdrant/backends"
FAILOVER = {
    "primary_backend": "qdrant-primary",
    "simulate_failure": True,
    "ejection_time_s": 1.5,  # the file below sets exactly this
    "max_duration_s": 20,
}
CHANGES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("PUT", STRATEGY, {"strategy": "least_connections"}),
    ("PATCH", QDRANT + "/qdrant-secondary", {"weight": 5}),
    ("POST", QDRANT, {"name": "qdrant-third", "address": "127.0.0.9", "port": 9}),
    ("DELETE", QDRANT + "/qdrant-secondary", None),
]


def write_config(path: Path, settings: Settings, **router: object) -> None:
    """`settings` as router_config.yaml, what a reload reads, with `router` keys changed."""
    document = yaml.safe_load(EMBEDDED_DEFAULTS.read_text(encoding="utf-8"))
    intent, policies = settings.intent, settings.intent.policies
    document["router"] |= {
        "listen_address": str(intent.listen),
        "admin_address": str(intent.admin),
        "xds_address": str(settings.xds_address),
        "envoy_admin_address": str(settings.envoy_admin_address),
        "circuit_breaker_threshold": policies.circuit_breaker_threshold,
        "circuit_breaker_timeout": policies.circuit_breaker_timeout_s,
        "retry_delay": policies.retry_delay_s,
        "health_check_interval": settings.health_check_interval_s,
        "health_check_timeout": settings.health_check_timeout_s,
        "worker_threads": settings.worker_threads,
        **router,
    }
    ports = {b.name: b.port for b in intent.backends()}
    for service in document["services"]:
        for backend in service["backends"]:
            backend["port"] = ports[backend["name"]]
    path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")


@pytest.fixture
async def reloadable(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[tuple[Stack, Settings, Path]]:
    """A stack whose controller reloads a config file that holds its own settings."""
    settings = resilience_settings()
    config = tmp_path_factory.mktemp("config") / "router_config.yaml"
    write_config(config, settings)
    assert load_settings(config, {}).intent == settings.intent  # the file is the stack's config
    workdir = tmp_path_factory.mktemp("stack")
    async with running_stack(settings, config_path=config, workdir=workdir) as stack:
        yield stack, settings, config


async def send(
    http: aiohttp.ClientSession, method: str, target: str, body: object = None
) -> tuple[int, dict[str, Any]]:
    async with http.request(method, target, json=body) as response:
        return response.status, await response.json()


async def ejection_in_envoy(stack: Stack, cluster: str) -> str:
    dump = await stack.envoy.admin_json("/config_dump?resource=dynamic_active_clusters")
    for entry in dump["configs"]:
        if entry["cluster"]["name"] == cluster:
            return str(entry["cluster"]["outlier_detection"]["base_ejection_time"])
    raise AssertionError(f"Envoy has no cluster {cluster}")


async def test_changes_during_an_experiment_are_refused_and_a_reload_waits(
    reloadable: tuple[Stack, Settings, Path], http: aiohttp.ClientSession
) -> None:
    """While a failover experiment runs: every intent change through Envoy answers
    409 naming it and changes nothing; a reload that sets the ejection time to the
    experiment's own temporary 1.5 s waits, and after the experiment's restore the
    file's 1.5 s and strategy are what Envoy runs. Then changes work again."""
    stack, settings, config = reloadable
    controller = stack.controller

    async def faulted() -> bool:
        return await fault_status(http, stack, "qdrant-primary") == 503

    experiment = asyncio.create_task(post_experiment(http, stack, "failover", FAILOVER))
    await eventually(faulted, timeout_s=10, interval_s=POLL_S)
    before = controller.store.intent
    assert before.policies.circuit_breaker_timeout_s == 1.5  # the experiment's value
    for method, path, body in CHANGES:
        status, answer = await send(http, method, url(stack, path), body)
        assert (status, answer["error"]) == (409, "conflict"), (method, path, answer)
        assert "the failover experiment on qdrant-primary is running" in answer["detail"]
    assert controller.store.intent is before

    write_config(config, settings, circuit_breaker_timeout=1.5, strategy="random")
    reload = asyncio.create_task(controller.reload())
    await asyncio.sleep(0.3)
    assert not experiment.done(), "the experiment ended before the reload could wait for it"
    assert not reload.done() and controller.store.intent.default_strategy is Strategy.ROUND_ROBIN

    status, answer, _ = await experiment
    assert status == 200, answer
    test = answer["failover_test"]
    assert test["failover_triggered"] and test["recovery_successful"], test
    assert test["temporary_changes"] == [
        f"circuit_breaker_timeout {EJECTION_S:g} s -> 1.5 s during the test (restored)"
    ]
    assert await asyncio.wait_for(reload, timeout=10) is True
    intent = controller.store.intent
    assert intent.policies.circuit_breaker_timeout_s == 1.5, "the file's value was lost"
    assert intent.default_strategy is Strategy.RANDOM

    async def envoy_runs_the_file() -> bool:
        return await ejection_in_envoy(stack, "qdrant") == "1.500s"

    await eventually(envoy_runs_the_file, timeout_s=5, interval_s=POLL_S)
    status, answer = await send(http, "PUT", url(stack, STRATEGY), {"strategy": "weighted"})
    assert status == 200, answer
    assert controller.store.intent.default_strategy is Strategy.WEIGHTED


@contextlib.contextmanager
def paused(pid: int) -> Iterator[None]:
    """SIGSTOP the process for the block: an Envoy that ACKs nothing meanwhile."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


async def test_an_experiment_during_a_slow_change_is_refused_and_keeps_it(
    make_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    """A strategy change waiting for a paused Envoy's ACK holds off a failover
    experiment (409 naming the change); once the change is confirmed the
    experiment runs, and its restore leaves the new strategy in place."""
    stack = await make_stack(resilience_settings())
    controller = stack.controller
    admin = f"http://{controller.admin_address}"
    with paused(stack.envoy.pid):
        change = asyncio.create_task(
            send(http, "PUT", admin + STRATEGY, {"strategy": "random", "wait_s": 10})
        )
        await asyncio.sleep(0.3)
        assert not change.done()
        status, answer = await send(http, "POST", admin + "/api/v1/router/failover/test", FAILOVER)
        assert (status, answer["error"]) == (409, "conflict"), answer
        assert "PUT /api/v1/router/strategy) is being applied" in answer["detail"]
        assert await fault_status(http, stack, "qdrant-primary") is None  # nothing was failed
    status, answer = await change
    assert status == 200 and answer["strategy_change"]["strategy_applied"], answer

    status, answer, _ = await post_experiment(http, stack, "failover", FAILOVER)
    assert status == 200 and answer["failover_test"]["failover_triggered"], answer
    intent = controller.store.intent
    assert intent.default_strategy is Strategy.RANDOM
    assert intent.policies.circuit_breaker_timeout_s == EJECTION_S

"""Shared health and shared routing metrics with replicas on one real redis-server.

- Health: exactly one replica probes (the prober lease); a killed backend is
  UNHEALTHY in the EDS of every replica at one version; when the prober dies
  without handing the lease over, another takes over within the lease plus one
  probe interval, and the takeover changes no version.
- Metrics: routing totals and failover events survive a controller restart
  (the real Envoy keeps running and reconnects).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.test_hds_envoy import hds_stats
from tests.e2e.test_replicas import in_sync, running_envoy, serving
from tests.factories import moved, qdrant_only, redis_settings
from tests.redis_support import RedisServer
from tests.support import envoy_running, eventually, finished, send_many
from xds_server.app import Controller
from xds_server.demo import start_backend
from xds_server.health.shared import SharedHealth
from xds_server.model.health_checker import HealthChecker
from xds_server.model.intent import Health, SocketAddress
from xds_server.proxy.bootstrap import make_bootstrap
from xds_server.proxy.envoy_process import EnvoyProcess
from xds_server.proxy.processes import ChildProcess, free_port
from xds_server.resources import ENDPOINT
from xds_server.settings import Settings

pytestmark = pytest.mark.envoy

INTERVAL_S = 0.8
LEASE_S = 1.0
PRIMARY, SECONDARY = "qdrant-primary", "qdrant-secondary"


def fast_health(settings: Settings) -> Settings:
    """Probes every INTERVAL_S with no jitter, so probe counts are predictable."""
    return dataclasses.replace(
        qdrant_only(settings),
        health_check_interval_s=INTERVAL_S,
        health_check_timeout_s=INTERVAL_S / 2,
        health_check_jitter=0.0,
    )


@dataclasses.dataclass
class Replica:
    controller: Controller
    task: asyncio.Task[None]
    stop_event: asyncio.Event

    async def stop(self) -> None:
        self.stop_event.set()
        await finished(self.task, 10)


async def start_replica(settings: Settings) -> Replica:
    controller = Controller(settings, health_lease_s=LEASE_S)
    await controller.start()
    stop = asyncio.Event()
    return Replica(controller, asyncio.create_task(controller.run(stop)), stop)


@contextlib.asynccontextmanager
async def replicas(*settings: Settings) -> AsyncIterator[list[Replica]]:
    """Started in order (the first claims the prober lease); all stopped at the end."""
    started: list[Replica] = []
    try:
        for one in settings:
            started.append(await start_replica(one))
        yield started
    finally:
        for replica in started:
            if not replica.task.done():
                await replica.stop()


@contextlib.asynccontextmanager
async def backends(settings: Settings, workdir: Path) -> AsyncIterator[dict[str, ChildProcess]]:
    async with contextlib.AsyncExitStack() as stack:
        children = {}
        for backend in settings.intent.backends():
            children[backend.name] = await start_backend(backend, "qdrant", workdir)
            stack.push_async_callback(children[backend.name].stop)
        yield children


async def health_requests(http: aiohttp.ClientSession, settings: Settings, name: str) -> int:
    """How many health probes a sample backend has answered."""
    backend = next(b for b in settings.intent.backends() if b.name == name)
    async with http.get(f"http://{backend.address}:{backend.port}/_control/stats") as response:
        count: int = (await response.json())["health_requests"]
        return count


def eds_health(controller: Controller, backend: str) -> int | None:
    """The health_status of `backend` in the qdrant ClusterLoadAssignment served."""
    snapshot = controller.cache.snapshot
    assert snapshot is not None
    endpoints = snapshot.of(ENDPOINT)
    assert endpoints is not None
    assignment: Any = endpoints.resources["qdrant"].message
    for locality in assignment.endpoints:
        for lb in locality.lb_endpoints:
            if lb.endpoint.hostname == backend:
                return int(lb.health_status)
    return None


async def _true(value: bool) -> bool:
    return value


EDS_STATUS = {Health.HEALTHY: 1, Health.UNHEALTHY: 2}  # core.v3.HealthStatus


async def agree(replicas: list[Replica], expected: dict[str, Health]) -> bool:
    """Every replica holds `expected` verdicts and serves them in its EDS (not only
    decided: the publisher may not have run yet), all at one EDS version."""
    controllers = [r.controller for r in replicas]
    published = all(
        c.health.verdicts == expected
        and all(eds_health(c, name) == EDS_STATUS[health] for name, health in expected.items())
        for c in controllers
    )
    return published and len({serving(c)["eds"] for c in controllers}) == 1


async def test_one_replica_probes_all_publish_its_verdicts_and_another_takes_over(
    redis_server: RedisServer, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Two replicas: only the first (the lease holder) probes, counted at the sample
    backend (a second prober would double the count). Killing a backend makes it
    UNHEALTHY in both replicas' EDS at one version. The prober stopped without
    releasing its lease (a crash): the other replica probes within the lease plus
    one interval, and publishes the same EDS version as before."""
    settings = fast_health(redis_settings(redis_server))
    async with backends(settings, tmp_path) as children, replicas(settings) as [a]:
        shared_a = a.controller.health
        assert isinstance(shared_a, SharedHealth)
        await eventually(lambda: _true(shared_a.probing), timeout_s=2)
        async with replicas(moved(settings)) as [b]:
            both = [a, b]
            healthy = {PRIMARY: Health.HEALTHY, SECONDARY: Health.HEALTHY}
            await eventually(lambda: agree(both, healthy), timeout_s=5)
            shared_b = b.controller.health
            assert isinstance(shared_b, SharedHealth)
            await eventually(lambda: _true(shared_b.prober is not None), timeout_s=2)
            assert not shared_b.probing
            assert shared_a.prober == shared_b.prober == shared_a.replica_id

            window_s = 4 * INTERVAL_S
            before = await health_requests(http, settings, PRIMARY)
            await asyncio.sleep(window_s)
            probes = await health_requests(http, settings, PRIMARY) - before
            assert 3 <= probes <= 5, f"{probes} probes in {window_s} s: not one prober"

            await children[SECONDARY].stop()
            unhealthy = {PRIMARY: Health.HEALTHY, SECONDARY: Health.UNHEALTHY}
            took = await eventually(lambda: agree(both, unhealthy), timeout_s=3, interval_s=0.01)
            assert eds_health(a.controller, SECONDARY) == eds_health(b.controller, SECONDARY) == 2
            version = serving(b.controller)["eds"]

            shared_a.release_on_stop = False  # as a crash: the lease must expire
            crashed, crashed_wall = time.monotonic(), time.time()
            await a.stop()

            async def b_probed() -> bool:
                state = shared_b.states.get(PRIMARY)
                last = state.last if state is not None else None
                return shared_b.probing and last is not None and last.at > crashed_wall

            await eventually(b_probed, timeout_s=5, interval_s=0.01)
            takeover = time.monotonic() - crashed
            await asyncio.sleep(2 * INTERVAL_S)  # B's own probes: verdicts stay
            assert b.controller.health.verdicts == unhealthy
            assert serving(b.controller)["eds"] == version
    print(
        f"\nshared health: {probes} probes of one backend in {window_s:.1f} s (interval "
        f"{INTERVAL_S} s); killed backend UNHEALTHY on both replicas after {took * 1000:.0f} "
        f"ms; takeover {takeover * 1000:.0f} ms after the prober crashed "
        f"(lease {LEASE_S} s, bound {(LEASE_S + INTERVAL_S) * 1000:.0f} ms)"
    )
    assert takeover < LEASE_S + INTERVAL_S
    # Not before the lease ran out: renewed every third of it, it had 2/3 left at least.
    assert takeover > LEASE_S * 2 / 3 - 0.05


async def metrics_of(http: aiohttp.ClientSession, admin: SocketAddress) -> dict[str, Any]:
    async with http.get(f"http://{admin}/api/v1/router/metrics") as response:
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


async def test_routing_totals_and_failover_events_survive_a_controller_restart(
    redis_server: RedisServer, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A backend killed while Envoy is connected: one health-check failover event. N
    requests through Envoy: total N. The controller is restarted (Envoy keeps
    running and reconnects); M more requests: total N + M, not Envoy's counters
    counted again, and the same failover event, same `since`."""
    settings = fast_health(redis_settings(redis_server))
    admin = settings.intent.admin
    url = f"http://{settings.intent.listen}/api/v1/vectors/search"
    n, m = 30, 20
    async with (
        backends(settings, tmp_path) as children,
        replicas(settings) as [first],
        running_envoy(settings, [settings.xds_address], tmp_path),
    ):
        await eventually(lambda: in_sync(first.controller), timeout_s=10)
        await children[SECONDARY].stop()

        async def one_failover() -> bool:
            events = (await metrics_of(http, admin))["failover_events"]
            return bool(events["total_failovers"] == 1)

        await eventually(one_failover, timeout_s=10, interval_s=0.1)
        assert set((await send_many(http, url, n)).keys()) == {PRIMARY}
        before = await metrics_of(http, admin)
        assert before["routing_metrics"]["total_requests"] == n
        await first.stop()  # not Envoy: it keeps serving, then reconnects

        async with replicas(settings) as [again]:
            await eventually(lambda: in_sync(again.controller), timeout_s=15)
            assert set((await send_many(http, url, m)).keys()) == {PRIMARY}
            after = await metrics_of(http, admin)
    print(
        f"\nacross a controller restart: total {before['routing_metrics']['total_requests']}"
        f" -> {after['routing_metrics']['total_requests']} (sent {n} + {m})"
    )
    assert after["routing_metrics"]["total_requests"] == n + m
    assert after["routing_metrics"]["since"] == before["routing_metrics"]["since"]
    assert after["load_balancing"]["backend_distribution"][PRIMARY]["requests"] == n + m
    assert after["failover_events"] == before["failover_events"]
    assert after["failover_events"]["by_source"]["health_check"] == 1


@pytest.mark.parametrize("second_hold", [False, True], ids=["one hold", "two holds"])
async def test_a_held_backend_is_not_probed_until_every_hold_has_ended(
    redis_server: RedisServer, http: aiohttp.ClientSession, tmp_path: Path, second_hold: bool
) -> None:
    """An experiment on replica B holds a backend while replica A probes: A stops
    probing it (its health endpoint counts no request) and both keep its verdict
    although it now fails its health check; on release A probes it again and both
    replicas mark it UNHEALTHY. With a second experiment on the same backend
    through A, B's ending first leaves the backend held until A's ends too."""
    settings = fast_health(redis_settings(redis_server))
    backend = next(b for b in settings.intent.backends() if b.name == SECONDARY)
    fault = f"http://{backend.address}:{backend.port}/_control/fault"
    healthy = {PRIMARY: Health.HEALTHY, SECONDARY: Health.HEALTHY}
    async with backends(settings, tmp_path), replicas(settings, moved(settings)) as both:
        a, b = both
        await eventually(lambda: agree(both, healthy), timeout_s=5)
        assert isinstance(a.controller.health, SharedHealth) and a.controller.health.probing
        lasting = a if second_hold else b
        async with lasting.controller.health.held(SECONDARY, 30):
            async with contextlib.AsyncExitStack() as ending_first:
                if second_hold:
                    await ending_first.enter_async_context(b.controller.health.held(SECONDARY, 30))
                async with http.post(fault, json={"health_status": 503}) as response:
                    assert response.status == 200
            before = await health_requests(http, settings, SECONDARY)
            await asyncio.sleep(3 * INTERVAL_S)
            assert await health_requests(http, settings, SECONDARY) == before
            assert await agree(both, healthy)
        unhealthy = {PRIMARY: Health.HEALTHY, SECONDARY: Health.UNHEALTHY}
        await eventually(lambda: agree(both, unhealthy), timeout_s=3)


@contextlib.asynccontextmanager
async def hds_envoy_on(
    replica: Replica, node_id: str, workdir: Path
) -> AsyncIterator[EnvoyProcess]:
    """A real Envoy on ADS and HDS to one replica, once its HDS stream is open there."""
    admin = SocketAddress("127.0.0.1", free_port())
    bootstrap = make_bootstrap(
        node_id=node_id, xds=replica.controller.xds_address, envoy_admin=admin, hds=True
    )
    async with envoy_running(bootstrap, admin, workdir / node_id, wait_ready=False) as envoy:
        await eventually(lambda: _true(node_id in replica.controller.hds.nodes()), timeout_s=10)
        yield envoy


def checkers(replica: Replica, name: str) -> tuple[str, ...] | None:
    state = replica.controller.health.states.get(name)
    return None if state is None else state.checked_by


async def test_with_envoys_checking_only_the_prober_delegates_and_every_replica_names_them(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """router.health_checker: envoy on two replicas, one HDS Envoy on each: only the
    prober assigns, to the Envoy connected to it; the shared records carry its node
    id, so both replicas' reports name it; the other replica's Envoy applies no
    specifier; a killed backend is UNHEALTHY in both replicas' EDS at one version."""
    settings = dataclasses.replace(
        fast_health(redis_settings(redis_server)), health_checker=HealthChecker.ENVOY
    )
    async with backends(settings, tmp_path) as children, replicas(settings) as [a]:
        shared_a = a.controller.health
        assert isinstance(shared_a, SharedHealth)
        await eventually(lambda: _true(shared_a.probing), timeout_s=2)
        async with (
            replicas(moved(settings)) as [b],
            hds_envoy_on(a, "envoy-on-a", tmp_path),
            hds_envoy_on(b, "envoy-on-b", tmp_path) as envoy_b,
        ):
            both = [a, b]

            async def named_everywhere() -> bool:
                return all(
                    checkers(r, name) == ("envoy-on-a",)
                    for r in both
                    for name in (PRIMARY, SECONDARY)
                )

            await eventually(named_everywhere, timeout_s=10)
            assert b.controller.delegation is not None and b.controller.delegation.assignment == {}
            assert (await hds_stats(envoy_b)).get("updates", 0) == 0

            await children[SECONDARY].stop()
            unhealthy = {PRIMARY: Health.HEALTHY, SECONDARY: Health.UNHEALTHY}
            await eventually(lambda: agree(both, unhealthy), timeout_s=5, interval_s=0.02)
            assert checkers(b, SECONDARY) == ("envoy-on-a",)

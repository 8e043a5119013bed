"""Several controller replicas on one real redis-server, serving a real Envoy 1.40.

The intent is cut down to the qdrant service (weighted) with health-check jitter 0, so
every replica reaches the same health verdicts right after it starts and the
tests compare versions only once they have (health sharing: docs/replicas.md).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import statistics
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.factories import (
    NO_DOT_ENV,
    SEARCH_BODY,
    config_file,
    moved,
    qdrant_only,
    redis_settings,
    running_controller,
)
from tests.redis_support import RedisServer
from tests.support import envoy_running, eventually
from xds_server.app import Controller
from xds_server.demo import start_backend
from xds_server.model.intent import Intent, SocketAddress
from xds_server.proxy.bootstrap import make_bootstrap
from xds_server.proxy.envoy_process import EnvoyProcess
from xds_server.proxy.processes import ChildProcess, start_process
from xds_server.resources import ADS_ORDER, SHORT_NAMES
from xds_server.settings import Settings

pytestmark = pytest.mark.envoy

NODE = "envoy-replicas"
REPLICA_START_TIMEOUT_S = 20.0
# Envoy counters that move when it really changes configuration (not on an
# identical re-send, which it recognises by hash and skips).
CHURN_STATS = (
    "cluster_manager.cluster_added",
    "cluster_manager.cluster_modified",
    "cluster_manager.cluster_removed",
    "listener_manager.listener_added",
    "listener_manager.listener_modified",
    "listener_manager.listener_removed",
    "cluster_manager.cds.version",
    "listener_manager.lds.version",
)


@contextlib.asynccontextmanager
async def running_backends(settings: Settings, workdir: Path) -> AsyncIterator[None]:
    async with contextlib.AsyncExitStack() as stack:
        for backend in settings.intent.backends():
            child = await start_backend(backend, "qdrant", workdir)
            stack.push_async_callback(child.stop)
        yield


@contextlib.asynccontextmanager
async def running_envoy(
    settings: Settings, xds: Sequence[SocketAddress], workdir: Path
) -> AsyncIterator[EnvoyProcess]:
    bootstrap = make_bootstrap(node_id=NODE, xds=xds, envoy_admin=settings.envoy_admin_address)
    admin = settings.envoy_admin_address
    async with envoy_running(bootstrap, admin, workdir, concurrency=2) as envoy:
        yield envoy


@contextlib.asynccontextmanager
async def replica_process(settings: Settings, workdir: Path) -> AsyncIterator[ChildProcess]:
    """`xds-server run` in its own process (so it can be SIGKILLed by PID)."""
    config = config_file(settings, workdir / "replica.yaml")
    argv = [sys.executable, "-m", "xds_server.cli", "run", *NO_DOT_ENV, "--config", str(config)]
    child = await start_process(
        argv,
        ready_line_prefix="xds-server:",
        timeout_s=REPLICA_START_TIMEOUT_S,
        log_path=workdir / "replica.log",
    )
    try:
        yield child
    finally:
        await child.stop()


# ---- what the proxies got -------------------------------------------------------------


def acked(controller: Controller) -> dict[str, str | None]:
    """Per type, the version this Envoy ACKed on `controller` (None: nothing yet)."""
    proxy = controller.proxies.proxies.get(NODE)
    if proxy is None or not proxy.streams:
        return {}
    # Only the types this Envoy subscribed to: without TLS at the edge it asks for
    # no Secret, and the snapshot holds none (proxy.type() would add one).
    return {SHORT_NAMES[t]: s.version_acked for t, s in proxy.types.items() if t in ADS_ORDER}


def serving(controller: Controller) -> dict[str, str]:
    snapshot = controller.cache.snapshot
    assert snapshot is not None
    return {SHORT_NAMES[t]: v for t, v in snapshot.versions().items()}


async def in_sync(controller: Controller) -> bool:
    """The Envoy ACKed, on this controller, every type at the version it serves."""
    return acked(controller) == serving(controller)


async def acked_via_api(http: aiohttp.ClientSession, admin: SocketAddress) -> dict[str, Any]:
    """Per type, the version this Envoy ACKed, from a replica's /api/v1/router/proxies."""
    async with http.get(f"http://{admin}/api/v1/router/proxies") as response:
        proxies = (await response.json())["proxies"]
    by_node = {p["node_id"]: p for p in proxies}
    if NODE not in by_node:
        return {}
    return {name: s["version_acked"] for name, s in by_node[NODE]["resources"].items()}


async def churn(envoy: EnvoyProcess) -> dict[str, int]:
    stats = (await envoy.admin_json("/stats?format=json"))["stats"]
    values = {s["name"]: s.get("value") for s in stats if "name" in s}
    return {name: values[name] for name in CHURN_STATS}


async def endpoint_weight(envoy: EnvoyProcess, backend: str) -> int | None:
    dump = await envoy.admin_json("/config_dump?resource=dynamic_endpoint_configs&include_eds")
    for entry in dump["configs"]:
        for locality in entry["endpoint_config"].get("endpoints", []):
            for lb in locality.get("lb_endpoints", []):
                if lb["endpoint"].get("hostname") == backend:
                    return int(lb.get("load_balancing_weight", 1))
    return None


def weight_in(intent: Intent, backend: str) -> int:
    return next(b.weight for b in intent.backends() if b.name == backend)


def backend_url(controller_admin: SocketAddress, backend: str = "qdrant-primary") -> str:
    return f"http://{controller_admin}/api/v1/router/services/qdrant/backends/{backend}"


async def _true(value: bool) -> bool:
    return value


# ---- the tests -----------------------------------------------------------------------


async def test_write_through_replica_a_reaches_envoy_of_replica_b_within_1s(
    redis_server: RedisServer, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A weight change PATCHed to replica A is ACKed by the Envoy of replica B within
    1 s (Redis compare-and-set, pub/sub, B's publish, xDS push, Envoy ACK). Measured
    five times; the figures are printed."""
    settings = qdrant_only(redis_settings(redis_server))
    async with (
        running_controller(settings) as a,
        running_controller(moved(settings)) as b,
        running_envoy(settings, [b.xds_address], tmp_path) as envoy,
    ):
        await eventually(
            lambda: _true(len(b.health.verdicts) == 2), timeout_s=5
        )  # verdicts settled
        await eventually(lambda: in_sync(b), timeout_s=5)
        latencies = []
        for weight in range(11, 16):
            before = acked(b)

            async def served(w: int = weight, old: str | None = before["eds"]) -> bool:
                live = weight_in(b.store.intent, "qdrant-primary") == w
                return live and acked(b)["eds"] == serving(b)["eds"] != old

            started = time.monotonic()
            async with http.patch(backend_url(a.admin_address), json={"weight": weight}) as reply:
                assert reply.status == 200, await reply.text()
            await eventually(served, timeout_s=2, interval_s=0.001)
            latencies.append(time.monotonic() - started)
        assert await endpoint_weight(envoy, "qdrant-primary") == 15
    figures = ", ".join(f"{s * 1000:.1f}" for s in latencies)
    print(f"\nA -> B -> Envoy ACK: median {statistics.median(latencies) * 1000:.1f} ms ({figures})")
    assert max(latencies) < 1.0


async def test_envoy_fails_over_to_other_replica_with_no_failed_request_or_new_version(
    redis_server: RedisServer, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """One Envoy bootstrapped with replicas A and B, connected to A (a process). A is
    SIGKILLed while requests flow through the listener: none fails; Envoy reconnects
    to B, which serves the very versions A had sent, and Envoy changes no cluster or
    listener."""
    settings = qdrant_only(redis_settings(redis_server))
    other = moved(settings)
    async with (
        running_backends(settings, tmp_path),
        replica_process(settings, tmp_path) as replica_a,
        running_envoy(settings, [settings.xds_address, other.xds_address], tmp_path) as envoy,
        running_controller(other) as b,  # B starts only after Envoy is LIVE on A
    ):
        before: dict[str, Any] = {}

        async def agreed() -> bool:
            before.clear()
            before.update(await acked_via_api(http, settings.intent.admin))
            return before == serving(b)  # replicas agree (health verdicts settled)

        await eventually(agreed, timeout_s=10)
        assert acked(b) == {}  # Envoy is connected to A, not B
        churn_before = await churn(envoy)
        results: collections.Counter[str] = collections.Counter()
        stop_load = asyncio.Event()
        load = asyncio.create_task(load_until(http, settings, stop_load, results))
        load_started = time.monotonic()
        await asyncio.sleep(0.3)
        replica_a.kill()
        took = await eventually(lambda: in_sync(b), timeout_s=10, interval_s=0.01)
        await asyncio.sleep(0.5)  # keep the load on after the reconnect
        stop_load.set()
        await load
        load_s = time.monotonic() - load_started
        assert replica_a.returncode is not None
        after = acked(b)
        churn_after = await churn(envoy)
    failed = sum(n for status, n in results.items() if status != "200")
    print(
        f"\nfailover: Envoy in sync with B {took * 1000:.0f} ms after A was SIGKILLed; "
        f"{sum(results.values())} requests in {load_s:.1f} s of load, {failed} failed"
    )
    assert set(results) == {"200"} and results["200"] > 100, results
    assert after == before, "B sent other versions than A had"
    assert churn_after == churn_before, "Envoy changed configuration on reconnect"


async def load_until(
    http: aiohttp.ClientSession,
    settings: Settings,
    stop: asyncio.Event,
    results: collections.Counter[str],
    concurrency: int = 4,
) -> None:
    url = f"http://{settings.intent.listen}/api/v1/vectors/search"

    async def worker() -> None:
        while not stop.is_set():
            try:
                async with http.post(url, json=SEARCH_BODY) as response:
                    await response.read()
                    results[str(response.status)] += 1
            except aiohttp.ClientError as error:
                results[type(error).__name__] += 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))


async def test_redis_outage_keeps_envoy_served_refuses_writes_and_recovers(
    redis_server: RedisServer, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """redis-server stopped: traffic still flows, a PATCH answers 503 and changes
    nothing, /healthz answers 200 "degraded" and /readyz 503. redis-server restarted
    (empty) on the same port: the controller reconnects without a restart of its own,
    restores its copy after the recovery window, and a PATCH then succeeds and is
    ACKed by Envoy."""
    settings = qdrant_only(redis_settings(redis_server))
    async with (
        running_backends(settings, tmp_path),
        running_controller(settings) as controller,
        running_envoy(settings, [settings.xds_address], tmp_path) as envoy,
    ):
        await eventually(lambda: in_sync(controller), timeout_s=5)
        intent, versions = controller.store.intent, serving(controller)
        admin = controller.admin_address

        await redis_server.stop()
        async with http.patch(backend_url(admin), json={"weight": 7}) as reply:
            assert reply.status == 503
            refused = await reply.json()
            assert refused["error"] == "dependency_unavailable", refused
            assert refused["outcome"] == "not_stored", refused  # never sent: Redis is down
        assert controller.store.intent == intent and serving(controller) == versions
        code, health = await status_of(http, admin, "/healthz")
        assert code == 200, health  # liveness: restarting would not bring Redis back
        assert (health["status"], health["store"]) == ("degraded", "unavailable"), health
        assert "Redis unavailable" in health["reason"], health
        code, ready = await status_of(http, admin, "/readyz")
        assert code == 503 and not ready["ready"] and ready["store"] == "unavailable", ready
        url = f"http://{settings.intent.listen}/api/v1/vectors/search"
        async with http.post(url, json=SEARCH_BODY) as response:
            assert response.status == 200  # Envoy keeps the last configuration

        await redis_server.start()  # same port, empty
        took = await eventually(lambda: _true(controller.store.connected), timeout_s=5)

        async def ready() -> bool:  # after the recovery window: its copy is restored
            return (await status_of(http, admin, "/readyz"))[0] == 200

        await eventually(ready, timeout_s=15)
        assert (await status_of(http, admin, "/healthz"))[1]["status"] == "ok"
        async with http.patch(backend_url(admin), json={"weight": 7}) as reply:
            assert reply.status == 200, await reply.text()
            assert (await reply.json())["applied"] is True
        assert await endpoint_weight(envoy, "qdrant-primary") == 7
    print(f"\nstore reconnected {took * 1000:.0f} ms after redis-server came back")


async def status_of(
    http: aiohttp.ClientSession, admin: SocketAddress, path: str
) -> tuple[int, dict[str, Any]]:
    async with http.get(f"http://{admin}{path}") as response:
        body: dict[str, Any] = await response.json()
        return response.status, body

"""Observability end to end: the routing metrics against what clients saw, a
health-driven failover timed to the ACK, every Grafana query answered by a real
Prometheus scraping the controller and a real Envoy, and the spec's routing
test script."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import statistics
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.conftest import StackFactory
from tests.factories import SEARCH_BODY, local_settings
from tests.prometheus_support import PrometheusServer, has_data
from tests.support import eventually, send_many
from xds_server.demo import Stack
from xds_server.model.edits import set_strategy
from xds_server.model.intent import Health, Strategy

pytestmark = pytest.mark.envoy

ROOT = Path(__file__).resolve().parent.parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "xds-server.json"
SCRIPT = ROOT / "scripts" / "test_routing.sh"
SEARCH = "/api/v1/vectors/search"
QDRANT_BACKENDS = ("qdrant-primary", "qdrant-secondary")
EMBED = "/api/v1/embeddings"
CHAT = {"messages": [{"role": "user", "content": "hi"}]}
TRAFFIC = [
    (SEARCH, SEARCH_BODY),
    (EMBED, {"input": "hello"}),
    ("/api/v1/models/phi3/chat/completions", CHAT),
    ("/api/v1/models/hermes/chat/completions", CHAT),
    ("/api/v1/models/mixtral/chat/completions", CHAT),
]


def url(stack: Stack, path: str) -> str:
    return f"http://{stack.controller.store.intent.listen}{path}"


async def router_metrics(
    http: aiohttp.ClientSession, stack: Stack, query: str = ""
) -> dict[str, Any]:
    async with http.get(url(stack, f"/api/v1/router/metrics{query}")) as response:
        assert response.status == 200, await response.text()
        body: dict[str, Any] = await response.json()
        return body


async def envoy_rq_total(stack: Stack, cluster: str) -> dict[str, int]:
    """Envoy's own per-host rq_total right now (it restarts with each cluster rebuild)."""
    document = await stack.envoy.admin_json("/clusters?format=json")
    [found] = [c for c in document["cluster_statuses"] if c["name"] == cluster]
    return {
        h["hostname"]: sum(int(s.get("value", 0)) for s in h["stats"] if s["name"] == "rq_total")
        for h in found["host_statuses"]
    }


# --- the spec's routing metrics ------------------------------------------------------------------


def hook_reads(stack: Stack) -> int:
    """Pre-change readings the publisher's hook took itself (not an admin change's)."""
    assert stack.controller.telemetry is not None
    return stack.controller.telemetry.sampler.hook_reads


async def least_connections_through_the_admin_api(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    """The admin call's one reading before the change is the pre-change reading."""
    reads = hook_reads(stack)
    async with http.put(
        url(stack, "/api/v1/router/strategy"), json={"strategy": "least_connections"}
    ) as response:
        assert (
            response.status == 200
            and (await response.json())["strategy_change"]["strategy_applied"]
        )
    assert hook_reads(stack) == reads


async def least_connections_through_the_store(stack: Stack, _http: aiohttp.ClientSession) -> None:
    """As a config reload or another replica (through Redis) changes it: no admin call."""
    controller = stack.controller
    reads = hook_reads(stack)
    _, revision = await controller.store.update(
        lambda i: set_strategy(i, Strategy.LEAST_CONNECTIONS)
    )
    generation = await controller.publisher.wait_for_revision(revision)
    assert await controller.proxies.wait_until_applied(generation, 5) == []
    assert hook_reads(stack) == reads + 1  # nobody read for it: the publisher did


@pytest.mark.parametrize("stack", ["sotw"], indirect=True)
@pytest.mark.parametrize(
    "change", [least_connections_through_the_admin_api, least_connections_through_the_store]
)
async def test_metrics_totals_and_distribution_match_the_requests_sent(
    stack: Stack,
    http: aiohttp.ClientSession,
    change: Callable[[Stack, aiohttp.ClientSession], Awaitable[None]],
) -> None:
    """230 requests (200 qdrant, 30 embedding) with a strategy change in between,
    which rebuilds every cluster and restarts Envoy's per-host counters: the
    totals are exactly 230 and each backend's count is exactly what the
    backends answered (x-backend), percentages and variance follow from them.
    Whichever way the change came: the publisher reads the counters before it
    publishes a cluster change, unless the admin call that made it has just read
    them (its one reading before the change, telemetry/sampler.py)."""
    first = await send_many(http, url(stack, SEARCH), 120)
    embedded = await send_many(http, url(stack, EMBED), 30, json={"input": "x"})
    await change(stack, http)
    second = await send_many(http, url(stack, SEARCH), 80)
    seen = first + second + embedded
    assert sum(seen.values()) == 230 and all(k.startswith(("qdrant", "embed")) for k in seen)

    body = await router_metrics(http, stack)
    routing = body["routing_metrics"]
    assert (routing["total_requests"], routing["successful_requests"]) == (230, 230)
    assert (routing["failed_requests"], routing["success_rate"]) == (0, 100.0)
    assert routing["requests_per_second"] > 0 and routing["window_s"] > 0
    spread = body["load_balancing"]["backend_distribution"]
    counted = {name: entry["requests"] for name, entry in spread.items() if entry["requests"]}
    assert counted == dict(seen)
    # Envoy itself only remembers the requests since the rebuild.
    assert await envoy_rq_total(stack, "qdrant") == {n: second[n] for n in QDRANT_BACKENDS}
    shares = [spread[n]["percentage"] for n in QDRANT_BACKENDS]
    assert shares == [round(100 * seen[n] / 200, 2) for n in QDRANT_BACKENDS]
    variance = body["load_balancing"]["distribution_variance_by_service"]["qdrant"]
    assert variance == round(statistics.pvariance(shares), 2)
    assert body["load_balancing"]["strategy"] == "least_connections"
    assert body["circuit_breakers"]["qdrant-primary"] == {
        "status": "closed",
        "failure_count": 0,
        "last_failure": None,
    }
    only = await router_metrics(http, stack, "?service=qdrant")
    assert only["routing_metrics"]["total_requests"] == 200
    assert set(only["load_balancing"]["backend_distribution"]) == set(QDRANT_BACKENDS)


async def test_health_verdict_change_is_a_failover_timed_to_the_last_ack(
    make_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    """qdrant-primary's /health starts failing: the probe marks it unhealthy, Envoy
    moves its traffic, and the metrics count one successful health_check failover
    whose time (verdict -> Envoy's ACK of the EDS update) is measured."""
    settings = local_settings(
        worker_threads=2, health_check_interval_s=0.5, health_check_timeout_s=0.4
    )
    stack = await make_stack(settings)
    primary = stack.controller.store.intent.service("qdrant").backend("qdrant-primary")  # type: ignore[union-attr]
    assert primary is not None
    fault = f"http://{primary.address}:{primary.port}/_control/fault"

    async def events() -> dict[str, Any]:
        failover: dict[str, Any] = (await router_metrics(http, stack))["failover_events"]
        return failover

    async def healthy() -> bool:
        names = [b.name for s in settings.intent.services for b in s.backends]
        return all(stack.controller.health.verdicts.get(n) is Health.HEALTHY for n in names)

    await eventually(healthy, 5)
    assert (await events())["total_failovers"] == 0
    async with http.post(fault, json={"health_status": 503}) as response:
        assert response.status == 200
    try:
        await eventually(lambda: _counted(events, "health_check"), 5)
        failover = await events()
        seen = await send_many(http, url(stack, SEARCH), 20)
    finally:
        async with http.post(fault, json={"health_status": None}) as response:
            assert response.status == 200
    assert (failover["total_failovers"], failover["successful_failovers"]) == (1, 1)
    assert 0 < failover["avg_failover_time_ms"] < 1000
    assert failover["last_failover"] is not None
    [event] = failover["recent"]
    assert (event["source"], event["backend"], event["successful"]) == (
        "health_check",
        "qdrant-primary",
        True,
    )
    assert seen == collections.Counter({"qdrant-secondary": 20})


async def _counted(events: Any, source: str) -> bool:
    return bool((await events())["by_source"][source] >= 1)


# --- Prometheus and the Grafana dashboard --------------------------------------------------------


DELAY_MS = 3  # every backend's answer, for the mean response time to have a known floor


def dashboard_queries() -> list[str]:
    """Every PromQL query of the dashboard; every panel has at least one."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert len(panels) >= 13 and all(panel.get("targets") for panel in panels)
    return [target["expr"] for panel in panels for target in panel["targets"]]


@contextlib.asynccontextmanager
async def traffic(http: aiohttp.ClientSession, stack: Stack) -> AsyncIterator[list[int]]:
    """Requests to every service, one after the other, while the block runs."""
    statuses: list[int] = []
    stop = asyncio.Event()

    async def loop() -> None:
        for i in range(100_000):  # bounded; stopped long before
            if stop.is_set():
                return
            path, body = TRAFFIC[i % len(TRAFFIC)]
            async with http.post(url(stack, path), json=body) as response:
                await response.read()
                statuses.append(response.status)
            await asyncio.sleep(0.005)

    task = asyncio.create_task(loop())
    try:
        yield statuses
    finally:
        stop.set()
        await task


async def test_every_dashboard_query_returns_data_from_a_real_prometheus(
    make_stack: StackFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """A real Prometheus scrapes the controller's /metrics and Envoy's
    /stats/prometheus every second under traffic (and one config change, for
    push-to-ACK): every query of the Grafana dashboard returns a finite value,
    per-backend series carry the hostname label, and the routing metrics'
    mean response time is filled from Envoy's histogram: every backend answers
    after DELAY_MS, so the mean is at least that (on loopback without the delay
    Envoy records most requests as 0 ms, its resolution being whole ms)."""
    settings = local_settings(
        worker_threads=2, health_check_interval_s=1.0, health_check_timeout_s=0.5
    )
    stack = await make_stack(settings)
    targets = {
        "xds-server": ("/metrics", str(stack.controller.admin_address)),
        "envoy": ("/stats/prometheus", str(stack.envoy.admin)),
    }
    for backend in (b for s in settings.intent.services for b in s.backends):
        fault = f"http://{backend.address}:{backend.port}/_control/fault"
        async with http.post(fault, json={"delay_ms": DELAY_MS}) as response:
            assert response.status == 200
    prometheus = PrometheusServer(tmp_path, targets)
    await prometheus.start()
    queries = dashboard_queries()
    try:
        async with traffic(http, stack) as statuses:

            async def scraped() -> bool:
                up = await prometheus.query(http, "up")
                return len(up) == 2 and all(s["value"][1] == "1" for s in up)

            await eventually(scraped, 15)
            async with http.put(
                url(stack, "/api/v1/router/strategy"), json={"strategy": "random"}
            ) as response:
                assert response.status == 200

            async def dead_panels() -> list[str]:
                answers = [await prometheus.query(http, q) for q in queries]
                return [q for q, a in zip(queries, answers, strict=True) if not has_data(a)]

            for _ in range(40):  # Envoy publishes histograms at each stats flush (1 s)
                dead = await dead_panels()
                if not dead:
                    break
                await asyncio.sleep(1)
            hostnames = await prometheus.query(
                http, "sum by (envoy_endpoint_hostname) (envoy_cluster_endpoint_rq_total)"
            )
            routing = (await router_metrics(http, stack))["routing_metrics"]
    finally:
        await prometheus.stop()
    assert dead == [], dead
    assert statuses and set(statuses) == {200}
    backends = {b.name for s in settings.intent.services for b in s.backends}
    assert {s["metric"].get("envoy_endpoint_hostname") for s in hostnames} == backends
    assert routing["avg_response_time_ms"] is not None
    assert DELAY_MS <= routing["avg_response_time_ms"] < 1000, routing


# --- the spec's routing test script ---------------------------------------------------------


async def run_script(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        str(SCRIPT),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), 120)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, output.decode()


@pytest.mark.parametrize("stack", ["sotw"], indirect=True)
async def test_routing_script_passes_against_the_stack(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    """scripts/test_routing.sh runs every validation command of the spec against
    the stack's listener and reports each as passed; the strategy is put back.
    Its two experiments then show in the metrics: two successful failover
    events, and the primary's failures counted by its circuit breaker."""
    code, output = await run_script(url(stack, ""))
    assert code == 0, output
    assert "9 passed, 0 failed" in output, output
    for check in ("round robin", "circuit breaker", "failover", "load test", "routing metrics"):
        assert f"PASS  {check}" in output, output
    assert stack.controller.store.intent.default_strategy.value == "round_robin"
    body = await router_metrics(http, stack)
    events = body["failover_events"]
    assert events["by_source"] == {
        "health_check": 0,
        "failover_test": 1,
        "circuit_breaker_test": 1,
    }
    assert events["successful_failovers"] == 2 and events["avg_failover_time_ms"] > 0
    breaker = body["circuit_breakers"]["qdrant-primary"]
    threshold = stack.controller.store.intent.policies.circuit_breaker_threshold
    assert breaker["failure_count"] >= threshold and breaker["last_failure"] is not None


async def test_routing_script_says_what_failed() -> None:
    """Against an address where nothing listens the script says FAIL and exits 1."""
    from xds_server.proxy.processes import free_port

    code, output = await run_script(f"http://127.0.0.1:{free_port()}")
    assert code == 1, output
    assert "FAIL  router reachable" in output and "0 passed, 1 failed" in output

"""router.health_checker: envoy end to end: three real Envoys 1.40 on HDS to one
controller, the spec's seven sample backends. Each backend is assigned to two
Envoys, evenly; their checks make the verdicts (the report's `checked_by` names
them, Prometheus counts them); a killed backend is unhealthy within one interval
of its first failed check; an Envoy that leaves hands its backends to the others.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.conftest import StackFactory
from tests.e2e.test_resilience import health_report
from tests.support import envoy_running, eventually
from xds_server.admin.health_report import display_keys
from xds_server.demo import DEMO_NODE_ID, Stack, local_settings
from xds_server.health.delegation import REPORT_INTERVAL_S
from xds_server.model.health_checker import HealthChecker, confirmation_gap_s
from xds_server.model.intent import SocketAddress
from xds_server.proxy.bootstrap import make_bootstrap
from xds_server.proxy.envoy_process import EnvoyProcess
from xds_server.proxy.processes import free_port
from xds_server.settings import Settings

pytestmark = pytest.mark.envoy

INTERVAL_S, TIMEOUT_S, UNHEALTHY_AFTER = 1.0, 0.4, 2
OTHERS = ("envoy-hds-b", "envoy-hds-c")


def hds_settings() -> Settings:
    return dataclasses.replace(
        local_settings(worker_threads=1),
        health_check_interval_s=INTERVAL_S,
        health_check_timeout_s=TIMEOUT_S,
        health_check_unhealthy_threshold=UNHEALTHY_AFTER,
        health_checker=HealthChecker.ENVOY,
        health_checkers_per_backend=2,
    )


@contextlib.asynccontextmanager
async def hds_envoy(stack: Stack, node_id: str, workdir: Path) -> AsyncIterator[EnvoyProcess]:
    """Another Envoy with hds_config on the stack's controller, stopped by PID."""
    admin = SocketAddress("127.0.0.1", free_port())
    bootstrap = make_bootstrap(
        node_id=node_id, xds=stack.controller.xds_address, envoy_admin=admin, hds=True
    )
    async with envoy_running(bootstrap, admin, workdir) as envoy:
        yield envoy


def entries(stack: Stack, report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Backend name -> its entry in the report (shown under its display key)."""
    flat: dict[str, dict[str, Any]] = {}
    for service in stack.controller.store.intent.services:
        group = report["health_status"][service.display_group]
        for key, backend in display_keys(service, {}).items():
            flat[backend.name] = group[key]
    return flat


async def backend_entries(http: aiohttp.ClientSession, stack: Stack) -> dict[str, dict[str, Any]]:
    return entries(stack, await health_report(http, stack))


async def checked_by(http: aiohttp.ClientSession, stack: Stack) -> dict[str, list[str]]:
    return {name: e["checked_by"] for name, e in (await backend_entries(http, stack)).items()}


async def envoy_checkers_metric(http: aiohttp.ClientSession, stack: Stack, backend: str) -> float:
    async with http.get(f"http://{stack.controller.admin_address}/metrics") as response:
        text = await response.text()
    pattern = (
        rf'^xds_server_backend_checkers\{{backend="{backend}",checker="envoy",[^}}]*\}} (\S+)$'
    )
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f"no xds_server_backend_checkers for {backend}"
    return float(match.group(1))


async def test_envoys_check_two_each_a_killed_backend_flips_and_a_leaver_is_replaced(
    make_stack: StackFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    stack = await make_stack(hds_settings())
    nodes = {DEMO_NODE_ID, *OTHERS}
    async with contextlib.AsyncExitStack() as envoys:
        others = {
            node: await envoys.enter_async_context(hds_envoy(stack, node, tmp_path / node))
            for node in OTHERS
        }

        async def all_by_two_envoys() -> bool:
            seen = await checked_by(http, stack)
            return all(len(c) == 2 and set(c) <= nodes for c in seen.values())

        await eventually(all_by_two_envoys, timeout_s=15)
        assert set(stack.controller.hds.nodes()) == nodes
        assignment = stack.controller.delegation.assignment  # type: ignore[union-attr]
        loads = Counter(node for checkers in assignment.values() for node in checkers)
        print(f"\nHDS loads over three Envoys: {dict(sorted(loads.items()))}")
        assert set(loads) == nodes and max(loads.values()) - min(loads.values()) <= 1, loads
        assert {k: tuple(sorted(v)) for k, v in (await checked_by(http, stack)).items()} == {
            k: tuple(v) for k, v in assignment.items()
        }
        assert await envoy_checkers_metric(http, stack, "qdrant-primary") == 2
        report = await backend_entries(http, stack)
        primary = report["qdrant-primary"]
        assert primary["status"] == "healthy" and primary["response_time_ms"] is None
        assert set(primary["last_report"]) == set(primary["checked_by"])

        # A backend that dies: its two Envoys fail it within one interval of their
        # first failed check (the confirmation gap), plus a report interval.
        stack.backends["qdrant-primary"].kill()
        killed = time.monotonic()

        async def primary_unhealthy() -> bool:
            entry = (await backend_entries(http, stack))["qdrant-primary"]
            return bool(entry["status"] == "unhealthy")

        await eventually(primary_unhealthy, timeout_s=10, interval_s=0.05)
        took = time.monotonic() - killed
        entry = (await backend_entries(http, stack))["qdrant-primary"]
        print(f"\nkilled backend unhealthy by HDS after {took:.2f} s, by {entry['checked_by']}")
        gap = confirmation_gap_s(INTERVAL_S, TIMEOUT_S, UNHEALTHY_AFTER)
        # Measured 1.96-2.00 s; the slack is for a loaded CI machine.
        assert took <= INTERVAL_S + gap + REPORT_INTERVAL_S + 2.0, took
        assert sorted(entry["checked_by"]) == sorted(assignment["qdrant-primary"])
        assert "HDS" in entry["error"]

        # An Envoy leaves: within an interval every backend is checked by the two left.
        leaver = OTHERS[0]
        await others[leaver].stop()
        left = nodes - {leaver}

        async def reassigned() -> bool:
            seen = await checked_by(http, stack)
            alive = {k: v for k, v in seen.items() if k != "qdrant-primary"}
            return all(set(c) == left for c in alive.values())

        started = time.monotonic()
        await eventually(reassigned, timeout_s=10, interval_s=0.05)
        print(f"reassigned after the Envoy left in {time.monotonic() - started:.2f} s")
        assert leaver not in stack.controller.hds.nodes()


async def test_the_demo_stack_s_own_envoy_checks_every_backend_alone(
    make_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    """The demo's stack with router.health_checker: envoy and nothing else: its one
    Envoy (bootstrapped with hds_config by the demo) checks all seven backends,
    and the report names it."""
    stack = await make_stack(hds_settings())

    async def all_by_the_demo_envoy() -> bool:
        seen = await checked_by(http, stack)
        return len(seen) == 7 and all(c == [DEMO_NODE_ID] for c in seen.values())

    await eventually(all_by_the_demo_envoy, timeout_s=15)

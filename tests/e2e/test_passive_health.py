"""Envoy's passive view end to end: two real Envoys 1.40 on one controller, real
sample backends. A backend that fails under load is ejected by outlier
detection; the health report names the proxies ejecting it (`ejected_by`, with
`since`), Prometheus counts them, and a backend that died is unhealthy in the
report within one sampler reading plus a probe of its ejection, long before its
next regular probe. An ejection whose probe passes changes no verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import signal
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.backends import backend, control, set_fault
from tests.e2e.conftest import StackFactory
from tests.e2e.test_resilience import (
    EMBED,
    OUTLIER_SWEEP_S,
    SEARCH,
    all_healthy,
    health_report,
    load,
    resilience_settings,
    url,
)
from tests.support import envoy_running, eventually
from xds_server.demo import DEMO_NODE_ID, Stack, start_backend
from xds_server.model.intent import SocketAddress
from xds_server.proxy.bootstrap import make_bootstrap
from xds_server.proxy.envoy_process import EnvoyProcess
from xds_server.proxy.processes import ChildProcess, free_port
from xds_server.settings import Settings
from xds_server.telemetry.sampler import SAMPLE_INTERVAL_S

pytestmark = pytest.mark.envoy

# Probes far apart (the default is 30 s), so a flip that waits for the next probe
# is told apart from one that follows the ejection; the breaker opens after 3
# failures and stays open long enough to be read.
INTERVAL_S, TIMEOUT_S = 6.0, 0.25
EJECTION_S = 8.0
SECOND_NODE = "envoy-second"
LOOPBACK = "127.0.0.1"
POLL_S = 0.05


def passive_settings() -> Settings:
    """The resilience file's settings, with probes INTERVAL_S apart."""
    return dataclasses.replace(
        resilience_settings(circuit_breaker_timeout_s=EJECTION_S),
        health_check_interval_s=INTERVAL_S,
        health_check_timeout_s=TIMEOUT_S,
    )


@contextlib.asynccontextmanager
async def second_envoy(stack: Stack, workdir: Path) -> AsyncIterator[EnvoyProcess]:
    """Another Envoy on the same controller (its listener shares the port: Envoy sets
    SO_REUSEPORT), stopped by PID at the end."""
    admin = SocketAddress(LOOPBACK, free_port())
    bootstrap = make_bootstrap(
        node_id=SECOND_NODE, xds=stack.controller.xds_address, envoy_admin=admin
    )
    async with envoy_running(bootstrap, admin, workdir) as envoy:
        yield envoy


async def entry(http: aiohttp.ClientSession, stack: Stack, group: str, key: str) -> Any:
    return (await health_report(http, stack))["health_status"][group][key]


async def metric(http: aiohttp.ClientSession, stack: Stack, name: str, backend: str) -> float:
    """One series of the controller's /metrics exposition (what Prometheus scrapes)."""
    async with http.get(f"http://{stack.controller.admin_address}/metrics") as response:
        text = await response.text()
    pattern = rf'^{name}\{{backend="{re.escape(backend)}",service="[^"]+"\}} (\S+)$'
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f"no {name} for {backend}"
    return float(match.group(1))


async def health_probes(http: aiohttp.ClientSession, stack: Stack, name: str) -> int:
    async with http.get(control(stack, name, "stats")) as response:
        return int((await response.json())["health_requests"])


async def just_probed(http: aiohttp.ClientSession, stack: Stack, name: str) -> None:
    """Return right after the controller's regular probe of `name`: the next one is
    a whole interval away."""
    seen = await health_probes(http, stack, name)

    async def probed() -> bool:
        return await health_probes(http, stack, name) > seen

    await eventually(probed, timeout_s=INTERVAL_S + 2, interval_s=0.01)


def stamp(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def test_a_killed_backend_is_ejected_named_and_unhealthy_before_its_next_probe(
    make_stack: StackFactory, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """SIGKILL of qdrant-primary under load, right after its probe: Envoy ejects it,
    `ejected_by` names the ejecting proxies (of the two connected) with a `since`
    after the kill, the gauge counts them, and the report says unhealthy within
    one sampler interval plus a probe, not at the next regular probe (INTERVAL_S
    later). Restarted, its ejection ends and `ejected_by` empties."""
    stack = await make_stack(passive_settings())
    restarted: ChildProcess | None = None
    async with second_envoy(stack, tmp_path / "second"):
        await eventually(lambda: _true(len(stack.controller.proxies.connected()) == 2), 10)
        await all_healthy(http, stack)
        try:
            async with load(http, url(stack, SEARCH)):
                await asyncio.sleep(0.5)
                await just_probed(http, stack, "qdrant-primary")
                stack.backends["qdrant-primary"].kill()
                killed_at, killed_wall = time.monotonic(), time.time()

                async def unhealthy() -> bool:
                    return (await entry(http, stack, "qdrant", "primary"))["status"] == "unhealthy"

                await eventually(unhealthy, timeout_s=INTERVAL_S + 3, interval_s=POLL_S)
                took = time.monotonic() - killed_at
                primary = await entry(http, stack, "qdrant", "primary")
                ejecting = await metric(
                    http, stack, "xds_server_backend_ejecting_proxies", "qdrant-primary"
                )
            print(f"\nkilled backend unhealthy in the report after {took:.2f} s")
            assert took <= SAMPLE_INTERVAL_S + TIMEOUT_S + 0.75, took
            nodes = [e["node"] for e in primary["ejected_by"]]
            assert nodes and set(nodes) <= {DEMO_NODE_ID, SECOND_NODE}, primary
            for ejection in primary["ejected_by"]:
                assert killed_wall - 0.05 <= stamp(ejection["since"]) <= time.time()
            assert ejecting >= 1
            seen = await metric(
                http, stack, "xds_server_outlier_ejections_seen_total", "qdrant-primary"
            )
            assert seen >= len(nodes)
            restarted = await start_backend(
                backend(stack, "qdrant-primary"), "qdrant", stack.envoy.workdir
            )

            async def readmitted() -> bool:
                return (await entry(http, stack, "qdrant", "primary"))["ejected_by"] == []

            bound = EJECTION_S + OUTLIER_SWEEP_S + SAMPLE_INTERVAL_S + 2
            await eventually(readmitted, timeout_s=bound, interval_s=POLL_S)
            assert (
                await metric(http, stack, "xds_server_backend_ejecting_proxies", "qdrant-primary")
                == 0
            )
        finally:
            if restarted is not None:
                await restarted.stop()


async def test_an_ejection_whose_probe_passes_changes_no_verdict(
    make_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    """embedding-gpu0 answers 503 to traffic but passes its health probe: Envoy
    ejects it and the report shows who does, while its status stays healthy
    through the early probe its ejection asks for (EDS health does not flap on
    an ejection alone).
    Once the fault is gone, the ejection ends and `ejected_by` empties."""
    stack = await make_stack(passive_settings())
    await all_healthy(http, stack)
    await set_fault(http, stack, "embedding-gpu0", status=503)
    async with load(http, url(stack, EMBED), workers=4, body={"input": "x"}):

        async def named() -> bool:
            return bool((await entry(http, stack, "embedding", "gpu0"))["ejected_by"])

        await eventually(named, timeout_s=SAMPLE_INTERVAL_S + 3, interval_s=POLL_S)
        ejected_entry = await entry(http, stack, "embedding", "gpu0")
        await asyncio.sleep(1.0)  # the early probe has run by now
        after = await entry(http, stack, "embedding", "gpu0")
    assert [e["node"] for e in ejected_entry["ejected_by"]] == [DEMO_NODE_ID]
    assert ejected_entry["status"] == after["status"] == "healthy"
    await set_fault(http, stack, "embedding-gpu0", status=None)

    async def readmitted() -> bool:
        return (await entry(http, stack, "embedding", "gpu0"))["ejected_by"] == []

    bound = EJECTION_S + OUTLIER_SWEEP_S + SAMPLE_INTERVAL_S + 2
    await eventually(readmitted, timeout_s=bound, interval_s=POLL_S)
    assert (await entry(http, stack, "embedding", "gpu0"))["status"] == "healthy"


async def _true(value: bool) -> bool:
    return value


FAST_INTERVAL_S = 2.0  # probes for the hung-backend test: a few intervals stay short


async def test_a_hung_backend_is_unhealthy_within_one_interval_of_its_first_failed_probe(
    make_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    """qdrant-secondary SIGSTOPped without traffic (nothing ejects it; each probe
    times out, an ambiguous failure that needs the unhealthy threshold, 3): the
    report says unhealthy within one probe interval of the first failed probe,
    not `threshold - 1` intervals later. SIGCONT makes it healthy again."""
    settings = dataclasses.replace(passive_settings(), health_check_interval_s=FAST_INTERVAL_S)
    stack = await make_stack(settings)
    await all_healthy(http, stack)
    child = stack.backends["qdrant-secondary"]
    os.kill(child.pid, signal.SIGSTOP)
    try:

        async def failed_once() -> bool:
            return (await entry(http, stack, "qdrant", "secondary")).get("error") == "timeout"

        await eventually(failed_once, timeout_s=FAST_INTERVAL_S + 2, interval_s=POLL_S)
        first_failure = time.monotonic()

        async def unhealthy() -> bool:
            return (await entry(http, stack, "qdrant", "secondary"))["status"] == "unhealthy"

        await eventually(unhealthy, timeout_s=4 * FAST_INTERVAL_S, interval_s=POLL_S)
        took = time.monotonic() - first_failure
        print(f"\nhung backend unhealthy {took:.2f} s after its first failed probe")
        assert took <= FAST_INTERVAL_S + POLL_S + 0.2, took
    finally:
        os.kill(child.pid, signal.SIGCONT)
    await eventually(
        lambda: _status_is(http, stack, "qdrant", "secondary", "healthy"),
        timeout_s=3 * FAST_INTERVAL_S + 2,
    )


async def _status_is(
    http: aiohttp.ClientSession, stack: Stack, group: str, key: str, status: str
) -> bool:
    return bool((await entry(http, stack, group, key))["status"] == status)

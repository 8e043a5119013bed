"""gRPC health probes (grpc.health.v1.Health/Check) against the real sample gRPC
backend on loopback, and the checker judging a gRPC service with them."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from envoy.config.core.v3 import health_check_pb2
from envoy.config.endpoint.v3 import endpoint_pb2

from tests.factories import FAST_POLICY, local_settings, running_controller
from tests.support import eventually
from xds_server.admin.health_report import health_report
from xds_server.app import Controller
from xds_server.demo import sample_kind
from xds_server.demo import start_backend as start_backend_process
from xds_server.health.checker import HealthChecker
from xds_server.health.grpc_probe import GrpcProber
from xds_server.model.intent import Backend, Health, Intent, Protocol, Service
from xds_server.proxy.processes import free_port, start_process
from xds_server.resources import ENDPOINT
from xds_server.samples.backend import make_app
from xds_server.samples.grpc_sample import SERVICE, set_serving, start_backend
from xds_server.store.memory import MemoryStore
from xds_server.translate import translate

TIMEOUT_S = 0.5
# FAST_POLICY's thresholds; a timeout that a fresh channel on a busy host meets.
POLICY = dataclasses.replace(FAST_POLICY, interval_s=0.3, timeout_s=0.25)


@pytest.fixture
async def greeter() -> AsyncIterator[Backend]:
    """A sample gRPC backend in-process on a free loopback port, SERVING."""
    server, port = await start_backend("greeter-a")
    yield Backend("greeter-a", "127.0.0.1", port)
    await server.stop(None)


async def test_serving_passes_and_measures_time(greeter: Backend) -> None:
    result = await GrpcProber("", TIMEOUT_S)(greeter)
    assert result.ok and result.error is None
    assert 0 < result.elapsed_s < TIMEOUT_S


async def test_a_named_health_service_is_asked(greeter: Backend) -> None:
    assert (await GrpcProber(SERVICE, TIMEOUT_S)(greeter)).ok
    unknown = await GrpcProber("no.such.Service", TIMEOUT_S)(greeter)
    assert not unknown.ok and unknown.definitive
    assert unknown.error is not None and "SERVICE_UNKNOWN" in unknown.error


async def test_not_serving_is_a_definitive_failure_and_flips_back(greeter: Backend) -> None:
    address = f"127.0.0.1:{greeter.port}"
    await set_serving(address, "NOT_SERVING")
    for service in ("", SERVICE):
        result = await GrpcProber(service, TIMEOUT_S)(greeter)
        assert (result.ok, result.definitive, result.error) == (
            False,
            True,
            "gRPC health NOT_SERVING",
        )
    await set_serving(address, "SERVING")
    assert (await GrpcProber("", TIMEOUT_S)(greeter)).ok


async def test_a_backend_started_not_serving_fails() -> None:
    server, port = await start_backend("greeter-b", serving=False)
    try:
        result = await GrpcProber("", TIMEOUT_S)(Backend("greeter-b", "127.0.0.1", port))
    finally:
        await server.stop(None)
    assert not result.ok and result.error == "gRPC health NOT_SERVING"


async def test_refused_connection_is_definitive(refusing_port: int) -> None:
    result = await GrpcProber("", TIMEOUT_S)(Backend("gone", "127.0.0.1", refusing_port))
    assert not result.ok and result.definitive
    assert result.error is not None and result.error.startswith("gRPC UNAVAILABLE")


async def test_hung_backend_times_out_ambiguously(silent_port: int) -> None:
    result = await GrpcProber("", TIMEOUT_S)(Backend("hung", "127.0.0.1", silent_port))
    assert (result.ok, result.definitive, result.error) == (False, False, "timeout")


async def test_an_http_backend_is_no_grpc_health_server() -> None:
    """Something that is not a gRPC server: no SERVING answer, so no pass."""
    runner = web.AppRunner(make_app("svc-a", "qdrant"))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        result = await GrpcProber("", TIMEOUT_S)(Backend("svc-a", "127.0.0.1", port))
    finally:
        await runner.cleanup()
    assert not result.ok and result.error is not None


# --- the checker on a gRPC service -------------------------------------------------------


def eds_health(intent: Intent, verdicts: dict[str, Health]) -> dict[str, Any]:
    """Endpoint hostname -> EDS health_status name, as the translator publishes it."""
    statuses: dict[str, Any] = {}
    for assignment in translate(intent, verdicts)[ENDPOINT].values():
        for locality in assignment.endpoints:
            for endpoint in locality.lb_endpoints:
                name = health_check_pb2.HealthStatus.Name(endpoint.health_status)
                statuses[endpoint.endpoint.hostname] = name
    return statuses


async def test_grpc_service_turns_healthy_then_a_not_serving_backend_unhealthy() -> None:
    """Two SERVING sample backends: both healthy, overall healthy. One flipped to
    NOT_SERVING is unhealthy within the thresholds (definitive: the next probe),
    and its EDS health_status flips with it."""
    started = [await start_backend(name) for name in ("greeter-a", "greeter-b")]
    backends = tuple(
        Backend(name, "127.0.0.1", port)
        for name, (_, port) in zip(("greeter-a", "greeter-b"), started, strict=True)
    )
    intent = Intent(services=(Service("greeter", (), backends, protocol=Protocol.GRPC),))
    verdicts: dict[str, Health] = {}
    checker = HealthChecker(MemoryStore(intent), verdicts, lambda: None, POLICY)
    task = asyncio.create_task(checker.run())
    try:
        both = {"greeter-a": Health.HEALTHY, "greeter-b": Health.HEALTHY}
        await eventually(lambda: _equal(verdicts, both), timeout_s=2)
        assert health_report(intent, checker.states)["overall_health"] == "healthy"
        assert eds_health(intent, verdicts) == {"greeter-a": "HEALTHY", "greeter-b": "HEALTHY"}

        await set_serving(f"127.0.0.1:{backends[1].port}", "NOT_SERVING")
        flipped = {"greeter-a": Health.HEALTHY, "greeter-b": Health.UNHEALTHY}
        # One interval plus the timeout: a NOT_SERVING answer needs no threshold.
        await eventually(
            lambda: _equal(verdicts, flipped),
            timeout_s=POLICY.interval_s + POLICY.timeout_s + 1,
        )
        assert checker.states["greeter-b"].last is not None
        assert checker.states["greeter-b"].last.error == "gRPC health NOT_SERVING"
        assert eds_health(intent, verdicts) == {"greeter-a": "HEALTHY", "greeter-b": "UNHEALTHY"}
        assert health_report(intent, checker.states)["overall_health"] != "healthy"
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for server, _ in started:
            await server.stop(None)


async def _equal(verdicts: dict[str, Health], expected: dict[str, Health]) -> bool:
    return verdicts == expected


# --- the sample as the demo runs it, and its command line ---------------------------------


async def test_the_demos_grpc_sample_passes_then_fails_when_told(tmp_path: Path) -> None:
    """The demo starts the gRPC sample (in its own process) for a gRPC service: it
    passes the gRPC health check; `set-serving NOT_SERVING` makes it fail."""
    backend = Backend("greeter-a", "127.0.0.1", free_port())
    service = Service("greeter", (), (backend,), protocol=Protocol.GRPC)
    child = await start_backend_process(backend, sample_kind(service), tmp_path)
    try:
        assert (await GrpcProber("", TIMEOUT_S)(backend)).ok
        argv = [sys.executable, "-m", "xds_server.samples.grpc_sample", "set-serving"]
        argv += ["--target", f"127.0.0.1:{backend.port}", "NOT_SERVING"]
        control = await start_process(argv, ready_line_prefix=None, timeout_s=0)
        try:
            assert await control.wait(20.0) == 0, control.output_tail()
        finally:
            await control.stop()
        result = await GrpcProber("", TIMEOUT_S)(backend)
        assert (result.ok, result.error) == (False, "gRPC health NOT_SERVING")
    finally:
        await child.stop()


# --- a running controller --------------------------------------------------------------


async def test_controller_reports_a_grpc_service_healthy_and_publishes_the_flip() -> None:
    """A real controller (store, checker, publisher, admin API): a gRPC service of
    two SERVING samples is overall healthy in /api/v1/router/health (main said
    "degraded": both unknown); one flipped to NOT_SERVING is reported unhealthy
    and published UNHEALTHY in the EDS snapshot Envoy and gRPC clients get."""
    started = [await start_backend(name) for name in ("greeter-a", "greeter-b")]
    backends = tuple(
        Backend(name, "127.0.0.1", port)
        for name, (_, port) in zip(("greeter-a", "greeter-b"), started, strict=True)
    )
    greeter = Service("greeter", (), backends, protocol=Protocol.GRPC)
    base = local_settings()
    settings = dataclasses.replace(
        base,
        intent=dataclasses.replace(base.intent, services=(greeter,)),
        health_check_interval_s=POLICY.interval_s,
        health_check_timeout_s=POLICY.timeout_s,
    )
    try:
        async with (
            running_controller(settings) as controller,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
        ):
            url = f"http://{controller.admin_address}/api/v1/router/health"

            async def report() -> dict[str, Any]:
                async with http.get(url) as response:
                    body: dict[str, Any] = await response.json()
                    return body

            async def overall(expected: str) -> bool:
                return (await report())["overall_health"] == expected

            await eventually(lambda: overall("healthy"), timeout_s=5)
            assert published_health(controller) == {"greeter-a": "HEALTHY", "greeter-b": "HEALTHY"}

            await set_serving(f"127.0.0.1:{backends[1].port}", "NOT_SERVING")

            async def flipped() -> bool:
                return published_health(controller) == {
                    "greeter-a": "HEALTHY",
                    "greeter-b": "UNHEALTHY",
                }

            await eventually(flipped, timeout_s=POLICY.interval_s + POLICY.timeout_s + 2)
            entry = (await report())["health_status"]["greeter"]["b"]
            assert entry["status"] == "unhealthy", entry
    finally:
        for server, _ in started:
            await server.stop(None)


def published_health(controller: Controller) -> dict[str, str]:
    snapshot = controller.cache.snapshot
    assert snapshot is not None
    endpoints = snapshot.of(ENDPOINT)
    assert endpoints is not None
    assignment = endpoints.resources["greeter"].message
    assert isinstance(assignment, endpoint_pb2.ClusterLoadAssignment)
    return {
        endpoint.endpoint.hostname: health_check_pb2.HealthStatus.Name(endpoint.health_status)
        for locality in assignment.endpoints
        for endpoint in locality.lb_endpoints
    }

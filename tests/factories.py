"""Builders shared by the tests: settings on free loopback ports, intents, probe
results, and controllers running on those settings.

Fixtures stay in the conftest files and build with these. Changing an intent is
not here: tests use xds_server.model.edits, as the admin API does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from tests.support import finished
from xds_server.app import Controller
from xds_server.demo import SEARCH_BODY as SEARCH_BODY
from xds_server.demo import local_settings as local_settings
from xds_server.health.verdict import HealthPolicy, ProbeResult
from xds_server.model.intent import Backend, Intent, Service, Strategy
from xds_server.settings import Settings

if TYPE_CHECKING:
    from tests.redis_support import RedisServer

LOOPBACK = "127.0.0.1"
# For `xds-server` subprocesses: read no `.env` from the working directory, so a
# developer's own file cannot change what a test runs.
NO_DOT_ENV = ("--env-file", "/dev/null")

# ---- settings ----------------------------------------------------------------------------


def redis_settings(server: RedisServer, base: Settings | None = None) -> Settings:
    """`base` (default: fresh local settings) with the Redis URL set."""
    return dataclasses.replace(base or local_settings(), redis_url=server.url)


def config_file(settings: Settings, path: Path) -> Path:
    """A router_config.yaml holding `settings` (addresses, services, Redis URL,
    access log)."""
    intent = settings.intent
    router = {
        "listen_address": str(intent.listen),
        "admin_address": str(intent.admin),
        "xds_address": str(settings.xds_address),
        "envoy_admin_address": str(settings.envoy_admin_address),
        "health_check_jitter": settings.health_check_jitter,
        "redis_url": settings.redis_url,
        "access_log": str(intent.access_log),
    }
    services = [
        {
            "name": s.name,
            "routes": list(s.routes),
            "backends": [
                {"name": b.name, "address": b.address, "port": b.port} for b in s.backends
            ],
        }
        for s in intent.services
    ]
    path.write_text(yaml.safe_dump({"router": router, "services": services}))
    return path


def moved(settings: Settings) -> Settings:
    """The same config on other ports: another replica on this host. Its config's
    admin address is where it listens; the one Envoy is told about stays the
    shared intent's (from Redis)."""
    other = local_settings()
    intent = dataclasses.replace(settings.intent, admin=other.intent.admin)
    return dataclasses.replace(settings, intent=intent, xds_address=other.xds_address)


def qdrant_only(settings: Settings) -> Settings:
    """Only the qdrant service, weighted, probed without jitter."""
    intent = settings.intent
    qdrant = intent.service("qdrant")
    assert qdrant is not None
    # weighted: a weight change then changes the EDS resource Envoy gets.
    intent = dataclasses.replace(intent, services=(qdrant,), default_strategy=Strategy.WEIGHTED)
    return dataclasses.replace(settings, intent=intent, health_check_jitter=0.0)


# ---- intents -----------------------------------------------------------------------------


def service(index: int, backends: int = 2, **changes: Any) -> Service:
    """svc-<index> on /svc-<index>/ with backends svc-<index>-b0.. on distinct ports."""
    name = f"svc-{index}"
    built = Service(
        name=name,
        routes=(f"/{name}/",),
        backends=tuple(
            Backend(name=f"{name}-b{i}", address=LOOPBACK, port=20_000 + 100 * index + i)
            for i in range(backends)
        ),
    )
    return dataclasses.replace(built, **changes)


def intent_of(count: int, **changes: Any) -> Intent:
    """`count` services named svc-0 .. svc-{count-1}, two backends each."""
    return dataclasses.replace(Intent(services=tuple(service(i) for i in range(count))), **changes)


def service_names(count: int) -> list[str]:
    return [f"svc-{i}" for i in range(count)]


def one_service(*backends: Backend) -> Intent:
    """An intent of one service, "svc", with these backends."""
    return Intent(services=(Service("svc", ("/svc/",), tuple(backends)),))


def spec_intent() -> Intent:
    """The spec's health example: qdrant with two backends, phi3 and hermes grouped
    as "external"."""

    def backend(name: str) -> Backend:
        return Backend(name, LOOPBACK, 1)

    return Intent(
        services=(
            Service("qdrant", ("/q/",), (backend("qdrant-primary"), backend("qdrant-secondary"))),
            Service("phi3", ("/p/",), (backend("phi3"),), group="external"),
            Service("hermes", ("/h/",), (backend("hermes"),), group="external"),
        )
    )


# ---- health probes -------------------------------------------------------------------------

FAST_POLICY = HealthPolicy(
    interval_s=0.1, timeout_s=0.05, healthy_threshold=2, unhealthy_threshold=3, jitter=0.5
)


def passed() -> ProbeResult:
    return ProbeResult(ok=True, definitive=False, elapsed_s=0.001, at=time.time())


def ambiguous() -> ProbeResult:
    return ProbeResult(ok=False, definitive=False, elapsed_s=0.05, at=time.time(), error="timeout")


def definitive() -> ProbeResult:
    return ProbeResult(ok=False, definitive=True, elapsed_s=0.001, at=time.time(), error="HTTP 503")


# ---- controllers ---------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running_controller(settings: Settings, **options: Any) -> AsyncIterator[Controller]:
    """A started controller running its background tasks; stopped (bounded) at exit.
    `options` go to Controller (e.g. config_path)."""
    controller = Controller(settings, **options)
    await controller.start()
    stop = asyncio.Event()
    task = asyncio.create_task(controller.run(stop))
    try:
        yield controller
    finally:
        stop.set()
        await finished(task, 10)

"""What the admin API works with: narrow collaborators, wired in app.py.

No handler sees the controller: each reads the one port it needs, so a unit
test builds an `AdminContext` from in-memory parts."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from xds_server.dns.base import Resolved
from xds_server.experiments import LabPorts
from xds_server.health.base import HealthView
from xds_server.pipeline.changes import ChangeApplier
from xds_server.pipeline.publisher import PublishStatus
from xds_server.store.base import IntentView
from xds_server.telemetry import Telemetry
from xds_server.xds.status import ProxyRegistry


@dataclass(frozen=True)
class AdminContext:
    intent: IntentView
    changes: ChangeApplier
    health: HealthView
    proxies: ProxyRegistry
    published: PublishStatus
    lab: LabPorts
    telemetry: Telemetry | None  # None: metrics disabled (ROUTER_METRICS_ENABLED=false)
    admin_token: str | None
    dns: Resolved | None = None  # backends named by DNS: their lookups


CONTEXT: web.AppKey[AdminContext] = web.AppKey("context")


def context_of(request: web.Request) -> AdminContext:
    return request.app[CONTEXT]

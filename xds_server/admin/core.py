"""Probes and protocol status: /healthz, /readyz, proxies."""

from __future__ import annotations

from aiohttp import web

from xds_server.admin.api import RouteSet
from xds_server.admin.context import context_of
from xds_server.store.base import IntentView

routes = RouteSet("status")


STORE_OUTAGE = (
    'During a store (Redis) outage the answer stays 200 with status "degraded" and '
    'store "unavailable": the controller keeps serving the last known intent to its '
    "Envoys, and an orchestrator that restarted it (liveness) or removed it from the xDS "
    "service (readiness) would turn a write outage into a configuration outage. "
    "Mutating calls answer 503 meanwhile; the store reconnects by itself."
)


def store_status(store: IntentView) -> dict[str, object]:
    """{"status": "ok" | "degraded", "store": "ok" | "unavailable", "store_kind": ...}"""
    up = store.connected
    return {
        "status": "ok" if up else "degraded",
        "store": "ok" if up else "unavailable",
        "store_kind": store.kind,
    }


@routes.get(
    "/healthz",
    summary="Liveness: the controller answers; status says whether its store is reachable",
    description=STORE_OUTAGE,
    responses={200: "alive (status ok, or degraded while the store is unreachable)"},
)
async def healthz(request: web.Request) -> web.Response:
    return web.json_response(store_status(context_of(request).intent))


@routes.get(
    "/readyz",
    summary="Readiness: the first snapshot is published",
    description=STORE_OUTAGE,
    responses={
        200: "ready (status ok, or degraded while the store is unreachable)",
        503: "not ready yet",
    },
)
async def readyz(request: web.Request) -> web.Response:
    context = context_of(request)
    generation = context.published.generation
    ready = generation > 0
    body = {
        "ready": ready,
        "generation": generation,
        "last_error": context.published.last_error,
        **store_status(context.intent),
    }
    return web.json_response(body, status=200 if ready else 503)


@routes.get(
    "/api/v1/router/proxies",
    summary="Connected proxies with, per resource type, versions sent and ACKed and the last NACK",
)
async def proxies(request: web.Request) -> web.Response:
    registry = context_of(request).proxies
    return web.json_response({"proxies": [p.as_json() for p in registry.connected()]})

"""Probes and protocol status: /healthz, /readyz, proxies."""

from __future__ import annotations

from aiohttp import web

from xds_server.admin.api import RouteSet
from xds_server.admin.context import controller_of

routes = RouteSet("status")


@routes.get("/healthz", summary="Liveness: the controller answers")
async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@routes.get(
    "/readyz",
    summary="Readiness: the first snapshot is published",
    responses={200: "ready", 503: "not ready yet"},
)
async def readyz(request: web.Request) -> web.Response:
    controller = controller_of(request)
    generation = controller.cache.generation
    ready = generation > 0
    body = {"ready": ready, "generation": generation, "last_error": controller.publisher.last_error}
    return web.json_response(body, status=200 if ready else 503)


@routes.get(
    "/api/v1/router/proxies",
    summary="Connected proxies with, per resource type, versions sent and ACKed and the last NACK",
)
async def proxies(request: web.Request) -> web.Response:
    registry = controller_of(request).proxies
    return web.json_response({"proxies": [p.as_json() for p in registry.connected()]})

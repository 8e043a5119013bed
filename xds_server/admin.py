"""The controller's admin HTTP API (aiohttp): probes and read-only status.

HTTP status codes are chosen here and nowhere else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from xds_server.app import Controller

CONTROLLER: web.AppKey[Controller] = web.AppKey("controller")


def make_admin_app(controller: Controller) -> web.Application:
    app = web.Application()
    app[CONTROLLER] = controller
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/api/v1/router/proxies", proxies)
    app.router.add_get("/api/v1/router/strategy", get_strategy)
    return app


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready once the first snapshot is published."""
    controller = request.app[CONTROLLER]
    generation = controller.cache.generation
    ready = generation > 0
    body = {"ready": ready, "generation": generation, "last_error": controller.publisher.last_error}
    return web.json_response(body, status=200 if ready else 503)


async def proxies(request: web.Request) -> web.Response:
    controller = request.app[CONTROLLER]
    return web.json_response({"proxies": [p.as_json() for p in controller.proxies.connected()]})


async def get_strategy(request: web.Request) -> web.Response:
    intent = request.app[CONTROLLER].store.intent
    return web.json_response(
        {
            "default_strategy": intent.default_strategy.value,
            "services": {s.name: intent.strategy_of(s).value for s in intent.services},
        }
    )

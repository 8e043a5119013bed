"""The controller's admin HTTP API (aiohttp).

Routes live in small modules, one RouteSet each; this module mounts them,
adds JSON errors, the strict reading of mutating calls (admin/requests.py:
headers that decode, same origin without a token, JSON bodies only),
bearer-token auth for mutating calls and the experiments'
claim on intent changes (experiments/__init__.py: a change is refused with 409
while an experiment runs, and an experiment while a change is applied), and
serves the OpenAPI document built from the same route sets. HTTP status codes
are chosen in the admin package and nowhere else.
"""

from __future__ import annotations

import hmac
from typing import Any

from aiohttp import web

from xds_server.admin import backends, core, experiments, health, metrics, openapi, strategy
from xds_server.admin.api import MOUNTED, RouteSet
from xds_server.admin.client import client_rules
from xds_server.admin.context import CONTEXT, AdminContext
from xds_server.admin.errors import error_response, json_errors
from xds_server.admin.requests import (
    MAX_BODY_BYTES,
    check_headers,
    check_media_type,
    check_same_origin,
)

ROUTE_SETS: tuple[RouteSet, ...] = (
    core.routes,
    strategy.routes,
    backends.routes,
    health.routes,
    experiments.routes,
    metrics.routes,
    openapi.routes,
)
MUTATING_KEY: web.AppKey[set[tuple[str, str]]] = web.AppKey("mutating")
EDITING_KEY: web.AppKey[set[tuple[str, str]]] = web.AppKey("editing")
WITH_BODY_KEY: web.AppKey[set[tuple[str, str]]] = web.AppKey("with_body")


def make_admin_app(context: AdminContext) -> web.Application:
    # Outermost first: the request counter sees the final status of every answer,
    # and so does the log of changes by client (admin/client.py); a request is read
    # strictly (400, 403) before its token is (401), and its body's type (415) only
    # once it may change something.
    app = web.Application(
        middlewares=[
            metrics.count_requests,
            client_rules,
            json_errors,
            strict_edges,
            bearer_token_auth,
            json_bodies_only,
            experiment_claim,
        ],
        client_max_size=MAX_BODY_BYTES,
    )
    app[CONTEXT] = context
    app[MOUNTED] = ROUTE_SETS
    app[MUTATING_KEY] = set()
    app[EDITING_KEY] = set()
    app[WITH_BODY_KEY] = set()
    for route_set in ROUTE_SETS:
        for op in route_set.operations:
            resource = app.router.add_resource(op.path)
            resource.add_route(op.method, op.handler)
            if op.mutating:
                app[MUTATING_KEY].add((op.method, op.path))
            if op.edits_intent:
                app[EDITING_KEY].add((op.method, op.path))
            if op.request_schema is not None:
                app[WITH_BODY_KEY].add((op.method, op.path))
    return app


def _route_of(request: web.Request) -> tuple[str, str]:
    route = request.match_info.route.resource
    return request.method, route.canonical if route is not None else request.path


@web.middleware
async def strict_edges(request: web.Request, handler: Any) -> web.StreamResponse:
    """A mutating call's headers must decode (400); without ROUTER_ADMIN_TOKEN it must
    come from no page or a same-origin one (403). With a token the bearer token
    decides: a browser never adds it to a cross-site request by itself."""
    if _route_of(request) in request.app[MUTATING_KEY]:
        check_headers(request)
        if not request.app[CONTEXT].admin_token:
            check_same_origin(request)
    response: web.StreamResponse = await handler(request)
    return response


@web.middleware
async def json_bodies_only(request: web.Request, handler: Any) -> web.StreamResponse:
    """A mutating call's body, where it takes one or sends one anyway, is declared
    application/json (415 otherwise)."""
    route = _route_of(request)
    if route in request.app[WITH_BODY_KEY] or (
        route in request.app[MUTATING_KEY] and request.body_exists
    ):
        check_media_type(request)
    response: web.StreamResponse = await handler(request)
    return response


@web.middleware
async def bearer_token_auth(request: web.Request, handler: Any) -> web.StreamResponse:
    """With ROUTER_ADMIN_TOKEN set, every mutating call needs the bearer token."""
    token = request.app[CONTEXT].admin_token
    if token and _route_of(request) in request.app[MUTATING_KEY]:
        offered = request.headers.get("Authorization", "")  # UTF-8: strict_edges
        if not hmac.compare_digest(offered.encode(), f"Bearer {token}".encode()):
            return error_response(
                401, "unauthorized", "this call needs 'Authorization: Bearer <token>'"
            )
    response: web.StreamResponse = await handler(request)
    return response


@web.middleware
async def experiment_claim(request: web.Request, handler: Any) -> web.StreamResponse:
    """An intent change holds off experiments from its first read to its last ACK,
    and is refused (Conflict, 409 naming it) while an experiment runs."""
    method, path = _route_of(request)
    if (method, path) not in request.app[EDITING_KEY]:
        response: web.StreamResponse = await handler(request)
        return response
    with request.app[CONTEXT].lab.registry.changing(f"{method} {request.path}"):
        claimed: web.StreamResponse = await handler(request)
        return claimed

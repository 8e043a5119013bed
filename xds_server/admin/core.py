"""Probes and protocol status: /healthz, /readyz, proxies."""

from __future__ import annotations

from aiohttp import web

from xds_server.admin.api import RouteSet
from xds_server.admin.context import context_of
from xds_server.store.base import IntentView

routes = RouteSet("status")


STORE_PROBES = (
    "The store's state is `ok`, `unavailable` (Redis does not answer, a PING included, "
    "within its bound: the follower checks every second) or `reconciling` (Redis lost "
    "data or restarted and the replicas are agreeing on the newest copy; "
    "docs/replicas.md). Liveness stays 200 through both, with status `degraded` and "
    "the reason: restarting the controller cannot bring Redis back, and would drop its "
    "Envoys' streams. Readiness answers 503 with the reason: this replica cannot take "
    "writes and may serve an intent that is about to be replaced. Envoys already "
    "connected keep their streams and configuration either way."
)


def store_status(store: IntentView) -> dict[str, object]:
    """{"status": "ok" | "degraded", "store": "ok" | "unavailable" | "reconciling",
    "store_kind", "store_revision", and "reason" / "store_diverged" when they apply}"""
    condition = store.condition
    body: dict[str, object] = {
        "status": "ok" if condition.state == "ok" else "degraded",
        "store": condition.state,
        "store_kind": store.kind,
        "store_revision": condition.revision,
    }
    if condition.reason is not None:
        body["reason"] = condition.reason
    if condition.diverged is not None:
        body["store_diverged"] = condition.diverged
    return body


@routes.get(
    "/healthz",
    summary="Liveness: the controller answers; status says whether its store is usable",
    description=STORE_PROBES,
    responses={200: "alive (status ok, or degraded with the store's state and reason)"},
)
async def healthz(request: web.Request) -> web.Response:
    return web.json_response(store_status(context_of(request).intent))


@routes.get(
    "/readyz",
    summary="Readiness: the first snapshot is published and the store takes writes",
    description=STORE_PROBES,
    responses={
        200: "ready",
        503: "not ready: no snapshot published yet, or the store is unavailable or "
        "reconciling (`reason` says which)",
    },
    report_statuses=(503,),
)
async def readyz(request: web.Request) -> web.Response:
    context = context_of(request)
    generation = context.published.generation
    store = store_status(context.intent)
    ready = generation > 0 and store["store"] == "ok"
    body = {
        "ready": ready,
        "generation": generation,
        "last_error": context.published.last_error,
        **store,
    }
    if generation == 0:
        body["reason"] = "no snapshot published yet"
    return web.json_response(body, status=200 if ready else 503)


@routes.get(
    "/api/v1/router/proxies",
    summary="Connected proxies with, per resource type, versions sent and ACKed and the last NACK",
)
async def proxies(request: web.Request) -> web.Response:
    registry = context_of(request).proxies
    return web.json_response({"proxies": [p.as_json() for p in registry.connected()]})

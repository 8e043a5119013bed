"""Admin routes: backend health as the controller's own probes see it.

`GET /api/v1/router/health` is the spec's "Backend health status" shape with
real probe figures; `GET /api/v1/health` (Envoy routes it to the controller)
is the one-glance summary: the same `overall_health` and counts, and one
verdict per service instead of the per-backend entries; 503 when some service
has nothing to route to, so a load balancer in front of the router can use it
as its health check. (The spec shows no answer for it; it shares the spec's
names rather than inventing others.)
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from xds_server.admin.api import RouteSet
from xds_server.admin.context import context_of
from xds_server.admin.health_report import health_report
from xds_server.health.verdict import OVERALL_UNHEALTHY, summarize

routes = RouteSet("health")

_COUNTS_DOC = (
    "A backend not probed yet has status 'unknown': it counts in total_backends "
    "and unknown_backends, never as healthy or unhealthy. overall_health is "
    "'healthy' when every backend is healthy, 'unhealthy' when some service has "
    "no backend that can take traffic (all unhealthy or draining; unknown ones "
    "still get traffic from Envoy), 'degraded' otherwise."
)
_ENTRY: dict[str, Any] = {
    "type": "object",
    "properties": {
        "status": {"type": "string", "enum": ["healthy", "unhealthy", "unknown"]},
        "response_time_ms": {"type": "number", "nullable": True},
        "last_check": {"type": "string", "format": "date-time", "nullable": True},
        "error": {"type": "string", "description": "why the last probe failed"},
        "checked_by": {
            "type": "array",
            "items": {"type": "string"},
            "description": "whose probes the verdict rests on: 'controller' (its own "
            "probes) or the node ids of the Envoys it delegated them to "
            "(router.health_checker: envoy, HDS); empty before the first probe",
        },
        "last_report": {
            "type": "object",
            "additionalProperties": {"type": "string", "format": "date-time"},
            "description": "checker (as in checked_by) -> when its last result arrived",
        },
        "draining": {"type": "boolean"},
        "addresses": {
            "type": "array",
            "items": {"type": "string"},
            "description": "a backend named by DNS: the addresses its name resolved to "
            "(Envoy's endpoints; the last good ones while lookups fail)",
        },
        "resolved_at": {"type": "string", "format": "date-time"},
        "dns_error": {"type": "string", "description": "why the last lookup failed"},
        "ejected_by": {
            "type": "array",
            "description": "the connected proxies whose outlier detection ejects this "
            "backend, as last read from their admin (every few seconds); since is the "
            "first reading that saw the ejection (Envoy gives no ejection time). Empty "
            "when none, or with metrics disabled (nothing reads the proxies).",
            "items": {
                "type": "object",
                "properties": {
                    "node": {"type": "string", "description": "the proxy's node id"},
                    "since": {"type": "string", "format": "date-time"},
                },
                "required": ["node", "since"],
            },
        },
    },
    "required": [
        "status",
        "response_time_ms",
        "last_check",
        "checked_by",
        "last_report",
        "ejected_by",
    ],
}
_COUNTS: dict[str, Any] = {
    "overall_health": {"type": "string", "enum": ["healthy", "degraded", "unhealthy"]},
    "total_backends": {"type": "integer"},
    "healthy_backends": {"type": "integer"},
    "unhealthy_backends": {"type": "integer"},
    "unknown_backends": {"type": "integer"},
}
REPORT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "health_status": {
            "type": "object",
            "description": "group -> backend key -> entry; the key drops the "
            "'<service>-' prefix of the backend name (qdrant-primary -> primary)",
            "additionalProperties": {"type": "object", "additionalProperties": _ENTRY},
        },
        **_COUNTS,
    },
}


@routes.get(
    "/api/v1/router/health",
    summary="Health of every backend: probe verdict, response time, last check",
    description="The controller probes each backend's health_path every "
    "health_check_interval seconds (timeout health_check_timeout); verdict changes "
    "reach Envoy as endpoint health. response_time_ms is the last probe's duration, "
    "connect included. A failed probe while some proxy's outlier detection ejects the "
    "backend marks it unhealthy at once (the two agree), and the first ejection seen "
    "triggers an early probe; an ejection alone never changes the status. " + _COUNTS_DOC,
    response_schema=REPORT_SCHEMA,
)
async def router_health(request: web.Request) -> web.Response:
    context = context_of(request)
    passive = context.telemetry.passive if context.telemetry is not None else None
    report = health_report(context.intent.intent, context.health.states, context.dns, passive)
    return web.json_response(report)


@routes.get(
    "/api/v1/health",
    summary="Overall router health; 503 when some service cannot be served",
    description="The summary of /api/v1/router/health: the same overall_health and "
    "counts, and per service its verdict (healthy, degraded, unhealthy) instead of the "
    "per-backend entries. " + _COUNTS_DOC,
    responses={200: "healthy or degraded", 503: "unhealthy"},
    report_statuses=(503,),
    response_schema={
        "type": "object",
        "properties": {
            **_COUNTS,
            "services": {
                "type": "object",
                "description": "service -> its verdict, by the same rule as overall_health",
                "additionalProperties": _COUNTS["overall_health"],
            },
        },
    },
)
async def overall_health(request: web.Request) -> web.Response:
    context = context_of(request)
    summary = summarize(context.intent.intent, context.health.states)
    body = {
        "overall_health": summary.overall,
        "total_backends": summary.total,
        "healthy_backends": summary.healthy,
        "unhealthy_backends": summary.unhealthy,
        "unknown_backends": summary.unknown,
        "services": summary.services,
    }
    return web.json_response(body, status=503 if summary.overall == OVERALL_UNHEALTHY else 200)

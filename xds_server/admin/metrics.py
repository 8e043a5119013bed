"""Admin routes: the spec's routing metrics (JSON) and the controller's Prometheus metrics.

With ROUTER_METRICS_ENABLED=false both answer 404 and nothing is collected:
no sampler reads Envoy, no observer counts, no failover is timed.
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web
from prometheus_client import generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from xds_server.admin.api import RouteSet
from xds_server.admin.context import context_of
from xds_server.admin.errors import ApiError
from xds_server.telemetry import Telemetry
from xds_server.telemetry.routing import report
from xds_server.telemetry.sampler import SAMPLE_INTERVAL_S
from xds_server.telemetry.traffic import WINDOW_S

routes = RouteSet("metrics")

DISABLED = "metrics are disabled (ROUTER_METRICS_ENABLED=false)"
UNMATCHED = "unmatched"  # the route label of requests no route matched

_FIGURES = f"""Every figure is read from the admin API of every connected Envoy (the address \
in its node metadata), summed over proxies, and kept by the controller as totals that only \
grow: Envoy restarts some counters when a cluster is rebuilt (a strategy change) or when it \
restarts, and the controller counts across those resets. Totals run from `since` (the \
controller's first reading); Envoy is read every {SAMPLE_INTERVAL_S:g} s and once more for \
each call, so requests served between the last reading and a cluster rebuild (at most one \
interval) can be missed.

With a Redis store (ROUTER_REDIS_URL) the totals, each proxy's last reading and the \
failover events are kept in Redis: they survive a controller restart, and with several \
replicas each reads the Envoys connected to it and all add to the same totals, so every \
replica reports the figures of the whole fleet (`since` is then the first reading of any \
replica). The window rates are computed from those shared totals at this replica's \
readings, so they cover the fleet too (other replicas' Envoys as of their last reading, \
at most one interval behind). See docs/replicas.md.

Two counts, and each block says which it holds (`counted`): routing_metrics counts client \
requests, load_balancing counts upstream attempts. A request that failed on one backend and \
was retried on another is one client request and two attempts, so total_attempts (the sum \
of backend_distribution) can exceed total_requests; their difference is the retries, within \
one reading.

routing_metrics counts requests as clients saw them, for the services' clusters (the \
controller's own admin API behind the listener is not counted): total_requests = requests \
Envoy answered for a service (Envoy's upstream_rq_completed: once per client request, \
retries not double counted, including the 503s Envoy gives itself); failed_requests = those \
answered with a 5xx (by a backend after retries, or by Envoy: queue overflow, no healthy \
backend, timeout); successful_requests = the rest; success_rate = successful/total in \
percent (null before the first request); overloaded_requests = 503s with \
x-envoy-overloaded (queue or concurrency limit). requests_per_second and \
avg_response_time_ms are over the last window_s seconds (at most {WINDOW_S:g} s): client \
requests per second, and the mean of Envoy's upstream_rq_time (per attempt, request sent to \
response complete; Envoy publishes this histogram at its stats flush, every 1 s in our bootstraps).

load_balancing.backend_distribution: per backend, the requests Envoy sent to it (every \
attempt, retries included; Envoy's per-host rq_total; the spec names them `requests`) and \
its share of its service's attempts in percent; total_attempts is their sum. \
distribution_variance_by_service: population variance of those shares \
in percentage points squared (0.0 = perfectly even; null without requests); \
distribution_variance: the largest of them over services with more than one backend. A \
weighted strategy is uneven on purpose.

circuit_breakers: per backend, "open" while some connected Envoy's outlier detection ejects \
the host (failed_outlier_check), "closed" otherwise, "unknown" when no Envoy could be read; \
failure_count = Envoy's per-host rq_error (5xx answers and failed connects, every attempt); \
last_failure = the time of the reading that first saw it grow (the failure happened within \
the preceding interval).

failover_events: one event per (a) health verdict change to "unhealthy" of a backend that \
was taking traffic (not draining) while a proxy was connected: failover time = from the \
verdict change to every connected proxy ACKing the EDS update that takes the host out; \
successful when all ACKed within 10 s and another backend of the service could serve \
(detection by the probes is not included); (b) failover experiment: successful when Envoy \
took the primary out and a backup served, time = its failover_time_ms; (c) circuit-breaker \
experiment: successful when the circuit opened and the backup took the traffic, time = its \
time_to_open_ms. avg_failover_time_ms averages the events with a time; last_failover is \
when the latest event completed (last ACK, or the experiment's answer).

proxies: which Envoys were read, and the ones that could not be (with the reason).

models: the OpenAI front door (POST /v1/chat/completions, /v1/completions, /v1/embeddings, \
routed by the body's `model`), per declared model, from Envoy's per-model route stats: \
requests = answers Envoy gave on that model's routes (upstream_rq_completed; once per client \
request), failed_requests = those with a 5xx, avg_upstream_time_ms = mean upstream_rq_time \
(per attempt, to the end of the response: for a stream, its whole duration), \
streamed_responses and avg_stream_duration_ms = the same for requests with `stream: true`. \
Totals since `since`, like routing_metrics; the same requests are in routing_metrics under \
their service. Unknown models (404) and requests without a model (400) reach no service and \
are not counted."""

_COUNT = {"type": "integer"}
_MAYBE_NUMBER = {"type": "number", "nullable": True}
_MAYBE_TIME = {"type": "string", "format": "date-time", "nullable": True}
REPORT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["routing_metrics", "load_balancing", "circuit_breakers", "failover_events"],
    "properties": {
        "routing_metrics": {
            "type": "object",
            "properties": {
                "counted": {"type": "string", "description": "what total_requests counts"},
                "total_requests": _COUNT,
                "successful_requests": _COUNT,
                "failed_requests": _COUNT,
                "overloaded_requests": _COUNT,
                "success_rate": _MAYBE_NUMBER,
                "avg_response_time_ms": _MAYBE_NUMBER,
                "requests_per_second": _MAYBE_NUMBER,
                "window_s": {"type": "number"},
                "since": _MAYBE_TIME,
            },
        },
        "load_balancing": {
            "type": "object",
            "properties": {
                "strategy": {"type": "string"},
                "strategies": {"type": "object", "additionalProperties": {"type": "string"}},
                "counted": {"type": "string", "description": "what the distribution counts"},
                "total_attempts": _COUNT,
                "backend_distribution": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "properties": {
                            "requests": _COUNT,
                            "percentage": {"type": "number"},
                            "service": {"type": "string"},
                        },
                    },
                },
                "distribution_variance": _MAYBE_NUMBER,
                "distribution_variance_by_service": {
                    "type": "object",
                    "additionalProperties": _MAYBE_NUMBER,
                },
            },
        },
        "circuit_breakers": {
            "type": "object",
            "additionalProperties": {
                "type": "object",
                "properties": {
                    "status": {"type": "string", "enum": ["closed", "open", "unknown"]},
                    "failure_count": _COUNT,
                    "last_failure": _MAYBE_TIME,
                },
            },
        },
        "failover_events": {
            "type": "object",
            "properties": {
                "total_failovers": _COUNT,
                "successful_failovers": _COUNT,
                "avg_failover_time_ms": _MAYBE_NUMBER,
                "last_failover": _MAYBE_TIME,
                "by_source": {"type": "object", "additionalProperties": _COUNT},
                "recent": {"type": "array", "items": {"type": "object"}},
            },
        },
        "proxies": {"type": "object"},
        "models": {
            "type": "object",
            "properties": {
                "counted": {"type": "string", "description": "what the figures count"},
                "by_model": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "object",
                        "properties": {
                            "service": {"type": "string"},
                            "requests": _COUNT,
                            "failed_requests": _COUNT,
                            "avg_upstream_time_ms": _MAYBE_NUMBER,
                            "streamed_responses": _COUNT,
                            "avg_stream_duration_ms": _MAYBE_NUMBER,
                        },
                    },
                },
            },
        },
    },
}


def enabled(request: web.Request) -> Telemetry:
    telemetry = context_of(request).telemetry
    if telemetry is None:
        raise ApiError(404, "not_found", DISABLED)
    return telemetry


@routes.get(
    "/api/v1/router/metrics",
    summary="Routing metrics: totals, success rate, rates, distribution, breakers, failovers",
    description=_FIGURES,
    query={"service": {"type": "string", "description": "only this service's figures"}},
    responses={200: "OK", 404: "unknown service, or metrics disabled"},
    response_schema=REPORT_SCHEMA,
)
async def router_metrics(request: web.Request) -> web.Response:
    telemetry = enabled(request)
    sampler = telemetry.sampler
    intent = context_of(request).intent.intent
    name = request.query.get("service")
    service = intent.service(name) if name is not None else None
    if name is not None and service is None:
        raise ApiError(404, "not_found", f"no service named {name!r}")
    readings = await sampler.sample()
    events = await telemetry.events.events()
    body = report(sampler.book, readings, intent, events, time.monotonic(), service)
    return web.json_response(body)


@routes.get(
    "/metrics",
    summary="The controller's metrics in the Prometheus text format",
    description="xDS (connected proxies, streams, responses, ACKs, NACKs by type, push-to-ACK "
    "latency measured to the ACK), snapshots (generation, build time), health probes "
    "(latency, outcome, verdict per backend), Envoy's passive view per backend "
    "(xds_server_backend_ejecting_proxies: proxies whose outlier detection ejects it; "
    "xds_server_outlier_ejections_seen_total), admin requests (by route template and "
    "status) and the OpenAI front door per declared model (xds_server_model_*: requests, "
    "5xx, upstream time, streamed answers and their durations, read from Envoy's route "
    "stats). Envoy's own metrics are at its admin /stats/prometheus.",
    responses={200: "Prometheus text format 0.0.4 (text/plain)", 404: "metrics disabled"},
)
async def prometheus_metrics(request: web.Request) -> web.Response:
    metrics = enabled(request).metrics
    # The classic text format: every Prometheus 2.x reads it.
    return web.Response(
        body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4}
    )


@web.middleware
async def count_requests(request: web.Request, handler: Any) -> web.StreamResponse:
    """Count every answer by route template, so /services/{name} is one series."""
    started = time.perf_counter()
    status = 500
    try:
        response: web.StreamResponse = await handler(request)
        status = response.status
        return response
    except web.HTTPException as error:
        status = error.status
        raise
    finally:
        telemetry = context_of(request).telemetry
        if telemetry is not None:
            telemetry.metrics.admin.answered(
                route_label(request), request.method, status, time.perf_counter() - started
            )


def route_label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED

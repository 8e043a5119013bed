"""Per-model figures of the OpenAI front door, from Envoy's per-model route stats.

Each declared model has two routes per OpenAI path (translate/openai.py): one
for streamed answers (`"stream": true`) and one for the rest, each with its
own route stats. The sampler reads them with the cluster figures
(telemetry/envoy_stats.py, keys ROUTE_KEY + stat prefix) into the same
TrafficBook, so they are totals across Envoy's counter resets, shared through
Redis like the rest. Here they are shaped per model.

The label set is bounded by the declared models: a model no service declares
has no route, so no stats (its requests are the 404s Envoy answers itself).
Requests on a service's path route (`/api/v1/models/phi3/...`) are the
service's, not a model's: they are in routing_metrics, not here.

Pure: a book and an intent in, figures out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from xds_server.model.intent import Intent
from xds_server.telemetry.envoy_stats import ROUTE_KEY, RQ_TIME
from xds_server.telemetry.traffic import TrafficBook
from xds_server.translate.openai import stat_prefix_of

COUNTED_MODELS = (
    "client requests on the OpenAI front door (/v1/chat/completions, /v1/completions, "
    "/v1/embeddings) by the body's model; streamed = those with stream: true"
)


def route_keys(intent: Intent) -> set[str]:
    """The book keys of every declared model's routes, for the sampler to count."""
    return {
        ROUTE_KEY + stat_prefix_of(model, streamed)
        for service in intent.services
        for model in service.models
        for streamed in (False, True)
    }


@dataclass(frozen=True)
class ModelTraffic:
    """One model's totals: all its answers, and the streamed ones among them."""

    model: str
    service: str
    requests: float
    errors: float  # answered with a 5xx (after retries), by a backend or by Envoy
    upstream_ms_sum: float  # Envoy's upstream_rq_time: per attempt, to the response's end
    upstream_count: float
    streamed: float
    streamed_ms_sum: float
    streamed_count: float


def model_traffic(book: TrafficBook, intent: Intent) -> list[ModelTraffic]:
    """Every declared model, in config order, zeros before its first request."""
    found = []
    for service in intent.services:
        for model in service.models:
            plain = ROUTE_KEY + stat_prefix_of(model)
            stream = ROUTE_KEY + stat_prefix_of(model, streamed=True)
            both = {plain, stream}
            found.append(
                ModelTraffic(
                    model=model,
                    service=service.name,
                    requests=book.cluster_total("upstream_rq_completed", both),
                    errors=book.cluster_total("upstream_rq_5xx", both),
                    upstream_ms_sum=book.cluster_total(f"{RQ_TIME}_sum", both),
                    upstream_count=book.cluster_total(f"{RQ_TIME}_count", both),
                    streamed=book.cluster_total("upstream_rq_completed", {stream}),
                    streamed_ms_sum=book.cluster_total(f"{RQ_TIME}_sum", {stream}),
                    streamed_count=book.cluster_total(f"{RQ_TIME}_count", {stream}),
                )
            )
    return found


def models_report(traffic: Iterable[ModelTraffic]) -> dict[str, Any]:
    """The `models` block of GET /api/v1/router/metrics."""
    return {
        "counted": COUNTED_MODELS,
        "by_model": {
            t.model: {
                "service": t.service,
                "requests": int(t.requests),
                "failed_requests": int(t.errors),
                "avg_upstream_time_ms": _mean(t.upstream_ms_sum, t.upstream_count),
                "streamed_responses": int(t.streamed),
                "avg_stream_duration_ms": _mean(t.streamed_ms_sum, t.streamed_count),
            }
            for t in traffic
        },
    }


def _mean(total: float, count: float) -> float | None:
    return round(total / count, 3) if count > 0 else None

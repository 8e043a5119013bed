"""Admin routes: the load-balancing strategy, globally or per service.

A PUT answers in the spec's `strategy_change` shape with real figures: the
active upstream connections per backend are read from every connected Envoy
before and after the change, and `strategy_applied` is true only when every
connected proxy ACKed the new configuration (pipeline/changes.py).

Envoy reads on this path, two in all, every proxy read concurrently:
- before: one traffic reading (`TrafficSampler.covering_change`), whose
  cx_active figures are active_connections_before and which also stands for
  the publisher's pre-change counter reading, so publishing reads nothing
  more (telemetry/sampler.py says when and why); with metrics off, a
  `GET /clusters` only, as there are no totals to keep. Envoy answers it
  while the change is computed and checked; the change is stored only once
  it is complete, so the figures are from before the change;
- after the ACK: one `GET /clusters` for active_connections_after, which no
  earlier reading can give (the rebuilt cluster's connections), over the
  sampler's kept connections (about 0.5 ms on loopback, bench/README.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any

from aiohttp import web

from xds_server.admin.api import RouteSet
from xds_server.admin.bodies import HASHING, StrategyChangeAnswer, StrategyOverview, StrategyPut
from xds_server.admin.changes import (
    CHANGE_ERRORS,
    NOT_CONFIRMED,
    outcome,
    status_of,
    timed_apply,
)
from xds_server.admin.context import AdminContext, context_of
from xds_server.admin.errors import invalid
from xds_server.admin.requests import json_body
from xds_server.model.edits import service_of, set_strategy
from xds_server.model.fields import STRATEGY_NOTES
from xds_server.model.intent import Intent, Service, Strategy
from xds_server.model.validation import parse
from xds_server.telemetry import envoy_stats
from xds_server.telemetry.envoy_stats import ProxyReading
from xds_server.timefmt import utc_now

routes = RouteSet("strategy")
ProxyErrors = dict[str, str | None]

PUT_DESCRIPTION = (
    "Switch the load-balancing strategy of one service or of all. Answers once "
    "every connected proxy ACKed the change or the wait ran out. "
    "active_connections_before/after are Envoy's cx_active per backend of the "
    "affected services, summed over proxies, read just before and just after. "
    "A policy change rebuilds the Envoy cluster, which starts with fresh "
    "connections and counters, so 'after' is often lower. least_connections is "
    "Envoy's LEAST_REQUEST: power-of-two choices over active requests, not "
    "connections."
)


@dataclasses.dataclass(frozen=True)
class StrategyRequest:
    strategy: Strategy
    service: str | None
    hash_header: str | None
    wait_s: float


def parse_request(body: dict[str, Any]) -> StrategyRequest:
    put = parse(StrategyPut, body)
    request = StrategyRequest(put.strategy, put.service, put.hash_header, put.wait_s)
    if request.hash_header is not None and request.strategy not in HASHING:
        raise invalid("hash_header applies only to ring_hash and maglev", "hash_header")
    return request


def _apply(intent: Intent, wanted: StrategyRequest) -> Intent:
    return set_strategy(intent, wanted.strategy, wanted.service, wanted.hash_header)


def affected(intent: Intent, service: str | None) -> tuple[Service, ...]:
    return tuple(s for s in intent.services if service is None or s.name == service)


def previous_strategy(intent: Intent, services: tuple[Service, ...]) -> str:
    """The one strategy the affected services shared, or 'mixed'."""
    strategies = {intent.strategy_of(s) for s in services}
    if not strategies:
        return intent.default_strategy.value
    return strategies.pop().value if len(strategies) == 1 else "mixed"


def changed_services(before: Intent, after: Intent, names: list[str]) -> list[str]:
    """Affected services whose effective strategy or hash key differs."""

    def key(intent: Intent, name: str) -> tuple[Strategy, str] | None:
        service = intent.service(name)
        return None if service is None else (intent.strategy_of(service), service.hash_header)

    return [name for name in names if key(before, name) != key(after, name)]


def active_connections(
    readings: Sequence[ProxyReading], backends: list[str]
) -> tuple[dict[str, int], list[ProxyErrors]]:
    counts = envoy_stats.per_backend(readings, "cx_active", backends)
    return counts, envoy_stats.unreadable(readings)


@contextlib.asynccontextmanager
async def reading_before_change(
    context: AdminContext,
) -> AsyncIterator[Awaitable[Sequence[ProxyReading]]]:
    """The one reading before the change, under way while the change is made inside
    the `async with`; await what it yields for the figures."""
    if context.telemetry is None:  # metrics off: only the connections to report
        read = asyncio.ensure_future(envoy_stats.read_proxies(context.proxies.connected()))
        try:
            yield read
        finally:
            await asyncio.wait([read])  # never left running, whatever the change did
        return
    async with context.telemetry.sampler.covering_change() as reading:
        yield reading


async def reading_after_change(context: AdminContext) -> Sequence[ProxyReading]:
    proxies = context.proxies.connected()
    if context.telemetry is None:
        return await envoy_stats.read_proxies(proxies)
    return await context.telemetry.sampler.reader.hosts(proxies)


@routes.put(
    "/api/v1/router/strategy",
    summary="Set the load-balancing strategy (all services, or one)",
    description=PUT_DESCRIPTION,
    request_schema=StrategyPut,
    response_schema=StrategyChangeAnswer,
    responses={
        200: "applied by every connected proxy",
        202: NOT_CONFIRMED,
        404: "unknown service",
        **CHANGE_ERRORS,
    },
)
async def put_strategy(request: web.Request) -> web.Response:
    context = context_of(request)
    wanted = parse_request(await json_body(request))
    intent = context.intent.intent
    if wanted.service is not None:
        service_of(intent, wanted.service)  # an unknown service first, before reading stats
    services = affected(intent, wanted.service)
    backends = [b.name for s in services for b in s.backends]
    async with reading_before_change(context) as reading:
        timestamp = utc_now()
        change = functools.partial(_apply, wanted=wanted)
        timed = await timed_apply(context.changes, change, wanted.wait_s, ready=reading)
        before = await reading
    before_counts, before_errors = active_connections(before, backends)
    after_counts, after_errors = active_connections(await reading_after_change(context), backends)
    names = [s.name for s in services]
    body = _change_json(timed.applied.before, wanted, names) | {
        "change_timestamp": timestamp,
        "active_connections_before": before_counts,
        "active_connections_after": after_counts,
        "strategy_applied": timed.applied.applied,
        "changed_services": changed_services(timed.applied.before, timed.applied.after, names),
        **{k: v for k, v in outcome(timed).items() if k != "applied"},
        "stats_errors": before_errors + after_errors,
    }
    return web.json_response({"strategy_change": body}, status=status_of(timed))


def _change_json(before: Intent, wanted: StrategyRequest, names: list[str]) -> dict[str, Any]:
    services = tuple(s for s in before.services if s.name in names)
    return {
        "previous_strategy": previous_strategy(before, services),
        "new_strategy": wanted.strategy.value,
        "service": wanted.service,
        "previous_by_service": {s.name: before.strategy_of(s).value for s in services},
    }


@routes.get(
    "/api/v1/router/strategy",
    summary="The default strategy and each service's effective strategy",
    description="least_connections is Envoy's LEAST_REQUEST (active requests, power of "
    "two choices), not least connections.",
    response_schema=StrategyOverview,
)
async def get_strategy(request: web.Request) -> web.Response:
    intent = context_of(request).intent.intent
    return web.json_response(strategy_json(intent))


def strategy_json(intent: Intent) -> dict[str, Any]:
    return {
        "default_strategy": intent.default_strategy.value,
        "services": {
            s.name: {
                "strategy": intent.strategy_of(s).value,
                "source": "default" if s.strategy is None else "service",
                "hash_header": s.hash_header,
            }
            for s in intent.services
        },
        "strategies": dict(STRATEGY_NOTES),
    }

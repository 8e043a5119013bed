"""Admin routes: services and their backends (list, add, update, drain, remove).

Bodies are the models of admin/bodies.py, built from the config file's own
field types: a backend is checked alike in the file and in the API (an address
must be an IP literal in both, because Envoy's EDS takes no hostnames). The
changes themselves are the pure edits of model/edits.py. Every change is
confirmed by ACK like a strategy change (admin/changes.py); a refused change
leaves the intent untouched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from xds_server.admin.api import RouteSet
from xds_server.admin.bodies import BackendAdd, BackendChange, BackendList, BackendPatch
from xds_server.admin.changes import (
    CHANGE_ERRORS,
    NOT_CONFIRMED,
    WAIT_S_SCHEMA,
    outcome,
    status_of,
    timed_apply,
    wait_value,
)
from xds_server.admin.context import context_of
from xds_server.admin.errors import invalid
from xds_server.admin.requests import json_body
from xds_server.errors import InvalidValue
from xds_server.model.edits import (
    add_backend,
    backend_of,
    remove_backend,
    service_of,
    update_backend,
)
from xds_server.model.intent import Backend, Health, Intent, Service
from xds_server.model.rules import grpc_weight_problem
from xds_server.model.validation import parse
from xds_server.pipeline.changes import DEFAULT_WAIT_S

routes = RouteSet("backends")

SERVICES = "/api/v1/router/services"
BACKENDS = SERVICES + "/{service}/backends"
BACKEND = BACKENDS + "/{backend}"

WAIT_QUERY = {"wait_s": WAIT_S_SCHEMA}


# ---- JSON ------------------------------------------------------------------------------


def backend_json(backend: Backend, health: Mapping[str, Health]) -> dict[str, Any]:
    # tls as the config file spells it: the CA's PEM text read from ca_file is left out.
    tls = None if backend.tls is None else dataclasses.asdict(backend.tls)
    if tls is not None:
        del tls["ca_pem"]
    fields = dataclasses.asdict(backend) | {"tls": tls}
    return fields | {"health": health.get(backend.name, Health.UNKNOWN)}


def service_json(intent: Intent, service: Service) -> dict[str, Any]:
    return {
        "name": service.name,
        "group": service.display_group,
        "routes": list(service.routes),
        "strategy": intent.strategy_of(service).value,
        "hash_header": service.hash_header,
        "backends": [b.name for b in service.backends],
    }


def change_json(
    request: web.Request, service: str, action: str, backend: Backend | None
) -> dict[str, Any]:
    health = context_of(request).health.verdicts
    return {
        "service": service,
        "action": action,
        "backend": None if backend is None else backend_json(backend, health),
    }


# ---- routes ----------------------------------------------------------------------------


@routes.get(
    SERVICES,
    summary="Every service with its routes, effective strategy and backend names",
    response_schema={"type": "object", "properties": {"services": {"type": "array"}}},
)
async def list_services(request: web.Request) -> web.Response:
    intent = context_of(request).intent.intent
    return web.json_response({"services": [service_json(intent, s) for s in intent.services]})


@routes.get(
    BACKENDS,
    summary="The backends of one service, with the controller's health verdict",
    responses={200: "OK", 404: "unknown service"},
    response_schema=BackendList,
)
async def list_backends(request: web.Request) -> web.Response:
    context = context_of(request)
    service = service_of(context.intent.intent, request.match_info["service"])
    backends = [backend_json(b, context.health.verdicts) for b in service.backends]
    return web.json_response({"service": service.name, "backends": backends})


@routes.post(
    BACKENDS,
    summary="Add a backend to a service",
    description="Backend names are unique across all services (they key Envoy's per-host "
    "stats). The address must be an IP literal: Envoy's EDS takes no hostnames. A backend "
    "of a gRPC service can only weigh 1 (422 otherwise): gRPC endpoints are published "
    "with weight 1.",
    request_schema=BackendAdd,
    response_schema=BackendChange,
    responses={
        201: "added and ACKed by every connected proxy",
        202: NOT_CONFIRMED,
        404: "unknown service",
        409: "backend name taken, or the service already has a backend at that address:port",
        **CHANGE_ERRORS,
    },
)
async def add(request: web.Request) -> web.Response:
    service = request.match_info["service"]
    current = service_of(context_of(request).intent.intent, service)  # unknown: 404 first
    wanted = parse(BackendAdd, await json_body(request))
    wait_s, backend = wanted.wait_s, wanted.to_backend()
    _refuse_a_weight_without_effect(current, backend.weight)
    timed = await timed_apply(
        context_of(request).changes, lambda i: add_backend(i, service, backend), wait_s
    )
    body = change_json(request, service, "added", backend) | outcome(timed)
    return web.json_response(body, status=status_of(timed, 201))


@routes.patch(
    BACKEND,
    summary="Change a backend's weight, priority or draining flag",
    description="weight counts only under the weighted strategy, and never in a gRPC "
    "service (its endpoints are published with weight 1): a weight other than 1 for a "
    "backend of a gRPC service is refused with 422. draining: true marks the endpoint "
    "DRAINING in EDS: Envoy sends it no new requests, in-flight ones finish.",
    request_schema=BackendPatch,
    response_schema=BackendChange,
    responses={
        200: "updated and ACKed by every connected proxy",
        202: NOT_CONFIRMED,
        404: "unknown service or backend",
        **CHANGE_ERRORS,
    },
)
async def update(request: web.Request) -> web.Response:
    service, name = request.match_info["service"], request.match_info["backend"]
    current = service_of(context_of(request).intent.intent, service)
    backend_of(current, name)
    patch = parse(BackendPatch, await json_body(request))
    wait_s, changes = patch.wait_s, patch.changes()
    if not changes:
        raise invalid("give at least one of weight, priority, draining")
    if "weight" in changes:
        _refuse_a_weight_without_effect(current, changes["weight"])
    timed = await timed_apply(
        context_of(request).changes, lambda i: update_backend(i, service, name, **changes), wait_s
    )
    body = change_json(request, service, "updated", _find(timed.applied.after, service, name))
    body |= outcome(timed)
    return web.json_response(body, status=status_of(timed))


@routes.delete(
    BACKEND,
    summary="Remove a backend from a service",
    query=WAIT_QUERY,
    response_schema=BackendChange,
    responses={
        200: "removed and ACKed by every connected proxy",
        202: NOT_CONFIRMED,
        404: "unknown service or backend",
        409: "the last backend of a service cannot be removed",
        **CHANGE_ERRORS,
    },
)
async def remove(request: web.Request) -> web.Response:
    service, name = request.match_info["service"], request.match_info["backend"]
    wait_s = query_wait(request)
    timed = await timed_apply(
        context_of(request).changes, lambda i: remove_backend(i, service, name), wait_s
    )
    body = change_json(request, service, "removed", _find(timed.applied.before, service, name))
    body |= outcome(timed)
    return web.json_response(body, status=status_of(timed))


def _refuse_a_weight_without_effect(service: Service, weight: int) -> None:
    # Refused rather than acknowledged and silently dropped, like `weighted` itself.
    problem = grpc_weight_problem(service, weight)
    if problem is not None:
        raise invalid(problem, "weight")


def query_wait(request: web.Request) -> float:
    text = request.query.get("wait_s")
    if text is None:
        return DEFAULT_WAIT_S
    try:
        return wait_value(float(text))
    except (ValueError, InvalidValue) as error:
        raise invalid(f"wait_s must be a number of seconds >= 0, got {text!r}", "wait_s") from error


def _find(intent: Intent, service: str, backend: str) -> Backend | None:
    found = intent.service(service)
    return None if found is None else found.backend(backend)

"""The OpenAPI 3 document of the admin API, built from the mounted route sets.

Nothing here lists routes by hand: every Operation registered on a RouteSet in
the route sets `make_admin_app` mounted are described, so the document cannot drift from
what is served (tests/admin/test_admin_unit.py holds both directions). Request
and answer schemas come from the models the handlers parse with
(admin/bodies.py, admin/schemas.py); the models they nest are shared under
components/schemas.

The error answer's schema is kept by hand: admin/errors.py writes it as a plain
dict in one place for every handler, and it is the one schema every other
operation references, so a model would only restate these three lines.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from aiohttp import web

import xds_server
from xds_server.admin.api import MOUNTED, Operation, RouteSet
from xds_server.admin.schemas import schema_object

routes = RouteSet("openapi")

OPENAPI_VERSION = "3.0.3"
# aiohttp writes a path variable as {name} or {name:regex}; OpenAPI only as {name}.
_VARIABLE = re.compile(r"\{(\w+)(?::[^}]*)?\}")
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error", "detail"],
    "properties": {
        "error": {"type": "string", "description": "machine-readable class, e.g. not_found"},
        "detail": {"type": "string", "description": "what went wrong, for people"},
        "field": {"type": "string", "description": "the offending field, where there is one"},
    },
}
AUTH_NOTE = "401 when ROUTER_ADMIN_TOKEN is set and the bearer token is missing or wrong"
LOCAL_NOTE = (
    "no ROUTER_ADMIN_TOKEN is set and the client (as Envoy saw it) is not on the "
    "controller's host: nothing was changed (admin/client.py)"
)
EXPERIMENT_NOTE = "an experiment is running (the detail names it): retry when it has ended"
MEDIA_NOTE = (
    "the body is not declared Content-Type: application/json (a charset parameter is "
    "fine): nothing was parsed or changed"
)


def document(route_sets: Iterable[RouteSet]) -> dict[str, Any]:
    sets = list(route_sets)
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {"Error": ERROR_SCHEMA}
    for route_set in sets:
        for op in route_set.operations:
            paths.setdefault(openapi_path(op.path), {})[op.method.lower()] = operation(
                route_set.tag, op, schemas
            )
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "xds-server admin API",
            "version": xds_server.__version__,
            "description": "Runtime control of the Envoy-based request router. Changes "
            "answer once every connected Envoy ACKed them (or say which did not).",
        },
        "tags": [{"name": s.tag} for s in sets if s.operations],
        "paths": dict(sorted(paths.items())),
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
    }


def openapi_path(path: str) -> str:
    return _VARIABLE.sub(r"{\1}", path)


def operation(tag: str, op: Operation, schemas: dict[str, Any]) -> dict[str, Any]:
    """One operation; the models its schemas nest are added to `schemas`."""
    doc: dict[str, Any] = {
        "tags": [tag],
        "summary": op.summary,
        "operationId": f"{tag}.{op.handler.__name__}",
        "responses": responses(op, schemas),
    }
    if op.description:
        doc["description"] = op.description
    parameters = path_parameters(op.path) + query_parameters(op)
    if parameters:
        doc["parameters"] = parameters
    if op.request_schema is not None:
        body = schema_object(op.request_schema, schemas, "validation")
        content = {"application/json": {"schema": body}}
        doc["requestBody"] = {"required": True, "content": content}
    if op.mutating:
        doc["security"] = [{"bearerAuth": []}]
    return doc


def path_parameters(path: str) -> list[dict[str, Any]]:
    return [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in _VARIABLE.findall(path)
    ]


def query_parameters(op: Operation) -> list[dict[str, Any]]:
    return [
        {"name": name, "in": "query", "required": False, "schema": schema}
        for name, schema in op.query.items()
    ]


def responses(op: Operation, schemas: dict[str, Any]) -> dict[str, Any]:
    """Documented answers; a mutating call can always answer 401 (bearer auth) and
    403 (a remote client without a token, admin/client.py), one with a body 415
    (admin/errors.py json_body), and an intent change 409 while an experiment runs
    (admin/__init__.py)."""
    listed = dict(op.responses)
    if op.mutating:
        listed.setdefault(401, AUTH_NOTE)
        listed.setdefault(403, LOCAL_NOTE)
    if op.request_schema is not None:
        listed.setdefault(415, MEDIA_NOTE)
    if op.edits_intent:
        listed[409] = f"{listed[409]}; or {EXPERIMENT_NOTE}" if 409 in listed else EXPERIMENT_NOTE
    return {str(code): _response(code, text, op, schemas) for code, text in sorted(listed.items())}


def _response(
    code: int, description: str, op: Operation, schemas: dict[str, Any]
) -> dict[str, Any]:
    schema: dict[str, Any] | None = None
    if code >= 400:
        schema = {"$ref": "#/components/schemas/Error"}
    elif op.response_schema is not None:
        schema = schema_object(op.response_schema, schemas, "serialization")
    if schema is None:
        return {"description": description}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


@routes.get(
    "/api/v1/router/openapi.json",
    summary="This OpenAPI 3 document, built from the mounted routes",
    response_schema={"type": "object"},
)
async def openapi_json(request: web.Request) -> web.Response:
    mounted: tuple[RouteSet, ...] = request.app[MOUNTED]
    return web.json_response(document(mounted))

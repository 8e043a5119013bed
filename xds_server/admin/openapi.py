"""The OpenAPI 3 document of the admin API, built from the mounted route sets.

Nothing here lists routes by hand: every Operation registered on a RouteSet in
the route sets `make_admin_app` mounted are described, so the document cannot drift from
what is served (tests/admin/test_admin_unit.py holds both directions). Request
and answer schemas come from the models the handlers parse with
(admin/bodies.py, admin/schemas.py); the models they nest are shared under
components/schemas.

The document describes the API as configured: with ROUTER_ADMIN_TOKEN set a
mutating call needs the bearer token (security, 401), without it the Origin
is checked instead (403), so `document(..., bearer=...)` says which; the one
served follows the controller's settings.

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
from xds_server.admin.context import context_of
from xds_server.admin.requests import (
    CHARSET,
    JSON_TYPE,
    MALFORMED,
    MAX_BODY_BYTES,
    MAX_DEPTH,
    MAX_NUMBER_DIGITS,
)
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
AUTH_NOTE = "the bearer token (ROUTER_ADMIN_TOKEN) is missing or wrong"
FORBIDDEN_NOTE = (
    "the Origin header names another site than this API's own host:port (a cross-site "
    "page; no ROUTER_ADMIN_TOKEN is set, so the origin is checked): clients that send "
    "no Origin are served"
    " (admin/requests.py); or no ROUTER_ADMIN_TOKEN is set and the client (as Envoy "
    "saw it) is not on the controller's host (admin/client.py): nothing was changed"
)
EXPERIMENT_NOTE = "an experiment is running (the detail names it): retry when it has ended"
MEDIA_NOTE = (
    f"the body (where one is taken or sent) is not declared Content-Type: {JSON_TYPE} "
    "(charset utf-8 or none): nothing was parsed or changed"
)
SIZE_NOTE = f"the body is larger than {MAX_BODY_BYTES} bytes"
INVALID_NOTE = "invalid value; `field` names it"
EDGES = (
    f"Mutating calls (PUT, POST, PATCH, DELETE): a body is {JSON_TYPE} in {CHARSET} "
    f"(415 otherwise), at most {MAX_BODY_BYTES} bytes (413), one JSON object nested at "
    f"most {MAX_DEPTH} deep with numbers of at most {MAX_NUMBER_DIGITS} digits (400); "
    "the headers read (Authorization, Origin, Host, Content-Type) are UTF-8 (400). "
    "Without ROUTER_ADMIN_TOKEN a call that carries an Origin header must come from "
    "this API's own host:port (403); with it, the bearer token decides (401). A method "
    "a path does not have answers 405 with Allow."
)


def document(route_sets: Iterable[RouteSet], *, bearer: bool = True) -> dict[str, Any]:
    """The document of `route_sets`; `bearer`: ROUTER_ADMIN_TOKEN is set."""
    sets = list(route_sets)
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {"Error": ERROR_SCHEMA}
    for route_set in sets:
        for op in route_set.operations:
            paths.setdefault(openapi_path(op.path), {})[op.method.lower()] = operation(
                route_set.tag, op, schemas, bearer=bearer
            )
    components: dict[str, Any] = {"schemas": dict(sorted(schemas.items()))}
    if bearer:
        components["securitySchemes"] = {"bearerAuth": {"type": "http", "scheme": "bearer"}}
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "xds-server admin API",
            "version": xds_server.__version__,
            "description": "Runtime control of the Envoy-based request router. Changes "
            "answer once every connected Envoy ACKed them (or say which did not). " + EDGES,
        },
        "tags": [{"name": s.tag} for s in sets if s.operations],
        "paths": dict(sorted(paths.items())),
        "components": components,
    }


def openapi_path(path: str) -> str:
    return _VARIABLE.sub(r"{\1}", path)


def operation(
    tag: str, op: Operation, schemas: dict[str, Any], *, bearer: bool = True
) -> dict[str, Any]:
    """One operation; the models its schemas nest are added to `schemas`."""
    doc: dict[str, Any] = {
        "tags": [tag],
        "summary": op.summary,
        "operationId": f"{tag}.{op.handler.__name__}",
        "responses": responses(op, schemas, bearer=bearer),
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
    if op.mutating and bearer:
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


def responses(op: Operation, schemas: dict[str, Any], *, bearer: bool = True) -> dict[str, Any]:
    """Documented answers; a mutating call can always answer 400 (a header that does
    not decode), 401 with a token configured (bearer auth) or 403 without one
    (cross-site, admin/requests.py, or a client not on this host, admin/client.py),
    and 415 (a body not declared JSON, admin/requests.py), one that takes a body 413
    and 422, and an intent change 409 while an experiment runs (admin/__init__.py)."""
    listed = dict(op.responses)
    if op.mutating:
        listed.setdefault(400, MALFORMED)
        if bearer:
            listed.setdefault(401, AUTH_NOTE)
        else:
            listed.setdefault(403, FORBIDDEN_NOTE)
        listed.setdefault(415, MEDIA_NOTE)
    if op.request_schema is not None:
        listed.setdefault(413, SIZE_NOTE)
        listed.setdefault(422, INVALID_NOTE)
    if op.edits_intent:
        listed[409] = f"{listed[409]}; or {EXPERIMENT_NOTE}" if 409 in listed else EXPERIMENT_NOTE
    return {str(code): _response(code, text, op, schemas) for code, text in sorted(listed.items())}


def _response(
    code: int, description: str, op: Operation, schemas: dict[str, Any]
) -> dict[str, Any]:
    schema: dict[str, Any] | None = None
    if code >= 400 and code not in op.report_statuses:
        schema = {"$ref": "#/components/schemas/Error"}
    elif op.response_schema is not None and (code < 300 or code in op.report_statuses):
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
    bearer = bool(context_of(request).admin_token)
    return web.json_response(document(mounted, bearer=bearer))

"""A route table that also documents itself, so the OpenAPI document cannot drift.

Each admin module owns one `RouteSet`; `make_admin_app` mounts them all and
`openapi.document` describes exactly the routes that are mounted. Request and
answer schemas are the pydantic models the handlers parse with (admin/bodies.py),
or a hand-kept JSON schema where no model exists.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from xds_server.admin.schemas import Schema

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    handler: Handler
    summary: str
    mutating: bool
    edits_intent: bool  # refused while an experiment runs (admin/__init__.py)
    request_schema: Schema | None  # a body model, or a JSON schema kept by hand
    responses: dict[int, str]
    description: str = ""
    query: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> JSON schema
    response_schema: Schema | None = None  # of the 2xx answers
    # Error statuses whose answer is the report itself (response_schema), not an Error:
    # GET /api/v1/health answers its summary with 503 when unhealthy.
    report_statuses: tuple[int, ...] = ()


@dataclass
class RouteSet:
    tag: str
    operations: list[Operation] = field(default_factory=list)
    # Its mutating operations change the intent (the experiments' do not: they
    # change it for a while themselves and take the one-at-a-time claim).
    edits_intent: bool = True

    def route(
        self,
        method: str,
        path: str,
        *,
        summary: str,
        request_schema: Schema | None = None,
        responses: dict[int, str] | None = None,
        description: str = "",
        query: dict[str, dict[str, Any]] | None = None,
        response_schema: Schema | None = None,
        report_statuses: tuple[int, ...] = (),
    ) -> Callable[[Handler], Handler]:
        """Register a handler. Non-GET operations are mutating: they need the
        admin token when one is configured."""
        mutating = method.upper() not in ("GET", "HEAD")

        def register(handler: Handler) -> Handler:
            self.operations.append(
                Operation(
                    method=method.upper(),
                    path=path,
                    handler=handler,
                    summary=summary,
                    mutating=mutating,
                    edits_intent=mutating and self.edits_intent,
                    request_schema=request_schema,
                    responses=responses or {200: "OK"},
                    description=description,
                    query=query or {},
                    response_schema=response_schema,
                    report_statuses=report_statuses,
                )
            )
            return handler

        return register

    def get(self, path: str, **kwargs: Any) -> Callable[[Handler], Handler]:
        return self.route("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Callable[[Handler], Handler]:
        return self.route("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> Callable[[Handler], Handler]:
        return self.route("PUT", path, **kwargs)

    def patch(self, path: str, **kwargs: Any) -> Callable[[Handler], Handler]:
        return self.route("PATCH", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Callable[[Handler], Handler]:
        return self.route("DELETE", path, **kwargs)


# The route sets an app mounted, for the document that describes them.
MOUNTED: web.AppKey[tuple[RouteSet, ...]] = web.AppKey("mounted")

"""Every admin error is JSON: {"error", "detail", "field"?} with a status code
that says what happened. Our exception classes map to HTTP codes here, once."""

from __future__ import annotations

import logging
from typing import Any

from aiohttp import web

from xds_server.errors import (
    ConfigError,
    Conflict,
    DependencyUnavailable,
    InconsistentSnapshot,
    InvalidValue,
    NotFound,
    NotStored,
    OutcomeUnknown,
    XdsServerError,
)

log = logging.getLogger("xds_server.admin")


class ApiError(XdsServerError):
    """Raised by handlers for a request that cannot be served as asked."""

    def __init__(self, status: int, error: str, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail, self.field = status, error, detail, field


def bad_request(detail: str, field: str | None = None) -> ApiError:
    return ApiError(400, "bad_request", detail, field)


def invalid(detail: str, field: str | None = None) -> ApiError:
    return ApiError(422, "invalid_value", detail, field)


def error_response(status: int, error: str, detail: str, **extra: Any) -> web.Response:
    body = {"error": error, "detail": detail, **{k: v for k, v in extra.items() if v is not None}}
    return web.json_response(body, status=status)


_MAPPED: tuple[tuple[type[XdsServerError], int, str], ...] = (
    (NotFound, 404, "not_found"),
    (Conflict, 409, "conflict"),
    (ConfigError, 422, "invalid_value"),
    (InvalidValue, 422, "invalid_value"),
    (InconsistentSnapshot, 422, "inconsistent"),
    (OutcomeUnknown, 504, "outcome_unknown"),
    (DependencyUnavailable, 503, "dependency_unavailable"),
)


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except ApiError as error:
        return error_response(error.status, error.error, error.detail, field=error.field)
    except XdsServerError as error:
        return _mapped(error)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        answer = error_response(
            error.status, error.reason.lower().replace(" ", "_"), error.text or ""
        )
        if "Allow" in error.headers:  # a 405 says which methods the path has (RFC 9110)
            answer.headers["Allow"] = error.headers["Allow"]
        return answer
    except Exception:
        log.exception("admin handler failed: %s %s", request.method, request.path)
        return error_response(500, "internal_error", "unexpected error; see the controller log")


def _mapped(error: XdsServerError) -> web.Response:
    for cls, status, name in _MAPPED:
        if isinstance(error, cls):
            return error_response(
                status, name, str(error), field=_field_of(error), **_store_outcome(error)
            )
    # One of ours that no admin handler should let out: a bug, so with its traceback.
    log.error("admin answered %s with 500", type(error).__name__, exc_info=error)
    return error_response(500, "internal_error", str(error))


def _store_outcome(error: XdsServerError) -> dict[str, Any]:
    """What a store error says about the write: known not stored (503), or unknown
    (504: sent, never answered; `revision` is the one it would have made, and the
    detail says how to check before retrying)."""
    if isinstance(error, OutcomeUnknown):
        check = (
            "The write may have been stored. Before retrying, read the state back: "
            "GET the resource you changed, or GET /readyz once the store is ok: a "
            f"store_revision below {error.revision} means it was not stored."
        )
        return {"outcome": "unknown", "revision": error.revision, "check": check}
    if isinstance(error, NotStored):
        return {"outcome": "not_stored"}
    return {}


def _field_of(error: XdsServerError) -> str | None:
    """The input the error is about, answered as `field`."""
    if isinstance(error, ConfigError):
        return error.problems[0].path if error.problems else None
    if isinstance(error, NotFound | Conflict):
        return error.field
    return None

"""Admin routes: the circuit-breaker and failover experiments (xds_server/experiments/).

Both run a real, bounded experiment against the live Envoy and answer in the
spec's shapes with measured figures. They change things for a while (a
backend fails, the ejection time may be shortened) and restore them before
answering; the answer lists every temporary change.
"""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web

from xds_server.admin.api import RouteSet
from xds_server.admin.context import context_of
from xds_server.admin.errors import invalid, json_body
from xds_server.experiments import FAILURE_MODES, Limits, circuit_breaker_test, failover_test
from xds_server.settings import InvalidValue, check_fields, name_value

routes = RouteSet("experiments")

MAX_DURATION_S = 60.0
MAX_CONCURRENCY = 32


def _seconds(low: float, high: float) -> Any:
    def convert(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidValue(f"must be a number of seconds, got {value!r}")
        if not math.isfinite(value) or not low <= value <= high:
            raise InvalidValue(f"must be a number of seconds between {low:g} and {high:g}")
        return float(value)

    return convert


def _concurrency(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_CONCURRENCY:
        raise InvalidValue(f"must be an integer between 1 and {MAX_CONCURRENCY}")
    return value


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidValue("must be true or false")
    return value


def _failure(value: object) -> str:
    if value not in FAILURE_MODES:
        raise InvalidValue(f"must be one of {', '.join(FAILURE_MODES)}")
    return str(value)


_LIMIT_FIELDS = {
    "simulate_failure": _flag,
    "max_duration_s": _seconds(1.0, MAX_DURATION_S),
    "ejection_time_s": _seconds(0.1, MAX_DURATION_S),
    "concurrency": _concurrency,
    "failure": _failure,
}
_LIMIT_SCHEMA: dict[str, Any] = {
    "simulate_failure": {
        "type": "boolean",
        "description": "must be true: the experiment really makes the backend fail",
    },
    "max_duration_s": {
        "type": "number",
        "minimum": 1,
        "maximum": MAX_DURATION_S,
        "default": 30,
        "description": "bound of every wait; the restore steps run after it",
    },
    "ejection_time_s": {
        "type": "number",
        "minimum": 0.1,
        "maximum": MAX_DURATION_S,
        "description": "ejection time during the test (temporary change of "
        "circuit_breaker_timeout for every cluster, restored at the end); default "
        "min(configured, 2)",
    },
    "concurrency": {
        "type": "integer",
        "minimum": 1,
        "maximum": MAX_CONCURRENCY,
        "default": 4,
        "description": "concurrent probe clients sending GET <service route> through Envoy",
    },
    "failure": {
        "type": "string",
        "enum": list(FAILURE_MODES),
        "description": "http_503: the sample backend's /_control/fault answers 503 "
        "(default when the backend has it); connection_refused: the backend is "
        "pointed at a loopback port that refuses connections (temporary intent change)",
    },
}
_ERRORS = {
    404: "unknown service or backend",
    409: "another experiment is running, or the service has no backup",
    422: "invalid value; `field` names it",
    503: "no connected Envoy to observe, or a temporary change was not applied",
}
_DOC = (
    "Figures come from the live system: failures counted by Envoy per host "
    "(rq_error: 5xx answers and failed connects), states and times from polling Envoy's "
    "/clusters every 20 ms (upper bounds within one poll), requests lost = probe "
    "requests answered 5xx or not at all. The health checker is paused for the "
    "failed backend during the test. "
)


def limits_of(body: dict[str, Any], name_key: str) -> tuple[str, Limits]:
    fields = check_fields(body, {name_key: name_value, **_LIMIT_FIELDS}, required=(name_key,))
    if fields.get("simulate_failure", True) is not True:
        raise invalid("simulate_failure must be true: without a failure there is nothing to test")
    defaults = Limits()
    return fields[name_key], Limits(
        max_duration_s=fields.get("max_duration_s", defaults.max_duration_s),
        ejection_time_s=fields.get("ejection_time_s"),
        concurrency=fields.get("concurrency", defaults.concurrency),
        failure=fields.get("failure"),
    )


@routes.post(
    "/api/v1/router/circuit-breaker/test",
    summary="Make a backend fail until Envoy ejects it (the circuit opens), then restore it",
    description=_DOC + "backend: a service name (its first backend) or a backend name. "
    "simulated_failures is the number of failures the backend gave before and while "
    "being ejected; recovery_time_ms runs from the ejection to Envoy readmitting it.",
    request_schema={
        "type": "object",
        "required": ["backend"],
        "additionalProperties": False,
        "properties": {"backend": {"type": "string"}, **_LIMIT_SCHEMA},
    },
    responses={200: "the experiment ran; see circuit_breaker_test", **_ERRORS},
)
async def circuit_breaker(request: web.Request) -> web.Response:
    name, limits = limits_of(await json_body(request), "backend")
    return web.json_response(await circuit_breaker_test(context_of(request).lab, name, limits))


@routes.post(
    "/api/v1/router/failover/test",
    summary="Fail a primary backend under continuous traffic; measure failover and recovery",
    description=_DOC + "failover_time_ms runs from the failure to Envoy taking the "
    "primary out of rotation; requests_during_failover are the probe requests started "
    "in that window; recovery_time_ms runs from the repair to the primary serving "
    "again; total_downtime_ms is the client-visible span of failed requests (0 when "
    "none failed).",
    request_schema={
        "type": "object",
        "required": ["primary_backend"],
        "additionalProperties": False,
        "properties": {"primary_backend": {"type": "string"}, **_LIMIT_SCHEMA},
    },
    responses={200: "the experiment ran; see failover_test", **_ERRORS},
)
async def failover(request: web.Request) -> web.Response:
    name, limits = limits_of(await json_body(request), "primary_backend")
    return web.json_response(await failover_test(context_of(request).lab, name, limits))

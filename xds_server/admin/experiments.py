"""Admin routes: the circuit-breaker and failover experiments (xds_server/experiments/).

Both run a real, bounded experiment against the live Envoy and answer in the
spec's shapes with measured figures. They change things for a while (a
backend fails, the ejection time may be shortened) and restore them before
answering; the answer lists every temporary change.
"""

from __future__ import annotations

from aiohttp import web

from xds_server.admin.api import RouteSet
from xds_server.admin.bodies import CircuitBreakerTest, ExperimentBody, FailoverTest
from xds_server.admin.context import context_of
from xds_server.admin.errors import invalid
from xds_server.admin.requests import MALFORMED, json_body
from xds_server.experiments import Limits, circuit_breaker_test, failover_test
from xds_server.model.validation import parse

routes = RouteSet("experiments", edits_intent=False)

_ERRORS = {
    400: MALFORMED,
    404: "unknown service or backend",
    409: "another experiment is running, an intent change is being applied (the detail "
    "names it), or the service has no backup",
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


FAILOVER_TIMES = (
    "Two different times. failover_time_ms is Envoy's: from the moment the primary "
    "starts failing to Envoy taking it out of rotation (ejected by outlier detection), "
    "so it includes the consecutive failures the circuit breaker needs. "
    "total_downtime_ms is the clients': from the start of the first probe request that "
    "failed (5xx or no answer) to the end of the last one; 0 when none failed. They "
    "differ because during failover_time_ms Envoy retries each failed attempt on the "
    "backup (upstream_failures_retried counts them), so a client sees a slower answer, "
    "not an error: a failover_time_ms of ~600 with a total_downtime_ms of 0 is the "
    "failover working. requests_during_failover are the probe requests started within "
    "failover_time_ms; recovery_time_ms runs from the repair to the primary serving again."
)


def limits_of(body: ExperimentBody) -> Limits:
    if not body.simulate_failure:
        raise invalid("simulate_failure must be true: without a failure there is nothing to test")
    return body.limits()


@routes.post(
    "/api/v1/router/circuit-breaker/test",
    summary="Make a backend fail until Envoy ejects it (the circuit opens), then restore it",
    description=_DOC + "backend: a service name (its first backend) or a backend name. "
    "simulated_failures is the number of failures the backend gave before and while "
    "being ejected; recovery_time_ms runs from the ejection to Envoy readmitting it.",
    request_schema=CircuitBreakerTest,
    responses={200: "the experiment ran; see circuit_breaker_test", **_ERRORS},
)
async def circuit_breaker(request: web.Request) -> web.Response:
    wanted = parse(CircuitBreakerTest, await json_body(request))
    name, limits = wanted.backend, limits_of(wanted)
    return web.json_response(await circuit_breaker_test(context_of(request).lab, name, limits))


@routes.post(
    "/api/v1/router/failover/test",
    summary="Fail a primary backend under continuous traffic; measure failover and recovery",
    description=_DOC + FAILOVER_TIMES,
    request_schema=FailoverTest,
    responses={200: "the experiment ran; see failover_test", **_ERRORS},
)
async def failover(request: web.Request) -> web.Response:
    wanted = parse(FailoverTest, await json_body(request))
    name, limits = wanted.primary_backend, limits_of(wanted)
    return web.json_response(await failover_test(context_of(request).lab, name, limits))

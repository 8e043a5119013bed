"""Per-service request_timeout, idle_timeout and retry_on: read from the file, checked
with field paths, inherited from the router, and turned into the RouteAction."""

from __future__ import annotations

from typing import Any

import pytest

from tests.settings.test_settings import minimal_document, problem_paths, shipped_document
from xds_server.errors import ConfigError
from xds_server.model.intent import Policies
from xds_server.settings import parse_settings
from xds_server.translate.routes import RETRY_ON, service_route


def with_service(**keys: Any) -> dict[str, Any]:
    document = minimal_document()
    document["services"][0].update(keys)
    return document


def test_shipped_llm_services_stream_without_a_whole_request_limit() -> None:
    """The spec's LLMs: no whole-request limit, 30 s of silence ends a stream, retries
    only where no work started; qdrant and embedding keep the router's 15 s."""
    intent = parse_settings(shipped_document(), {}, "shipped").intent
    policies = intent.policies
    by_name = {s.name: s for s in intent.services}
    for name in ("phi3", "hermes", "mixtral"):
        llm = by_name[name]
        assert (policies.request_timeout_of(llm), policies.idle_timeout_of(llm)) == (0, 30)
        assert llm.retry_on == ("connect-failure", "refused-stream", "reset-before-request", "503")
    for name in ("qdrant", "embedding"):
        other = by_name[name]
        assert (policies.request_timeout_of(other), policies.idle_timeout_of(other)) == (15, None)
        assert other.retry_on is None


def test_service_values_override_the_router_and_zero_means_none() -> None:
    """A service's timeouts beat the router's; omitted ones inherit; 0 is kept (no limit)."""
    document = with_service(request_timeout=0, retry_on=["connect-failure", 503])
    document["router"] = {"request_timeout": 9, "idle_timeout": 40}
    intent = parse_settings(document, {}, "x").intent
    svc = intent.services[0]
    assert (svc.request_timeout_s, svc.idle_timeout_s) == (0.0, None)
    assert intent.policies.request_timeout_of(svc) == 0
    assert intent.policies.idle_timeout_of(svc) == 40
    action = service_route("/svc/", svc, intent.policies).route
    assert (action.timeout.seconds, action.idle_timeout.seconds) == (0, 40)
    assert action.HasField("timeout") and action.HasField("idle_timeout")
    assert action.retry_policy.retry_on == "connect-failure,retriable-status-codes"
    assert list(action.retry_policy.retriable_status_codes) == [503]
    assert not action.retry_policy.HasField("per_try_timeout")


def test_defaults_keep_the_old_route() -> None:
    """Nothing set: the router's 15 s, no route idle_timeout (the listener's applies),
    the old retry conditions."""
    intent = parse_settings(minimal_document(), {}, "x").intent
    action = service_route("/svc/", intent.services[0], intent.policies).route
    assert action.timeout.seconds == 15 and not action.HasField("idle_timeout")
    assert action.retry_policy.retry_on == RETRY_ON
    assert Policies().idle_timeout_s is None


def test_environment_sets_the_router_idle_timeout() -> None:
    """ROUTER_IDLE_TIMEOUT and ROUTER_REQUEST_TIMEOUT=0 are read like every router key."""
    environ = {"ROUTER_IDLE_TIMEOUT": "45", "ROUTER_REQUEST_TIMEOUT": "0"}
    policies = parse_settings(minimal_document(), environ, "x").intent.policies
    assert (policies.idle_timeout_s, policies.request_timeout_s) == (45.0, 0.0)


def test_bad_timeouts_and_retry_conditions_are_reported_with_their_paths() -> None:
    """Every problem in one pass, each with its field path; an unknown retry condition's
    message names Envoy's list."""
    document = with_service(
        request_timeout=-1,
        idle_timeout="soon",
        retry_on=["connect-failure", "retry-always", 302, True],
    )
    document["router"] = {"idle_timeout": -5}
    assert problem_paths(document) == {
        "services[0].request_timeout",
        "services[0].idle_timeout",
        "services[0].retry_on[1]",
        "services[0].retry_on[2]",
        "services[0].retry_on[3]",
        "router.idle_timeout",
    }
    with pytest.raises(ConfigError) as caught:
        parse_settings(with_service(retry_on=["retry-always"]), {}, "x")
    (problem,) = caught.value.problems
    assert "reset-before-request" in problem.message and "'retry-always'" in problem.message
    assert problem_paths(with_service(retry_on="5xx")) == {"services[0].retry_on"}

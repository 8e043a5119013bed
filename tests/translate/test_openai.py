"""The OpenAI front door's translation (translate/openai.py): pure intent -> routes.

What Envoy does with these routes is tested for real in
tests/e2e/test_openai_front_door.py; here, what the translator promises about them.
"""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from tests.factories import intent_of, service
from xds_server.errors import ConfigError
from xds_server.model.intent import Intent, Strategy
from xds_server.resources import LISTENER, ROUTE, ROUTE_CONFIG_NAME
from xds_server.translate import translate
from xds_server.translate.memo import Memory
from xds_server.translate.openai import (
    BUFFER_FILTER,
    JSON_TO_METADATA_FILTER,
    MODEL_PATHS,
    MODELS_PATH,
    NAMESPACE,
    stat_prefix_of,
)
from xds_server.translate.routes import service_route


def with_models() -> Intent:
    """svc-0 serves phi3 and phi3-mini, svc-1 serves hermes, svc-2 none."""
    return Intent(
        services=(
            service(0, models=("phi3", "phi3-mini")),
            service(1, models=("hermes",), strategy=Strategy.RING_HASH),
            service(2),
        )
    )


def routes_of(intent: Intent, memory: Memory | None = None) -> list[rc_pb2.Route]:
    configuration = translate(intent, memory=memory)[ROUTE][ROUTE_CONFIG_NAME]
    return list(configuration.virtual_hosts[0].routes)


def model_of(route: rc_pb2.Route) -> str | None:
    for matcher in route.match.dynamic_metadata:
        if matcher.filter == NAMESPACE and matcher.path[0].key == "model":
            return matcher.value.string_match.exact
    return None


def body_of(route: rc_pb2.Route) -> object:
    return json.loads(route.direct_response.body_format.text_format_source.inline_string)


def test_models_are_listed_in_openai_shape() -> None:
    """GET /v1/models is a direct response: every declared model, in config order,
    owned by its service, as JSON."""
    (listing,) = [r for r in routes_of(with_models()) if r.match.path == MODELS_PATH]
    assert listing.direct_response.status == 200
    assert listing.direct_response.body_format.content_type == "application/json"
    assert body_of(listing) == {
        "object": "list",
        "data": [
            {"id": "phi3", "object": "model", "created": 0, "owned_by": "svc-0"},
            {"id": "phi3-mini", "object": "model", "created": 0, "owned_by": "svc-0"},
            {"id": "hermes", "object": "model", "created": 0, "owned_by": "svc-1"},
        ],
    }


def test_the_model_list_follows_the_intent() -> None:
    """A model added to a service appears in the next translation's list."""
    intent = with_models()
    changed = dataclasses.replace(
        intent,
        services=(intent.services[0], intent.services[1], service(2, models=("mixtral",))),
    )
    memory = Memory()
    routes_of(intent, memory)
    (listing,) = [r for r in routes_of(changed, memory) if r.match.path == MODELS_PATH]
    body = body_of(listing)
    assert isinstance(body, dict)
    assert [m["id"] for m in body["data"]] == ["phi3", "phi3-mini", "hermes", "mixtral"]


def test_each_model_route_sends_to_its_service_with_the_services_own_action() -> None:
    """For each OpenAI path and model: a route matching the model from the body's
    metadata whose RouteAction is the one of the service's path route (cluster,
    timeout, retry policy, hash policy) and its body buffer, with per-model
    route stats."""
    intent = with_models()
    routes = routes_of(intent)
    for path in MODEL_PATHS:
        by_model = {model_of(r): r for r in routes if r.match.path == path and model_of(r)}
        assert set(by_model) == {"phi3", "phi3-mini", "hermes"}
        for model, index in (("phi3", 0), ("phi3-mini", 0), ("hermes", 1)):
            own = intent.services[index]
            buffer = intent.edge.request_body_buffer_limit_bytes
            expected = service_route(own.routes[0], own, intent.policies, buffer)
            assert by_model[model].route == expected.route
            assert by_model[model].request_body_buffer_limit == expected.request_body_buffer_limit
            assert by_model[model].stat_prefix == stat_prefix_of(model)


def test_unknown_and_missing_models_get_openai_errors() -> None:
    """After the model routes, each path has: no model, no JSON or a model that is
    no string -> 400, anything else (an unknown model) -> 404 naming the model;
    all OpenAI error bodies.
    The catch-all is the only route that turns the body filter on."""
    routes = routes_of(with_models())
    for path in MODEL_PATHS:
        on_path = [r for r in routes if r.match.path == path]
        *model_routes, missing, not_json, wrong_type, unknown = on_path
        assert all(model_of(r) for r in model_routes)
        for problem in (missing, not_json, wrong_type):
            assert problem.direct_response.status == 400
            body = body_of(problem)
            assert isinstance(body, dict) and body["error"]["type"] == "invalid_request_error"
        assert not unknown.match.dynamic_metadata
        assert unknown.direct_response.status == 404
        error = unknown.direct_response.body_format.json_format["error"]
        assert error["code"] == "model_not_found"
        assert f"%DYNAMIC_METADATA({NAMESPACE}:model)%" in error["message"]
        assert {JSON_TO_METADATA_FILTER, BUFFER_FILTER} <= set(unknown.typed_per_filter_config)
        assert not any(JSON_TO_METADATA_FILTER in r.typed_per_filter_config for r in model_routes)


def test_front_door_comes_before_service_prefixes() -> None:
    """A service routing /v1/ keeps every other path, but not the front door's."""
    intent = with_models()
    catch_all = dataclasses.replace(intent.services[2], routes=("/v1/",))
    routes = routes_of(dataclasses.replace(intent, services=(*intent.services[:2], catch_all)))
    paths = [r.match.path or r.match.prefix for r in routes]
    assert paths.index("/v1/") > max(i for i, p in enumerate(paths) if p in MODEL_PATHS)


def test_no_models_no_front_door_and_the_filter_stays_off() -> None:
    """Without declared models no /v1 route exists; the listener's body filters are
    disabled by default whatever the intent, so no other request is buffered."""
    intent = intent_of(2)
    paths = {r.match.path for r in routes_of(intent)}
    assert not paths & {MODELS_PATH, *MODEL_PATHS}
    listener = translate(intent)[LISTENER]["router"]
    manager = hcm_pb2.HttpConnectionManager()
    listener.filter_chains[0].filters[0].typed_config.Unpack(manager)
    names = [(f.name, f.disabled) for f in manager.http_filters]
    assert names == [
        (BUFFER_FILTER, True),
        (JSON_TO_METADATA_FILTER, True),
        ("envoy.filters.http.router", False),
    ]


def test_stat_prefixes_are_stat_safe() -> None:
    """Dots and other punctuation split or tag Envoy stat names."""
    assert stat_prefix_of("meta-llama/Llama-3.1:8b") == "openai_model_meta_llama_Llama_3_1_8b"


def test_an_intent_with_a_model_twice_is_refused() -> None:
    """The config file cannot hold one (settings' rule); an intent from elsewhere is
    refused by the translator rather than routed to whichever service came first."""
    twice = Intent(services=(service(0, models=("phi3",)), service(1, models=("x", "phi3"))))
    with pytest.raises(ConfigError) as caught:
        translate(twice)
    assert [str(p) for p in caught.value.problems] == [
        "models.phi3: declared more than once: by 'svc-0', 'svc-1'"
    ]


def front_door_hcm(intent: Intent) -> hcm_pb2.HttpConnectionManager:
    listener = translate(intent)[LISTENER]["router"]
    hcm = hcm_pb2.HttpConnectionManager()
    assert listener.filter_chains[0].filters[0].typed_config.Unpack(hcm)
    return hcm


def test_only_envoys_413_on_the_front_door_paths_is_reshaped() -> None:
    """One local reply mapper: status 413 and a front door path (a query string
    allowed), with OpenAI's error object naming the body limit in force."""
    intent = dataclasses.replace(
        with_models(),
        edge=dataclasses.replace(with_models().edge, request_body_buffer_limit_bytes=4096),
    )
    [mapper] = front_door_hcm(intent).local_reply_config.mappers
    status, path = mapper.filter.and_filter.filters
    assert status.status_code_filter.comparison.value.default_value == 413
    assert path.header_filter.header.name == ":path"
    pattern = re.compile(path.header_filter.header.string_match.safe_regex.regex)
    for front_door in MODEL_PATHS:
        assert pattern.search(front_door) and pattern.search(front_door + "?x=1")
    for other in ("/v1/models", "/v1/chat/completions/x", "/svc-0/v1/embeddings", "/"):
        assert not pattern.search(other), other
    body = json.loads(mapper.body_format_override.text_format_source.inline_string)
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == "request_too_large"
    assert "4096 bytes" in body["error"]["message"]
    assert mapper.body_format_override.content_type == "application/json"


def test_a_model_that_is_not_a_string_has_a_400_route_per_path() -> None:
    """`model` is read as its JSON value, so `5` can never equal a model id
    "5"; the wrong-type route sits after the model routes, before the 404."""
    routes = routes_of(with_models())
    for path in MODEL_PATHS:
        on_path = [r for r in routes if r.match.path == path]
        wrong = [r for r in on_path if any(m.invert for m in r.match.dynamic_metadata)]
        assert len(wrong) == 1
        assert on_path.index(wrong[0]) == len(on_path) - 2  # just before the catch-all
        assert wrong[0].direct_response.status == 400
        assert body_of(wrong[0])["error"]["param"] == "model"

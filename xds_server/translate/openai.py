"""The OpenAI-compatible front door: routes chosen by the JSON body's `model`, in Envoy.

Clients of the OpenAI API (the `openai` library, LangChain, curl) use one base
URL and name the model in the body. Envoy routes them, not Python:

- the listener carries `envoy.filters.http.buffer` and
  `envoy.filters.http.json_to_metadata`, disabled by default (`http_filters()`);
  only the front door's catch-all routes enable them, so no other request has
  its body buffered;
- on `POST /v1/chat/completions`, `/v1/completions` and `/v1/embeddings` the
  filter reads `model` from the body into dynamic metadata
  (`NAMESPACE`.`model`, the JSON value as it is, or `NAMESPACE`.`problem` when
  the body has no model or is not JSON) and clears the route cache, so Envoy
  matches again: the route of the model's service (its RouteAction is the
  service's own, with its retry policy and timeout: every strategy, circuit
  breaker and failover rule applies) or an OpenAI-style error (400 no model,
  a model that is not a string, or no JSON; 404 unknown model);
- Envoy's own 413 on these paths (a body over the buffer) is reshaped into
  OpenAI's error object by the listener's local_reply_config
  (`local_reply_config()`): a mapper, so it reaches no other path and no
  upstream's answer;
- `GET /v1/models` is a direct response listing the declared models, built
  here from the intent, so it follows every config change.

The upstream path stays the client's (`/v1/chat/completions`): the backends
serve the OpenAI API themselves. docs/envoy-notes.md ("OpenAI front door")
says why this filter and not Lua or ext_proc.

Pure: intent in, protos out; `created` in the model list is a constant
(`CREATED`), not the clock, so equal intents give equal resources.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.core.v3 import base_pb2, substitution_format_string_pb2
from envoy.config.route.v3 import route_components_pb2 as rc_pb2
from envoy.extensions.filters.http.buffer.v3 import buffer_pb2
from envoy.extensions.filters.http.json_to_metadata.v3 import json_to_metadata_pb2 as j2m_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.type.matcher.v3 import metadata_pb2, regex_pb2, string_pb2, value_pb2
from google.protobuf import json_format, struct_pb2, wrappers_pb2

from xds_server.errors import ConfigError, Problem
from xds_server.model.intent import Service
from xds_server.translate.common import packed

JSON_TO_METADATA_FILTER = "envoy.filters.http.json_to_metadata"
BUFFER_FILTER = "envoy.filters.http.buffer"
NAMESPACE = "xds_server.openai"  # the dynamic metadata namespace the filter writes
MODEL_KEY = "model"
STREAM_KEY = "stream"  # the body's `stream`, kept as the JSON value (a bool)
PROBLEM_KEY = "problem"
MISSING_MODEL = "missing_model"  # PROBLEM_KEY's value: a JSON body without `model`
NOT_JSON = "not_json"  # PROBLEM_KEY's value: a body that is not JSON

# The OpenAI API paths routed by model. Each is one exact path: a service
# prefix such as /v1/ still receives every other path.
MODEL_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
MODELS_PATH = "/v1/models"
# OpenAI's model objects carry a creation time; ours are as old as the config,
# which the translator may not read from a clock (it must stay pure).
CREATED = 0
# Per-model route stats: vhost.router.route.<prefix><model's stat-safe name>.*,
# streamed answers (`"stream": true`) under STREAM_STAT_PREFIX, the rest under
# MODEL_STAT_PREFIX (telemetry/models.py reads both back).
MODEL_STAT_PREFIX = "openai_model_"
STREAM_STAT_PREFIX = "openai_stream_"

ActionOf = Callable[[Service], rc_pb2.RouteAction]


def http_filters() -> list[hcm_pb2.HttpFilter]:
    """The buffer and body-to-metadata filters, off unless a route turns them on
    (`_unknown_model_route`)."""
    return [
        hcm_pb2.HttpFilter(
            name=BUFFER_FILTER,
            # A placeholder: the route's BufferPerRoute sets the real bound.
            typed_config=packed(
                buffer_pb2.Buffer(max_request_bytes=wrappers_pb2.UInt32Value(value=1))
            ),
            disabled=True,
        ),
        hcm_pb2.HttpFilter(
            name=JSON_TO_METADATA_FILTER, typed_config=packed(_filter_config()), disabled=True
        ),
    ]


def _filter_config() -> j2m_pb2.JsonToMetadata:
    return j2m_pb2.JsonToMetadata(
        request_rules=j2m_pb2.JsonToMetadata.MatchRules(
            rules=[
                j2m_pb2.JsonToMetadata.Rule(
                    selectors=[j2m_pb2.JsonToMetadata.Selector(key=MODEL_KEY)],
                    # The JSON value as it is: `"model": 5` must not become
                    # the string "5", which a model id may be.
                    on_present=j2m_pb2.JsonToMetadata.KeyValuePair(
                        metadata_namespace=NAMESPACE,
                        key=MODEL_KEY,
                        type=j2m_pb2.JsonToMetadata.PROTOBUF_VALUE,
                    ),
                    on_missing=_metadata(PROBLEM_KEY, MISSING_MODEL),
                    on_error=_metadata(PROBLEM_KEY, NOT_JSON),
                ),
                # Streamed answers get routes (and so stats) of their own.
                j2m_pb2.JsonToMetadata.Rule(
                    selectors=[j2m_pb2.JsonToMetadata.Selector(key=STREAM_KEY)],
                    on_present=j2m_pb2.JsonToMetadata.KeyValuePair(
                        metadata_namespace=NAMESPACE, key=STREAM_KEY
                    ),
                ),
            ],
            # curl -d sends application/x-www-form-urlencoded unless told
            # otherwise; read the body whatever it claims to be.
            allow_content_types_regex=_regex(".*"),
            allow_empty_content_type=True,
        )
    )


def _metadata(key: str, value: str | None = None) -> j2m_pb2.JsonToMetadata.KeyValuePair:
    pair = j2m_pb2.JsonToMetadata.KeyValuePair(
        metadata_namespace=NAMESPACE, key=key, type=j2m_pb2.JsonToMetadata.STRING
    )
    if value is not None:
        pair.value.CopyFrom(struct_pb2.Value(string_value=value))
    return pair


def _regex(pattern: str) -> regex_pb2.RegexMatcher:
    return regex_pb2.RegexMatcher(regex=pattern)


def front_door_routes(
    services: Iterable[Service], action_of: ActionOf, body_buffer: int
) -> list[rc_pb2.Route]:
    """The routes of the front door, in match order; none when no service declares a model.

    `action_of` is the router's own RouteAction builder for a service (passed
    in, so this module does not import translate.routes, which imports it).
    `body_buffer` (router.edge.request_body_buffer_limit_bytes) is what the
    filter may buffer to read `model`, and what a retry replays: without it
    the listener's connection buffer (router.edge, 32 KiB) would refuse any
    longer prompt with 413."""
    with_models = [s for s in services if s.models]
    if not with_models:
        return []
    by_model = [(model, s) for s in with_models for model in s.models]
    _check_unique(by_model)
    actions = {s.name: action_of(s) for s in with_models}
    routes = [model_list_route(by_model)]
    # Envoy tries routes in order: 2 per model and path, then the errors. A
    # request on a service's path route passes them all first, each an exact
    # path compare (bench/README.md measures the front door itself).
    for path in MODEL_PATHS:
        for model, s in by_model:
            action = actions[s.name]
            routes += [_model_route(path, model, action, True), _model_route(path, model, action)]
        routes += [
            _problem_route(path, MISSING_MODEL, 400, "you must provide a model parameter"),
            _problem_route(
                path, NOT_JSON, 400, "We could not parse the JSON body of your request."
            ),
            _wrong_type_route(path),
            _unknown_model_route(path, body_buffer),
        ]
    for route in routes:
        if route.HasField("route"):  # what a retry of the model's request replays
            route.request_body_buffer_limit.value = body_buffer
    return routes


def _check_unique(by_model: list[tuple[str, Service]]) -> None:
    """A model names one service. The config file says so with field paths
    (settings/rules.py); this guards an intent from elsewhere (a stored one),
    which would otherwise send the model to whichever service came first."""
    owners: dict[str, list[str]] = {}
    for model, service in by_model:
        owners.setdefault(model, []).append(service.name)
    problems = [
        Problem(f"models.{model}", f"declared more than once: by {', '.join(map(repr, names))}")
        for model, names in owners.items()
        if len(names) > 1
    ]
    if problems:
        raise ConfigError(problems)


def model_list_route(by_model: Iterable[tuple[str, Service]]) -> rc_pb2.Route:
    """`GET /v1/models` in OpenAI's shape, each model owned by the service that serves it."""
    listing = {
        "object": "list",
        "data": [
            {"id": model, "object": "model", "created": CREATED, "owned_by": service.name}
            for model, service in by_model
        ],
    }
    body = json.dumps(listing, separators=(",", ":"))
    return rc_pb2.Route(
        match=rc_pb2.RouteMatch(path=MODELS_PATH),
        direct_response=rc_pb2.DirectResponseAction(status=200, body_format=_json_text(body)),
    )


def stat_prefix_of(model: str, streamed: bool = False) -> str:
    """The route stat prefix of a model's routes: Envoy splits stat names at
    dots and extracts tags at other punctuation, so only [A-Za-z0-9_] remain."""
    prefix = STREAM_STAT_PREFIX if streamed else MODEL_STAT_PREFIX
    return prefix + re.sub(r"[^A-Za-z0-9_]", "_", model)


def _model_route(
    path: str, model: str, action: rc_pb2.RouteAction, streamed: bool = False
) -> rc_pb2.Route:
    matchers = [_metadata_is(MODEL_KEY, model)]
    if streamed:
        matchers.append(
            metadata_pb2.MetadataMatcher(
                filter=NAMESPACE,
                path=[metadata_pb2.MetadataMatcher.PathSegment(key=STREAM_KEY)],
                value=value_pb2.ValueMatcher(bool_match=True),
            )
        )
    return rc_pb2.Route(
        match=rc_pb2.RouteMatch(path=path, dynamic_metadata=matchers),
        route=action,
        stat_prefix=stat_prefix_of(model, streamed),
    )


def _problem_route(path: str, problem: str, status: int, message: str) -> rc_pb2.Route:
    return rc_pb2.Route(
        match=rc_pb2.RouteMatch(path=path, dynamic_metadata=[_metadata_is(PROBLEM_KEY, problem)]),
        direct_response=rc_pb2.DirectResponseAction(
            status=status,
            body_format=_json_text(_error_body(message, "invalid_request_error", None)),
        ),
    )


def _wrong_type_route(path: str) -> rc_pb2.Route:
    """A `model` that is there but no string (a number, a boolean, null): OpenAI's
    own answer to a wrong type. Missing, or not JSON, matched the problem routes."""
    wrong = [
        metadata_pb2.MetadataMatcher(
            filter=NAMESPACE,
            path=[metadata_pb2.MetadataMatcher.PathSegment(key=MODEL_KEY)],
            value=value_pb2.ValueMatcher(present_match=True),
        ),
        metadata_pb2.MetadataMatcher(
            filter=NAMESPACE,
            path=[metadata_pb2.MetadataMatcher.PathSegment(key=MODEL_KEY)],
            value=value_pb2.ValueMatcher(
                string_match=string_pb2.StringMatcher(safe_regex=_regex("(?s).*"))
            ),
            invert=True,
        ),
    ]
    body = json.dumps(
        {
            "error": {
                "message": "Invalid type for 'model': expected a string.",
                "type": "invalid_request_error",
                "param": MODEL_KEY,
                "code": "invalid_type",
            }
        },
        separators=(",", ":"),
    )
    return rc_pb2.Route(
        match=rc_pb2.RouteMatch(path=path, dynamic_metadata=wrong),
        direct_response=rc_pb2.DirectResponseAction(status=400, body_format=_json_text(body)),
    )


def _unknown_model_route(path: str, body_buffer: int) -> rc_pb2.Route:
    """The path's catch-all. A request first matches it (no metadata yet): it turns the
    filters on: the buffer filter raises the stream's buffer limit to
    `body_buffer` (a direct response has no RouteAction, so the route's own
    request_body_buffer_limit would not; measured: a 200 KB prompt got 413 at
    the listener's 32 KiB), then json_to_metadata reads the body and clears the
    route cache. Matched again after that, the model is one no service declares."""
    message = (
        f"The model `%DYNAMIC_METADATA({NAMESPACE}:{MODEL_KEY})%` does not exist "
        "or is not served by this router (GET /v1/models lists the models)."
    )
    return rc_pb2.Route(
        match=rc_pb2.RouteMatch(path=path),
        direct_response=rc_pb2.DirectResponseAction(
            status=404,
            body_format=substitution_format_string_pb2.SubstitutionFormatString(
                json_format=_struct(
                    {"error": _error(message, "invalid_request_error", "model_not_found")}
                ),
                content_type="application/json",
            ),
        ),
        typed_per_filter_config={
            BUFFER_FILTER: packed(
                rc_pb2.FilterConfig(
                    config=packed(
                        buffer_pb2.BufferPerRoute(
                            buffer=buffer_pb2.Buffer(
                                max_request_bytes=wrappers_pb2.UInt32Value(value=body_buffer)
                            )
                        )
                    ),
                    is_optional=True,
                )
            ),
            JSON_TO_METADATA_FILTER: packed(
                rc_pb2.FilterConfig(config=packed(_filter_config()), is_optional=True)
            ),
        },
    )


def local_reply_config(body_buffer: int) -> hcm_pb2.LocalReplyConfig:
    """Envoy's 413 (the buffer filter's, or the connection buffer's) on a front
    door path in OpenAI's error shape, so OpenAI clients can read it. A mapper
    changes only Envoy's own replies that match it: an upstream's 413 passes as
    it is, and every other path keeps Envoy's plain text. `body_buffer` is the
    limit the front door routes buffer (router.edge.request_body_buffer_limit_bytes)."""
    paths = "|".join(re.escape(p) for p in MODEL_PATHS)
    on_a_front_door_path = accesslog_pb2.AccessLogFilter(
        header_filter=accesslog_pb2.HeaderFilter(
            header=route_header(":path", rf"^({paths})(\?.*)?$")
        )
    )
    too_large = accesslog_pb2.AccessLogFilter(
        status_code_filter=accesslog_pb2.StatusCodeFilter(
            comparison=accesslog_pb2.ComparisonFilter(
                op=accesslog_pb2.ComparisonFilter.EQ,
                value=base_pb2.RuntimeUInt32(
                    default_value=413, runtime_key=f"{NAMESPACE}.too_large_status"
                ),
            )
        )
    )
    message = (
        f"The request body is larger than the {body_buffer} bytes this router "
        "accepts on the OpenAI API."
    )
    return hcm_pb2.LocalReplyConfig(
        mappers=[
            hcm_pb2.ResponseMapper(
                filter=accesslog_pb2.AccessLogFilter(
                    and_filter=accesslog_pb2.AndFilter(filters=[too_large, on_a_front_door_path])
                ),
                body_format_override=_json_text(
                    _error_body(message, "invalid_request_error", "request_too_large")
                ),
            )
        ]
    )


def route_header(name: str, pattern: str) -> rc_pb2.HeaderMatcher:
    return rc_pb2.HeaderMatcher(
        name=name, string_match=string_pb2.StringMatcher(safe_regex=_regex(pattern))
    )


def _metadata_is(key: str, value: str) -> metadata_pb2.MetadataMatcher:
    return metadata_pb2.MetadataMatcher(
        filter=NAMESPACE,
        path=[metadata_pb2.MetadataMatcher.PathSegment(key=key)],
        value=value_pb2.ValueMatcher(string_match=string_pb2.StringMatcher(exact=value)),
    )


def _error(message: str, kind: str, code: str | None) -> dict[str, object]:
    """OpenAI's error object: https://platform.openai.com/docs/guides/error-codes"""
    return {"message": message, "type": kind, "param": None, "code": code}


def _error_body(message: str, kind: str, code: str | None) -> str:
    return json.dumps({"error": _error(message, kind, code)}, separators=(",", ":"))


def _json_text(body: str) -> substitution_format_string_pb2.SubstitutionFormatString:
    """A fixed JSON body. `%` would start a command in a format string: model
    ids cannot hold one (model/values.py MODEL_PATTERN), nor do our messages."""
    assert "%" not in body, body
    return substitution_format_string_pb2.SubstitutionFormatString(
        text_format_source=base_pb2.DataSource(inline_string=body),
        content_type="application/json",
    )


def _struct(value: dict[str, object]) -> struct_pb2.Struct:
    return json_format.ParseDict(value, struct_pb2.Struct())

"""The admin API without Envoy: validation, error classes, auth, OpenAPI.

A real controller (store, publisher, xDS and admin servers on free loopback
ports) with no proxy connected, so every change is "applied" at once unless a
test registers a proxy that never ACKs.
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import aiohttp
import pytest

from tests.admin.conftest import TOKEN
from tests.factories import local_settings, running_controller
from xds_server.admin import ROUTE_SETS, make_admin_app
from xds_server.admin.bodies import (
    BackendAdd,
    BackendChange,
    BackendList,
    BackendPatch,
    StrategyChangeAnswer,
    StrategyOverview,
    StrategyPut,
)
from xds_server.admin.openapi import document, openapi_path
from xds_server.app import Controller
from xds_server.errors import Conflict
from xds_server.experiments import Experiments
from xds_server.model.intent import Backend, Protocol, Service, Strategy
from xds_server.resources import CLUSTER, ENDPOINT
from xds_server.settings import MAX_WEIGHT
from xds_server.telemetry import envoy_stats
from xds_server.xds.observe import StreamInfo

STRATEGY = "/api/v1/router/strategy"
QDRANT = "/api/v1/router/services/qdrant/backends"


async def call(
    http: aiohttp.ClientSession,
    controller: Controller,
    method: str,
    path: str,
    body: object = None,
    *,
    data: str | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    url = f"http://{controller.admin_address}{path}"
    kwargs: dict[str, Any] = {"headers": headers or {}}
    if data is not None:
        kwargs["data"] = data
        kwargs["headers"]["Content-Type"] = "application/json"
    elif body is not None:
        kwargs["json"] = body
    async with http.request(method, url, **kwargs) as response:
        return response.status, await response.json()


# ---- OpenAPI ---------------------------------------------------------------------------


def mounted_routes() -> set[tuple[str, str]]:
    app = make_admin_app(Controller(local_settings()).admin_context())
    return {
        (route.method.lower(), openapi_path(route.resource.canonical))
        for route in app.router.routes()
        if route.resource is not None
    }


def documented_routes(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method, path) for path, ops in doc["paths"].items() for method in ops}


def test_openapi_documents_exactly_the_mounted_routes() -> None:
    """Every route the admin app serves is in the document and nothing else is,
    whichever module (or helper) added it."""
    mounted = mounted_routes()
    backend = "/api/v1/router/services/{service}/backends/{backend}"
    assert ("put", STRATEGY) in mounted and ("delete", backend) in mounted
    assert documented_routes(document(ROUTE_SETS)) == mounted


def test_openapi_document_is_structurally_valid_openapi_3() -> None:
    """openapi 3.0.x, info, paths; each operation has a summary, an operationId
    unique in the document, responses keyed by status code with descriptions,
    every path variable declared, and every $ref resolvable."""
    doc = document(ROUTE_SETS)
    assert doc["openapi"].startswith("3.0.")
    assert doc["info"]["title"] and doc["info"]["version"]
    operation_ids: list[str] = []
    for path, operations in doc["paths"].items():
        assert path.startswith("/")
        for method, op in operations.items():
            assert method in {"get", "put", "post", "patch", "delete", "head", "options"}
            assert op["summary"] and op["responses"], (method, path)
            assert all(code.isdigit() and r["description"] for code, r in op["responses"].items())
            declared = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert declared == set(_path_variables(path)), (method, path)
            operation_ids.append(op["operationId"])
    assert len(operation_ids) == len(set(operation_ids))
    for ref in _refs(doc):
        assert ref.startswith("#/components/schemas/")
        assert ref.rsplit("/", 1)[1] in doc["components"]["schemas"]


def _path_variables(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{")]


def _refs(node: object) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if "$ref" in node else []
        return own + [ref for value in node.values() for ref in _refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _refs(value)]
    return []


def test_openapi_says_what_least_connections_really_is() -> None:
    """The strategy PUT documents that least_connections is Envoy's LEAST_REQUEST."""
    put = document(ROUTE_SETS)["paths"][STRATEGY]["put"]
    assert "LEAST_REQUEST" in put["description"]
    assert "active requests" in str(put["requestBody"])
    assert put["security"] == [{"bearerAuth": []}] and "401" in put["responses"]


def test_openapi_schemas_come_from_the_models() -> None:
    """Bodies and change answers are the handlers' models: every field the
    handler reads or answers is documented, nothing else."""
    doc = document(ROUTE_SETS)
    put = doc["paths"][STRATEGY]["put"]
    body = put["requestBody"]["content"]["application/json"]["schema"]
    assert list(body["properties"]) == list(StrategyPut.model_fields)
    assert body["required"] == ["strategy"] and body["additionalProperties"] is False
    change = doc["components"]["schemas"]["StrategyChange"]["properties"]
    assert {"previous_by_service", "generation", "proxies", "apply_ms"} <= set(change)
    backends = doc["paths"]["/api/v1/router/services/{service}/backends"]["post"]
    add = backends["requestBody"]["content"]["application/json"]["schema"]
    assert list(add["properties"]) == list(BackendAdd.model_fields)
    assert add["required"] == ["name", "address", "port"]
    assert add["properties"]["port"] == {"maximum": 65535, "minimum": 1} | {
        "title": "Port",
        "type": "integer",
    }
    patch = doc["paths"]["/api/v1/router/services/{service}/backends/{backend}"]["patch"]
    update = patch["requestBody"]["content"]["application/json"]["schema"]
    assert list(update["properties"]) == list(BackendPatch.model_fields)
    assert update["anyOf"] == [{"required": [k]} for k in ("weight", "priority", "draining")]


def test_openapi_schemas_are_openapi_3_0() -> None:
    """pydantic's JSON Schema 2020-12 is translated: no null type, no const, no
    $defs, boolean exclusive bounds, one type per schema."""
    for node in _nodes(document(ROUTE_SETS)):
        assert "$defs" not in node and "const" not in node
        assert isinstance(node.get("exclusiveMinimum", True), bool), node
        if "type" in node and not isinstance(node["type"], dict):  # not a property named type
            assert isinstance(node["type"], str) and node["type"] != "null", node


def _nodes(node: object) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        return [node] + [n for value in node.values() for n in _nodes(value)]
    if isinstance(node, list):
        return [n for value in node for n in _nodes(value)]
    return []


async def test_openapi_is_served(controller: Controller, http: aiohttp.ClientSession) -> None:
    """GET /api/v1/router/openapi.json answers the document of the mounted route sets."""
    status, body = await call(http, controller, "GET", "/api/v1/router/openapi.json")
    assert status == 200
    assert body == document(ROUTE_SETS, bearer=False)  # no token: no security, 403s


# ---- health ----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/health", "/api/v1/router/health"])
async def test_health_answers_hold_exactly_the_documented_keys(
    controller: Controller, http: aiohttp.ClientSession, path: str
) -> None:
    """Both health answers use the spec's names (overall_health and the counts) and
    hold exactly the keys their OpenAPI schema documents; the summary has one verdict
    per service instead of the per-backend entries."""
    status, body = await call(http, controller, "GET", path)
    documented = document(ROUTE_SETS)["paths"][path]["get"]["responses"]["200"]
    schema = documented["content"]["application/json"]["schema"]
    assert set(body) == set(schema["properties"]), body
    # No backend runs here: probes fail (or have not run yet: unknown).
    assert body["overall_health"] in {"unhealthy", "degraded"}
    summary = path == "/api/v1/health"
    assert status == (503 if summary and body["overall_health"] == "unhealthy" else 200)
    counts = ("healthy_backends", "unhealthy_backends", "unknown_backends")
    assert body["total_backends"] == sum(body[k] for k in counts) == 7
    if path == "/api/v1/health":
        assert set(body["services"]) == {s.name for s in controller.store.intent.services}


# ---- strategy --------------------------------------------------------------------------


async def test_global_strategy_change_sets_default_and_clears_overrides(
    controller: Controller, http: aiohttp.ClientSession
) -> None:
    """No service: the default changes and per-service overrides are cleared;
    the answer has the spec's strategy_change fields."""
    await call(http, controller, "PUT", STRATEGY, {"strategy": "random", "service": "qdrant"})
    status, body = await call(http, controller, "PUT", STRATEGY, {"strategy": "least_connections"})
    assert status == 200, body
    change = body["strategy_change"]
    assert change["previous_strategy"] == "mixed"  # qdrant was random, the rest round_robin
    assert change["new_strategy"] == "least_connections"
    assert change["strategy_applied"] is True and change["proxies"] == 0
    assert change["change_timestamp"].endswith("Z")
    all_backends = {b.name for b in controller.store.intent.backends()}
    assert set(change["active_connections_before"]) == all_backends
    assert set(change["active_connections_after"]) == all_backends
    intent = controller.store.intent
    assert intent.default_strategy is Strategy.LEAST_CONNECTIONS
    assert all(s.strategy is None for s in intent.services)
    StrategyChangeAnswer.model_validate(body)  # the documented shape, no more, no less
    status, current = await call(http, controller, "GET", STRATEGY)
    StrategyOverview.model_validate(current)
    assert current["default_strategy"] == "least_connections"
    assert {s["strategy"] for s in current["services"].values()} == {"least_connections"}


async def test_service_strategy_change_touches_only_that_service(
    controller: Controller, http: aiohttp.ClientSession
) -> None:
    """With a service, only it changes (hash key included); others keep the default."""
    body = {"strategy": "maglev", "service": "embedding", "hash_header": "x-user"}
    status, answer = await call(http, controller, "PUT", STRATEGY, body)
    assert status == 200, answer
    change = answer["strategy_change"]
    assert change["changed_services"] == ["embedding"]
    assert set(change["active_connections_before"]) == {"embedding-gpu0", "embedding-gpu1"}
    intent = controller.store.intent
    embedding = intent.service("embedding")
    assert embedding is not None and (embedding.strategy, embedding.hash_header) == (
        Strategy.MAGLEV,
        "x-user",
    )
    assert intent.default_strategy is Strategy.ROUND_ROBIN
    assert [s.name for s in intent.services if s.strategy is not None] == ["embedding"]


async def test_unacked_change_is_reported_not_applied(
    controller: Controller, http: aiohttp.ClientSession, silent_admin: str
) -> None:
    """A connected proxy that never ACKs: 202, strategy_applied false, the proxy
    and the reason named; its unreadable admin is reported, not waited on."""
    info = StreamInfo(1_000, "ads", "silent-envoy", "test", silent_admin)
    controller.proxies.stream_opened(info)
    controller.proxies.response_sent(info, CLUSTER, "v0", [], 0)
    try:
        started = time.monotonic()
        body = {"strategy": "random", "wait_s": 0.3}
        status, answer = await call(http, controller, "PUT", STRATEGY, body)
        elapsed = time.monotonic() - started
    finally:
        controller.proxies.stream_closed(info)
    change = answer["strategy_change"]
    assert status == 202 and change["strategy_applied"] is False
    assert change["failures"] == [{"node_id": "silent-envoy", "reason": "no ACK within 0.3 s"}]
    assert [e["node_id"] for e in change["stats_errors"]] == ["silent-envoy"] * 2
    StrategyChangeAnswer.model_validate(answer)
    assert elapsed < 2 * envoy_stats.READ_TIMEOUT_S + 0.3 + 1.0
    assert controller.store.intent.default_strategy is Strategy.RANDOM  # stored all the same


# ---- backends --------------------------------------------------------------------------


async def test_backend_add_update_drain_remove(
    controller: Controller, http: aiohttp.ClientSession
) -> None:
    """Add (201), list, change weight and drain (200), remove (200); the intent follows."""
    new = {"name": "qdrant-tertiary", "address": "127.0.0.2", "port": 6335, "weight": 2}
    status, body = await call(http, controller, "POST", QDRANT, new)
    assert status == 201 and body["applied"] is True, body
    assert body["backend"]["weight"] == 2 and body["backend"]["health"] in {"unknown", "unhealthy"}
    BackendChange.model_validate(body)  # the documented shape, no more, no less
    status, listed = await call(http, controller, "GET", QDRANT)
    BackendList.model_validate(listed)
    assert [b["name"] for b in listed["backends"]][-1] == "qdrant-tertiary"

    patch = {"weight": 5, "draining": True}
    status, body = await call(http, controller, "PATCH", QDRANT + "/qdrant-tertiary", patch)
    assert status == 200 and (body["backend"]["weight"], body["backend"]["draining"]) == (5, True)
    BackendChange.model_validate(body)
    qdrant = controller.store.intent.service("qdrant")
    assert qdrant is not None and qdrant.backend("qdrant-tertiary") is not None

    status, body = await call(http, controller, "DELETE", QDRANT + "/qdrant-tertiary")
    assert status == 200 and body["action"] == "removed", body
    BackendChange.model_validate(body)
    qdrant = controller.store.intent.service("qdrant")
    assert qdrant is not None and qdrant.backend("qdrant-tertiary") is None


async def test_services_listing(controller: Controller, http: aiohttp.ClientSession) -> None:
    """GET services lists every configured service with its backends and group."""
    status, body = await call(http, controller, "GET", "/api/v1/router/services")
    assert status == 200
    by_name = {s["name"]: s for s in body["services"]}
    assert set(by_name) == {s.name for s in controller.store.intent.services}
    assert by_name["qdrant"]["backends"] == ["qdrant-primary", "qdrant-secondary"]
    assert by_name["phi3"]["group"] == "external"


# ---- errors: every class, and nothing changes -----------------------------------------

ERRORS: list[tuple[str, str, object, int, str, str | None]] = [
    # method, path, body (str = raw text), status, error, field
    ("PUT", STRATEGY, "{not json", 400, "bad_request", None),
    ("PUT", STRATEGY, "[1, 2]", 400, "bad_request", None),
    ("PUT", STRATEGY, {"strategy": "fastest"}, 422, "invalid_value", "strategy"),
    ("PUT", STRATEGY, {}, 422, "invalid_value", "strategy"),
    ("PUT", STRATEGY, {"strategy": "random", "colour": 1}, 422, "invalid_value", "colour"),
    ("PUT", STRATEGY, {"strategy": "random", "wait_s": -1}, 422, "invalid_value", "wait_s"),
    ("PUT", STRATEGY, '{"strategy": "random", "wait_s": NaN}', 422, "invalid_value", "wait_s"),
    (
        "PUT",
        STRATEGY,
        {"strategy": "random", "hash_header": "x-a"},
        422,
        "invalid_value",
        "hash_header",
    ),
    ("PUT", STRATEGY, {"strategy": "random", "service": "nope"}, 404, "not_found", "service"),
    ("GET", "/api/v1/router/services/nope/backends", None, 404, "not_found", "service"),
    ("POST", "/api/v1/router/services/nope/backends", {"name": "x"}, 404, "not_found", "service"),
    ("POST", QDRANT, "", 400, "bad_request", None),
    (
        "POST",
        QDRANT,
        {"name": "q3", "address": "127.0.0.1", "port": 70000},
        422,
        "invalid_value",
        "port",
    ),
    (
        "POST",
        QDRANT,
        {"name": "q3", "address": "127.0.0.1", "port": 0},
        422,
        "invalid_value",
        "port",
    ),
    (
        "POST",
        QDRANT,
        {"name": "q3", "address": "127.0.0.1", "port": 9, "weight": 0},
        422,
        "invalid_value",
        "weight",
    ),
    (
        "POST",
        QDRANT,
        {"name": "q3", "address": "qdrant_local", "port": 9},
        422,
        "invalid_value",
        "address",
    ),
    ("POST", QDRANT, {"address": "127.0.0.1", "port": 9}, 422, "invalid_value", "name"),
    (
        "POST",
        QDRANT,
        {"name": "Q 3", "address": "127.0.0.1", "port": 9},
        422,
        "invalid_value",
        "name",
    ),
    (
        "POST",
        QDRANT,
        {"name": "qdrant-secondary", "address": "127.0.0.1", "port": 9},
        409,
        "conflict",
        "name",
    ),
    (
        "POST",
        QDRANT,
        {"name": "embedding-gpu0", "address": "127.0.0.1", "port": 9},
        409,
        "conflict",
        "name",
    ),
    ("PATCH", QDRANT + "/nope", {"weight": 2}, 404, "not_found", "backend"),
    ("PATCH", QDRANT + "/qdrant-primary", {"weight": 0}, 422, "invalid_value", "weight"),
    (
        "PATCH",
        QDRANT + "/qdrant-primary",
        {"weight": MAX_WEIGHT + 1},
        422,
        "invalid_value",
        "weight",
    ),
    # Envoy's priority is a uint32: a larger one would fail only at publish time.
    ("PATCH", QDRANT + "/qdrant-primary", {"priority": 2**33}, 422, "invalid_value", "priority"),
    ("PATCH", QDRANT + "/qdrant-primary", {"priority": 2**32}, 422, "invalid_value", "priority"),
    (
        "POST",
        QDRANT,
        {"name": "q-new", "address": "127.0.0.1", "port": 9, "priority": 2**32},
        422,
        "invalid_value",
        "priority",
    ),
    ("PATCH", QDRANT + "/qdrant-primary", {"port": 1}, 422, "invalid_value", "port"),
    ("PATCH", QDRANT + "/qdrant-primary", {}, 422, "invalid_value", None),
    (
        "PATCH",
        QDRANT + "/qdrant-primary",
        {"draining": "yes"},
        422,
        "invalid_value",
        "draining",
    ),
    ("DELETE", QDRANT + "/nope", None, 404, "not_found", "backend"),
    ("DELETE", "/api/v1/router/services/phi3/backends/phi3", None, 409, "conflict", "backend"),
    ("DELETE", QDRANT + "/qdrant-primary?wait_s=soon", None, 422, "invalid_value", "wait_s"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "error", "field"), ERRORS)
async def test_rejected_request_is_json_and_changes_nothing(
    controller: Controller,
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    body: object,
    status: int,
    error: str,
    field: str | None,
) -> None:
    """Each error class answers its status with {error, detail, field}, and the
    intent, its revision and the published config stay as they were."""
    intent, revision = controller.store.intent, controller.store.revision
    published = intent_driven_versions(controller)
    raw = body if isinstance(body, str) else None
    got, answer = await call(http, controller, method, path, None if raw else body, data=raw)
    assert (got, answer["error"], answer.get("field")) == (status, error, field), answer
    assert answer["detail"]
    assert controller.store.intent is intent and controller.store.revision == revision
    assert intent_driven_versions(controller) == published


# Every call that takes a body (OpenAPI path), with a body that would be valid as JSON.
BODY_CALLS: list[tuple[str, str, dict[str, Any]]] = [
    ("PUT", STRATEGY, {"strategy": "random"}),
    (
        "POST",
        "/api/v1/router/services/{service}/backends",
        {"name": "q3", "address": "127.0.0.3", "port": 9},
    ),
    ("PATCH", "/api/v1/router/services/{service}/backends/{backend}", {"weight": 3}),
    ("POST", "/api/v1/router/circuit-breaker/test", {"backend": "qdrant"}),
    ("POST", "/api/v1/router/failover/test", {"primary_backend": "qdrant-primary"}),
]


def test_every_call_with_a_body_documents_415() -> None:
    """BODY_CALLS lists exactly the documented operations with a request body, and
    each documents its 415."""
    doc = document(ROUTE_SETS)
    with_body = {
        (method.upper(), path)
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
        if "requestBody" in op
    }
    assert {(method, path) for method, path, _ in BODY_CALLS} == with_body
    for method, path in with_body:
        assert "415" in doc["paths"][path][method.lower()]["responses"], (method, path)


@pytest.mark.parametrize("content_type", ["text/plain", None])
@pytest.mark.parametrize(("method", "path", "body"), BODY_CALLS)
async def test_a_body_that_is_not_declared_json_is_refused_with_415(
    controller: Controller,
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    body: dict[str, Any],
    content_type: str | None,
) -> None:
    """A JSON text sent as text/plain, or with no Content-Type, is not parsed on a
    guess: 415 unsupported_media_type, and nothing changes."""
    intent, revision = controller.store.intent, controller.store.revision
    concrete = path.format(service="qdrant", backend="qdrant-primary")
    url = f"http://{controller.admin_address}{concrete}"
    headers = {} if content_type is None else {"Content-Type": content_type}
    skip = ["Content-Type"] if content_type is None else []
    data = json.dumps(body).encode()
    async with http.request(
        method, url, data=data, headers=headers, skip_auto_headers=skip
    ) as response:
        answer = await response.json()
        assert response.status == 415, answer
    assert answer["error"] == "unsupported_media_type"
    assert "application/json" in answer["detail"]
    assert (content_type or "no Content-Type") in answer["detail"]
    assert controller.store.intent is intent and controller.store.revision == revision


async def test_json_with_a_charset_parameter_is_json(
    controller: Controller, http: aiohttp.ClientSession
) -> None:
    """application/json; charset=utf-8 (any case) is JSON."""
    url = f"http://{controller.admin_address}{STRATEGY}"
    headers = {"Content-Type": "Application/JSON; charset=utf-8"}
    data = json.dumps({"strategy": "random"}).encode()
    async with http.put(url, data=data, headers=headers) as response:
        assert response.status == 200, await response.text()
    assert controller.store.intent.default_strategy is Strategy.RANDOM


def intent_driven_versions(controller: Controller) -> dict[str, str]:
    """Published versions of every type but EDS, which health probes may change
    at any moment (they are not in the intent)."""
    assert controller.cache.snapshot is not None
    versions = controller.cache.snapshot.versions()
    return {t: v for t, v in versions.items() if t != ENDPOINT}


async def test_duplicate_address_in_a_service_is_a_conflict(
    controller: Controller, http: aiohttp.ClientSession
) -> None:
    """A second backend at an address:port the service already has is a 409."""
    qdrant = controller.store.intent.service("qdrant")
    assert qdrant is not None
    taken = qdrant.backends[0]
    body = {"name": "qdrant-copy", "address": taken.address, "port": taken.port}
    status, answer = await call(http, controller, "POST", QDRANT, body)
    assert (status, answer["error"]) == (409, "conflict")
    assert controller.store.intent.service("qdrant") == qdrant


# ---- experiments hold the intent ------------------------------------------------------

INTENT_CHANGES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("PUT", STRATEGY, {"strategy": "random"}),
    ("POST", QDRANT, {"name": "q3", "address": "127.0.0.3", "port": 9}),
    ("PATCH", QDRANT + "/qdrant-primary", {"weight": 3}),
    ("DELETE", QDRANT + "/qdrant-secondary", None),
]


async def test_intent_changes_are_refused_while_an_experiment_runs(
    controller: Controller, http: aiohttp.ClientSession
) -> None:
    """Every intent-changing call answers 409 naming the running experiment and
    changes nothing; once it has ended, the same call works. The document says so."""
    intent, revision = controller.store.intent, controller.store.revision
    with controller.experiments.claim("failover", "qdrant-primary"):
        for method, path, body in INTENT_CHANGES:
            status, answer = await call(http, controller, method, path, body)
            assert (status, answer["error"]) == (409, "conflict"), (method, path, answer)
            assert "the failover experiment on qdrant-primary is running" in answer["detail"]
    assert controller.store.intent is intent and controller.store.revision == revision
    status, answer = await call(http, controller, "PUT", STRATEGY, {"strategy": "random"})
    assert status == 200, answer
    doc = document(ROUTE_SETS)
    for method, path in {
        ("put", STRATEGY),
        ("post", "/api/v1/router/services/{service}/backends"),
        ("patch", "/api/v1/router/services/{service}/backends/{backend}"),
        ("delete", "/api/v1/router/services/{service}/backends/{backend}"),
    }:
        assert (
            "an experiment is running"
            in doc["paths"][path][method]["responses"]["409"]["description"]
        ), (method, path)


def test_the_registry_keeps_changes_and_experiments_apart() -> None:
    """An experiment is refused while a change is applied (naming it) and vice versa;
    two changes may run together."""
    registry = Experiments()
    busy = r"PUT /api/v1/router/strategy\) is being applied"
    with (
        registry.changing("PUT /api/v1/router/strategy"),
        registry.changing("PATCH /x"),
        pytest.raises(Conflict, match=busy),
        registry.claim("failover", "qdrant-primary"),
    ):
        pass
    running = "the circuit-breaker experiment on qdrant-primary"
    with (
        registry.claim("circuit-breaker", "qdrant-primary"),
        pytest.raises(Conflict, match=running),
        registry.changing("PUT /api/v1/router/strategy"),
    ):
        pass
    with registry.changing("PUT /api/v1/router/strategy"):  # released: works again
        pass


# ---- bearer token ----------------------------------------------------------------------


async def test_token_guards_every_mutating_call(
    guarded: Controller, http: aiohttp.ClientSession
) -> None:
    """With ROUTER_ADMIN_TOKEN set: a change without or with a wrong bearer token
    is a 401 JSON error and changes nothing; reads need no token; the right token works."""
    revision = guarded.store.revision
    change = {"strategy": "random"}
    wrong = [{}, {"Authorization": "Bearer nope"}, {"Authorization": TOKEN}]
    for headers in wrong:
        status, body = await call(http, guarded, "PUT", STRATEGY, change, headers=headers)
        assert (status, body["error"]) == (401, "unauthorized"), headers
    status, body = await call(http, guarded, "DELETE", QDRANT + "/qdrant-primary")
    assert status == 401
    assert guarded.store.revision == revision
    assert (await call(http, guarded, "GET", STRATEGY))[0] == 200
    good = {"Authorization": f"Bearer {TOKEN}"}
    status, body = await call(http, guarded, "PUT", STRATEGY, change, headers=good)
    assert status == 200 and guarded.store.intent.default_strategy is Strategy.RANDOM


# ---- OpenAPI 3.0 from JSON Schema --------------------------------------------------------


def test_json_schema_keywords_are_translated_to_openapi_3_0() -> None:
    """null becomes nullable, exclusive bounds booleans, const an enum."""
    from xds_server.admin.schemas import openapi_3_0

    assert openapi_3_0({"anyOf": [{"type": "string"}, {"type": "null"}], "title": "T"}) == {
        "type": "string",
        "nullable": True,
        "title": "T",
    }
    ref = {"$ref": "#/components/schemas/X"}
    assert openapi_3_0({"anyOf": [ref, {"type": "null"}]}) == {"allOf": [ref], "nullable": True}
    assert openapi_3_0({"type": "number", "exclusiveMinimum": 0}) == {
        "type": "number",
        "minimum": 0,
        "exclusiveMinimum": True,
    }
    assert openapi_3_0({"const": "added"}) == {"enum": ["added"]}


# ---- gRPC services: weights are never published ------------------------------------------


async def test_weight_patch_on_a_grpc_service_is_refused_and_changes_nothing(
    http: aiohttp.ClientSession,
) -> None:
    """gRPC services publish every endpoint with weight 1 (translate/grpc.py), so a
    weight edit would be acknowledged and silently dropped: 422 with the reason,
    the intent untouched, for a PATCH and for a new backend. Weight 1 (what is
    published), priority and draining still apply."""
    base = local_settings()
    greeter = Service(
        "greeter",
        (),
        (Backend("greeter-a", "127.0.0.1", 1), Backend("greeter-b", "127.0.0.1", 2)),
        protocol=Protocol.GRPC,
    )
    intent = dataclasses.replace(base.intent, services=(*base.intent.services, greeter))
    async with running_controller(dataclasses.replace(base, intent=intent)) as controller:
        backends = "/api/v1/router/services/greeter/backends"
        path = backends + "/greeter-a"
        before = controller.store.intent
        new = {"name": "greeter-c", "address": "127.0.0.1", "port": 3, "weight": 2}
        refused = [
            ("PATCH", path, {"weight": 5}),
            ("PATCH", path, {"weight": 5, "draining": True}),
            ("POST", backends, new),
        ]
        for method, url, body in refused:
            status, answer = await call(http, controller, method, url, body)
            assert (status, answer["error"], answer["field"]) == (422, "invalid_value", "weight")
            assert "gRPC service 'greeter'" in answer["detail"], answer
            assert "weight 1" in answer["detail"], answer
            assert controller.store.intent is before
        status, answer = await call(
            http, controller, "PATCH", path, {"weight": 1, "draining": True}
        )
        assert status == 200 and answer["backend"]["draining"] is True, answer
        status, answer = await call(http, controller, "POST", backends, new | {"weight": 1})
        assert status == 201, answer

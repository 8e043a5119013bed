"""The document's request schemas accept exactly what the handlers accept.

For every operation with a body, a table of bodies at each constraint's edges
(patterns, bounds, enums, required and unknown keys, the rules a handler adds)
is judged twice: by the document's schema (a JSON Schema draft 4 validator,
formats checked: OpenAPI 3.0's schema objects are draft 4's) and by what the
handler runs before acting (the pydantic model and the handler's own rule). The
two verdicts must agree on every body; the schemathesis run
(test_openapi_conformance.py) samples the same question at random.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jsonschema_rs
import pytest

from xds_server.admin import ROUTE_SETS
from xds_server.admin.bodies import BackendAdd, BackendPatch, CircuitBreakerTest, FailoverTest
from xds_server.admin.errors import ApiError
from xds_server.admin.experiments import limits_of
from xds_server.admin.openapi import document
from xds_server.admin.strategy import parse_request
from xds_server.errors import XdsServerError
from xds_server.model.validation import parse
from xds_server.settings import MAX_WEIGHT

STRATEGY = ("put", "/api/v1/router/strategy")
BACKENDS = ("post", "/api/v1/router/services/{service}/backends")
BACKEND = ("patch", "/api/v1/router/services/{service}/backends/{backend}")
CIRCUIT = ("post", "/api/v1/router/circuit-breaker/test")
FAILOVER = ("post", "/api/v1/router/failover/test")


def _patch(body: object) -> object:
    changes = parse(BackendPatch, body).changes()
    if not changes:
        raise ApiError(422, "invalid_value", "nothing to change")
    return changes


# What each handler runs on the body before it acts (admin/strategy.py, backends.py,
# experiments.py).
ACCEPTS: dict[tuple[str, str], Callable[[Any], object]] = {
    STRATEGY: parse_request,
    BACKENDS: lambda body: parse(BackendAdd, body),
    BACKEND: _patch,
    CIRCUIT: lambda body: limits_of(parse(CircuitBreakerTest, body)),
    FAILOVER: lambda body: limits_of(parse(FailoverTest, body)),
}

NEW = {"name": "q3", "address": "127.0.0.3", "port": 9}
BODIES: dict[tuple[str, str], list[object]] = {
    STRATEGY: [
        {"strategy": "random"},
        {"strategy": "fastest"},
        {},
        {"strategy": "random", "colour": 1},
        {"strategy": "ring_hash", "hash_header": "x-user"},
        {"strategy": "maglev", "hash_header": "x-user", "service": "qdrant"},
        {"strategy": "random", "hash_header": "x-user"},
        {"strategy": "round_robin", "hash_header": "x-user"},
        {"strategy": "ring_hash", "hash_header": "X-User"},
        {"strategy": "ring_hash", "hash_header": ""},
        {"strategy": "ring_hash", "hash_header": None},
        {"strategy": "random", "service": None},
        {"strategy": "random", "service": "a" * 63},
        {"strategy": "random", "service": "a" * 64},
        {"strategy": "random", "service": "Qdrant"},
        {"strategy": "random", "service": "qdrant\n"},
        {"strategy": "random", "service": "-q"},
        {"strategy": "random", "wait_s": 0},
        {"strategy": "random", "wait_s": 61},
        {"strategy": "random", "wait_s": 1e300},
        {"strategy": "random", "wait_s": -0.001},
        {"strategy": "random", "wait_s": "5"},
        {"strategy": "random", "wait_s": True},
        {"strategy": "random", "wait_s": None},
        {"strategy": 1},
    ],
    BACKENDS: [
        NEW,
        {"address": "127.0.0.1", "port": 9},
        NEW | {"colour": 1},
        NEW | {"draining": True},
        NEW | {"port": 0},
        NEW | {"port": 1},
        NEW | {"port": 65535},
        NEW | {"port": 65536},
        NEW | {"port": 9.0},
        NEW | {"port": "9"},
        NEW | {"port": True},
        NEW | {"weight": 0},
        NEW | {"weight": MAX_WEIGHT},
        NEW | {"weight": MAX_WEIGHT + 1},
        NEW | {"priority": -1},
        NEW | {"priority": 0},
        NEW | {"priority": 7},
        NEW | {"address": "::1"},
        NEW | {"address": "2001:db8::1"},
        NEW | {"address": "::ffff:127.0.0.1"},
        NEW | {"address": "localhost"},
        NEW | {"address": "1.2.3"},
        NEW | {"address": "01.2.3.4"},
        NEW | {"address": "256.1.1.1"},
        NEW | {"address": "qdrant.internal"},
        NEW | {"address": "Qdrant-0.LAN"},
        NEW | {"address": "gpu_0.lan"},
        NEW | {"address": "-a.lan"},
        NEW | {"address": "a..lan"},
        NEW | {"address": "a.lan."},
        NEW | {"address": ""},
        NEW | {"health_path": "/"},
        NEW | {"health_path": "/ready/now"},
        NEW | {"health_path": "ready"},
        NEW | {"health_path": "/a b"},
        NEW | {"health_path": "/a?b"},
        NEW | {"health_path": "/a#b"},
        NEW | {"health_path": "/a\n"},
        NEW | {"health_path": "/a\x1d"},  # white space to str.isspace, not to ECMA's \s
        NEW | {"health_path": "/a\x85"},
        NEW | {"health_path": "/a\u3000"},
        NEW | {"health_path": "/a\ufeff"},  # the other way round
        NEW | {"health_path": "/\U0001f600"},
        NEW | {"name": "Q3"},
        NEW | {"name": "q" * 63},
        NEW | {"name": "q" * 64},
        NEW | {"name": "q.3_x-y"},
        NEW | {"wait_s": 0.5},
        NEW | {"name": None},
    ],
    BACKEND: [
        {"weight": 2},
        {"priority": 1},
        {"draining": True},
        {"draining": False, "wait_s": 1},
        {},
        {"wait_s": 1},
        {"weight": None},
        {"draining": None},
        {"weight": 0},
        {"weight": MAX_WEIGHT + 1},
        {"draining": "yes"},
        {"port": 1},
        {"weight": 2, "priority": -1},
    ],
    CIRCUIT: [
        {"backend": "qdrant"},
        {"backend": "qdrant", "simulate_failure": True},
        {"backend": "qdrant", "simulate_failure": False},
        {"backend": "qdrant", "simulate_failure": None},
        {"backend": "qdrant", "max_duration_s": 1},
        {"backend": "qdrant", "max_duration_s": 0.5},
        {"backend": "qdrant", "max_duration_s": 60},
        {"backend": "qdrant", "max_duration_s": 61},
        {"backend": "qdrant", "ejection_time_s": 0.1},
        {"backend": "qdrant", "ejection_time_s": 0.05},
        {"backend": "qdrant", "ejection_time_s": None},
        {"backend": "qdrant", "concurrency": 0},
        {"backend": "qdrant", "concurrency": 1},
        {"backend": "qdrant", "concurrency": 32},
        {"backend": "qdrant", "concurrency": 33},
        {"backend": "qdrant", "concurrency": 1.5},
        {"backend": "qdrant", "failure": "http_503"},
        {"backend": "qdrant", "failure": "connection_refused"},
        {"backend": "qdrant", "failure": "timeout"},
        {"backend": "qdrant", "failure": None},
        {"backend": "Qdrant"},
        {},
        {"primary_backend": "qdrant-primary"},
    ],
    FAILOVER: [
        {"primary_backend": "qdrant-primary"},
        {"primary_backend": "qdrant-primary", "simulate_failure": False},
        {"primary_backend": "qdrant-primary", "max_duration_s": 2.5},
        {"backend": "qdrant"},
        {},
    ],
}


def test_every_operation_with_a_body_has_a_table() -> None:
    with_body = {
        (method, path)
        for path, ops in document(ROUTE_SETS)["paths"].items()
        for method, op in ops.items()
        if "requestBody" in op
    }
    assert with_body == set(ACCEPTS) == set(BODIES)


def accepted(operation: tuple[str, str], body: object) -> bool:
    try:
        ACCEPTS[operation](body)
    except (XdsServerError, ApiError):  # ConfigError (422 by field) or the handler's 422
        return False
    return True


@pytest.mark.parametrize(
    ("operation", "body"),
    [(operation, body) for operation, bodies in BODIES.items() for body in bodies],
    ids=[f"{op[0]} {op[1]} {body}"[:120] for op, bodies in BODIES.items() for body in bodies],
)
def test_the_schema_accepts_exactly_what_the_handler_accepts(
    operation: tuple[str, str], body: object
) -> None:
    method, path = operation
    doc = document(ROUTE_SETS)
    schema = doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
    documented = jsonschema_rs.Draft4Validator(schema, validate_formats=True).is_valid(body)
    assert documented == accepted(operation, body), (
        f"the document {'accepts' if documented else 'refuses'} it, the handler does not"
    )

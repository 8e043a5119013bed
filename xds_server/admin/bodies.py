"""The admin API's request bodies and answers, as pydantic models: one definition per shape.

Bodies reuse the config file's field types (model/fields.py), so a port, a
weight, a name or a strategy is checked, worded and documented alike in
router_config.yaml and in the API. `parse` (model/validation.py) turns a bad
body into a ConfigError with a problem per field, which answers 422 with the
first problem's field.

Answers are documented (OpenAPI) from their models. Handlers still build them
as plain dicts, so no answer changed in this move; tests validate real answers
against these models (unknown keys are errors there too), so the document and
the answers cannot drift apart.

Kept hand-written: the schemas of the read-only reports (health, metrics,
proxies), which mirror structures owned by their own modules, and the error
answer of admin/errors.py (admin/openapi.py).
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from xds_server.admin.changes import WAIT_S_SCHEMA, wait_value
from xds_server.errors import InvalidValue
from xds_server.experiments import FAILURE_MODES, Limits
from xds_server.model.fields import (
    FLAG,
    BackendName,
    Draining,
    HealthPath,
    Host,
    Name,
    OptionalDraining,
    OptionalHeaderName,
    OptionalName,
    OptionalPriority,
    OptionalWeight,
    Port,
    Priority,
    Rule,
    StrategyName,
    Weight,
)
from xds_server.model.intent import Backend, Health, Strategy
from xds_server.model.schema import BackendFields
from xds_server.model.shape import Shape
from xds_server.model.tls_schema import BackendTlsConfig
from xds_server.model.values import shown
from xds_server.pipeline.changes import DEFAULT_WAIT_S

MAX_DURATION_S = 60.0
MAX_CONCURRENCY = 32


def _body_wait(value: object) -> float:
    """wait_s in a body: omitted means the default, null is refused like every other
    optional field's (model/fields.py), so the schema's "number" is the whole truth."""
    if value is None:
        raise InvalidValue("wait_s must be a number of seconds >= 0, got null")
    return wait_value(value)


WaitSeconds = Annotated[float, Rule(_body_wait, WAIT_S_SCHEMA)]


# A request body: unknown keys are errors, as in the config file.
Body = Shape


# ---- strategy --------------------------------------------------------------------------


HASHING = frozenset({Strategy.RING_HASH, Strategy.MAGLEV})
# hash_header is omitted, or the strategy hashes (OpenAPI 3.0 has no if/then).
HASH_HEADER_RULE: dict[str, Any] = {
    "anyOf": [
        {"not": {"required": ["hash_header"]}},
        {"properties": {"strategy": {"enum": sorted(s.value for s in HASHING)}}},
    ]
}


class StrategyPut(Body):
    """The strategy to set, for one service or for all; a hash_header only with a
    hashing strategy (admin/strategy.py parse_request)."""

    model_config = ConfigDict(json_schema_extra=HASH_HEADER_RULE)

    strategy: StrategyName
    service: OptionalName = Field(
        default=None,
        description="Only this service; omitted: every service (the default strategy is "
        "set and per-service overrides are cleared)",
    )
    hash_header: OptionalHeaderName = Field(
        default=None, description="Request header hashed by ring_hash or maglev (lower case)"
    )
    wait_s: WaitSeconds = DEFAULT_WAIT_S


# ---- backends --------------------------------------------------------------------------


class BackendAdd(BackendFields):
    """A new backend: the config file's backend fields but `draining` (a new
    backend takes traffic), plus the wait."""

    wait_s: WaitSeconds = DEFAULT_WAIT_S

    def to_backend(self) -> Backend:
        return Backend(**{k: v for k, v in self if k != "wait_s"})


class BackendPatch(Body):
    """What may change of a backend; at least one of weight, priority, draining
    (wait_s alone changes nothing: admin/backends.py answers 422)."""

    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [{"required": [key]} for key in ("weight", "priority", "draining")]
        }
    )

    weight: OptionalWeight = None
    priority: OptionalPriority = None
    draining: OptionalDraining = None
    wait_s: WaitSeconds = DEFAULT_WAIT_S

    def changes(self) -> dict[str, Any]:
        """The backend fields given (none may be null)."""
        given = self.model_fields_set - {"wait_s"}
        return {
            key: getattr(self, key) for key in ("weight", "priority", "draining") if key in given
        }


# ---- experiments -------------------------------------------------------------------------


def _seconds(low: float, high: float) -> Any:
    def convert(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InvalidValue(f"must be a number of seconds, got {shown(value)}")
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


_DEFAULT_LIMITS = Limits()
# Schema-valid is only true: false passes the converter and is refused with 422
# by the handler (admin/experiments.py limits_of), with its reason.
SIMULATE_FAILURE = Rule(
    _flag,
    {
        **FLAG.schema,
        "enum": [True],
        "description": "must be true: the experiment really makes the backend fail",
    },
)
MAX_DURATION = Rule(
    _seconds(1.0, MAX_DURATION_S),
    {
        "type": "number",
        "minimum": 1,
        "maximum": MAX_DURATION_S,
        "description": "bound of every wait; the restore steps run after it",
    },
)
EJECTION_TIME = Rule(
    _seconds(0.1, MAX_DURATION_S),
    {
        "type": "number",
        "minimum": 0.1,
        "maximum": MAX_DURATION_S,
        "description": "ejection time during the test (temporary change of "
        "circuit_breaker_timeout for every cluster, restored at the end); default "
        "min(configured, 2)",
    },
)
CONCURRENCY = Rule(
    _concurrency,
    {
        "type": "integer",
        "minimum": 1,
        "maximum": MAX_CONCURRENCY,
        "description": "concurrent probe clients sending GET <service route> through Envoy",
    },
)
FAILURE = Rule(
    _failure,
    {
        "type": "string",
        "enum": list(FAILURE_MODES),
        "description": "http_503: the sample backend's /_control/fault answers 503 "
        "(default when the backend has it); connection_refused: the backend is "
        "pointed at a loopback port that refuses connections (temporary intent change)",
    },
)


class ExperimentBody(Body):
    """What both experiments take besides the backend they fail."""

    simulate_failure: Annotated[bool, SIMULATE_FAILURE] = True
    max_duration_s: Annotated[float, MAX_DURATION] = _DEFAULT_LIMITS.max_duration_s
    ejection_time_s: Annotated[float | None, EJECTION_TIME] = None
    concurrency: Annotated[int, CONCURRENCY] = _DEFAULT_LIMITS.concurrency
    failure: Annotated[str | None, FAILURE] = None

    def limits(self) -> Limits:
        return Limits(
            max_duration_s=self.max_duration_s,
            ejection_time_s=self.ejection_time_s,
            concurrency=self.concurrency,
            failure=self.failure,
        )


class CircuitBreakerTest(ExperimentBody):
    """Which backend to fail until Envoy ejects it, and the experiment's bounds."""

    backend: Name = Field(description="a service name (its first backend) or a backend name")


class FailoverTest(ExperimentBody):
    """Which primary backend to fail under traffic, and the experiment's bounds."""

    primary_backend: Name = Field(description="the backend to fail")


# ---- answers ---------------------------------------------------------------------------


class Answer(BaseModel):
    """An answer's shape; unknown keys are errors, so a test catches an undocumented one."""

    model_config = ConfigDict(extra="forbid")


class ApplyFailure(Answer):
    node_id: str
    reason: str = Field(description="NACK detail, or that no ACK came within the wait")


class StatsError(Answer):
    node_id: str
    envoy_admin: str | None
    error: str


class Confirmation(Answer):
    """How a change was confirmed (admin/changes.py)."""

    generation: int = Field(description="snapshot generation that carries the change")
    proxies: int = Field(description="connected proxies that had to ACK it")
    failures: list[ApplyFailure] = Field(description="proxies that NACKed or did not ACK")
    apply_ms: float = Field(description="milliseconds from storing the change to the last ACK")


class StrategyChange(Confirmation):
    previous_strategy: str = Field(description="'mixed' when the services differed")
    new_strategy: StrategyName
    service: str | None
    previous_by_service: dict[str, StrategyName]
    change_timestamp: str = Field(json_schema_extra={"format": "date-time"})
    active_connections_before: dict[str, int]
    active_connections_after: dict[str, int]
    strategy_applied: bool = Field(description="every connected proxy ACKed")
    changed_services: list[str] = Field(
        description="affected services whose effective strategy or hash key changed"
    )
    stats_errors: list[StatsError] = Field(description="proxies whose admin was unreadable")


class StrategyChangeAnswer(Answer):
    strategy_change: StrategyChange


class ServiceStrategy(Answer):
    strategy: StrategyName
    source: Literal["default", "service"]
    hash_header: str


class StrategyOverview(Answer):
    """The default strategy and each service's effective one."""

    default_strategy: StrategyName
    services: dict[str, ServiceStrategy]
    strategies: dict[str, str] = Field(description="what each strategy is in Envoy")


class BackendView(Answer):
    """A backend as the API shows it: the config file's fields plus the health verdict."""

    name: BackendName
    address: Host
    port: Port
    weight: Weight
    priority: Priority
    health_path: HealthPath
    draining: Draining
    tls: BackendTlsConfig | None = Field(description="null: plaintext")
    health: Health


class BackendList(Answer):
    service: str
    backends: list[BackendView]


class BackendChange(Confirmation):
    service: str
    action: Literal["added", "updated", "removed"]
    backend: BackendView | None
    applied: bool = Field(description="every connected proxy ACKed")

"""Field types shared by the config file's models and the admin API's body models.

Each type is an `Annotated` alias carrying a `Rule`: the converter of
model/values.py that checks a value (so every message is the converter's), the
JSON Schema that describes it (built from the same constants: patterns, bounds,
enum members), and how a `ROUTER_*` environment variable spells it. A limit or a
description is written once, here, and the file, the API and both schemas
follow.

A Rule replaces pydantic's own checking of the value (a plain validator), so
`Annotated[str | None, NAME]` means "may be omitted" without accepting an
explicit null: the converter sees the null and says what it thinks of it, as
the config file always did.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import CoreSchema, PydanticCustomError, core_schema

from xds_server.errors import InvalidValue
from xds_server.model.access_log import AccessLog
from xds_server.model.edge import EscapedSlashes, UnderscoreHeaders
from xds_server.model.health_checker import HealthChecker
from xds_server.model.intent import Protocol, SocketAddress, Strategy
from xds_server.model.values import (
    HEADER_PATTERN,
    HOST_NAME_SCHEMA_PATTERN,
    MAX_HOST_NAME,
    MAX_PRIORITY,
    MAX_TIMEOUT_S,
    MAX_WEIGHT,
    MODEL_PATTERN,
    NAME_PATTERN,
    NUMERIC_LAST_LABEL_PATTERN,
    REDIS_SCHEMES,
    RESERVED_ROUTE_PREFIX,
    RESERVED_ROUTES,
    RETRY_CONDITIONS,
    RETRY_STATUS_CODES,
    Convert,
    flag_from_text,
    int_from_text,
    integer_between,
    number_between,
    number_from_text,
    one_of,
    optional_text,
    or_null,
    shown,
    str_from_text,
    to_access_log,
    to_flag,
    to_header_name,
    to_host,
    to_ip_socket_address,
    to_model,
    to_name,
    to_name_server,
    to_path,
    to_protocol,
    to_redis_url,
    to_retry_condition,
    to_route,
    to_strategy,
)

INVALID = "invalid_value"  # the pydantic error type of every Rule


def invalid_value(message: str) -> PydanticCustomError:
    """A pydantic error whose message is exactly `message` (braces and all)."""
    return PydanticCustomError(INVALID, "{message}", {"message": message})


@dataclass(frozen=True)
class Rule:
    """How one kind of value is checked, described and read from the environment."""

    convert: Convert
    schema: Mapping[str, Any]
    from_text: Callable[[str], object] = str_from_text
    # The JSON form of a checked value, where it is not the value itself
    # (a SocketAddress is written host:port).
    to_json: Callable[[Any], Any] | None = field(default=None, compare=False)

    def check(self, value: object) -> Any:
        try:
            return self.convert(value)
        except InvalidValue as error:
            raise invalid_value(str(error)) from None

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        serialization = (
            None
            if self.to_json is None
            else core_schema.plain_serializer_function_ser_schema(self.to_json, when_used="json")
        )
        return core_schema.no_info_plain_validator_function(self.check, serialization=serialization)

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return copy.deepcopy(dict(self.schema))


def integer(minimum: int, maximum: int | None = None, description: str = "") -> Rule:
    schema: dict[str, Any] = {"type": "integer", "minimum": minimum}
    if maximum is not None:
        schema["maximum"] = maximum
    return Rule(integer_between(minimum, maximum), _described(schema, description), int_from_text)


def number(
    minimum: float, *, inclusive: bool, maximum: float | None = None, description: str = ""
) -> Rule:
    schema: dict[str, Any] = {"type": "number"}
    schema["minimum" if inclusive else "exclusiveMinimum"] = minimum
    if maximum is not None:
        schema["maximum"] = maximum
    convert = number_between(minimum, inclusive=inclusive, maximum=maximum)
    return Rule(convert, _described(schema, description), number_from_text)


def _described(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return schema | {"description": description} if description else schema


def _anchored(pattern: re.Pattern[str]) -> str:
    return f"^{pattern.pattern}$"


def _condition_json(condition: str) -> str | int:
    """A status code is held as digits (one type for the list), written as the number."""
    return int(condition) if condition.isdigit() else condition


def _enum_value(member: StrEnum) -> str:
    return member.value


def choice(choices: type[StrEnum], description: str) -> Rule:
    """One of an enum's values (the config file spells the value)."""
    schema = {"type": "string", "enum": [c.value for c in choices], "description": description}
    return Rule(one_of(choices), schema, to_json=_enum_value)


# What each strategy really is in Envoy (docs/envoy-notes.md, "Mapping of the spec").
STRATEGY_NOTES: dict[str, str] = {
    Strategy.ROUND_ROBIN: "Envoy ROUND_ROBIN; every backend alike, weights ignored",
    Strategy.LEAST_CONNECTIONS: (
        "Envoy LEAST_REQUEST: of two randomly chosen backends (power of two choices), "
        "the one with fewer *active requests*. It does not count connections; Envoy "
        "has no true least-connections balancer"
    ),
    Strategy.WEIGHTED: "Envoy ROUND_ROBIN honouring each backend's weight (3:1 gives 75/25)",
    Strategy.RANDOM: "Envoy RANDOM",
    Strategy.RING_HASH: "Envoy RING_HASH: consistent hashing on the service's hash_header",
    Strategy.MAGLEV: "Envoy MAGLEV: consistent hashing on the service's hash_header",
}

# to_path: starts with '/', no white space (str.isspace), '?' or '#'. The white space
# is spelled out: `\s` is another set in other regex engines (ECMA 262's, which JSON
# Schema names, lacks \x1c-\x1f and \x85 and has \ufeff), so a client's schema
# check would disagree with the converter.
_SPACE = r"\t-\r\x1c- \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_PATH_PATTERN = rf"^/[^{_SPACE}?#]*$"

NAME = Rule(
    to_name,
    {
        "type": "string",
        "pattern": _anchored(NAME_PATTERN),
        "description": "lower case, up to 63 characters",
    },
)
MODEL = Rule(
    to_model,
    {
        "type": "string",
        "pattern": _anchored(MODEL_PATTERN),
        "description": "a model id as OpenAI clients send it in the body's `model`",
    },
)
STRATEGY = Rule(
    to_strategy,
    {
        "type": "string",
        "enum": [s.value for s in Strategy],
        "description": "; ".join(f"{name}: {note}" for name, note in STRATEGY_NOTES.items()),
    },
    to_json=_enum_value,
)
PROTOCOL = Rule(
    to_protocol,
    {
        "type": "string",
        "enum": [p.value for p in Protocol],
        "description": "http; or grpc: also served to proxyless gRPC clients as "
        "xds:///<name> (strategy round_robin or ring_hash)",
    },
    to_json=_enum_value,
)
HEADER_NAME = Rule(
    to_header_name,
    {
        "type": "string",
        "pattern": _anchored(HEADER_PATTERN),
        "description": "request header hashed by ring_hash and maglev (lower case)",
    },
)
HEALTH_PATH = Rule(
    to_path,
    {
        "type": "string",
        "pattern": _PATH_PATTERN,
        "description": "probed by the controller",
    },
)
ROUTE = Rule(
    to_route,
    {
        "type": "string",
        "pattern": _PATH_PATTERN,
        "not": {
            "anyOf": [
                {"pattern": "^" + re.escape(RESERVED_ROUTE_PREFIX)},
                {"enum": sorted(RESERVED_ROUTES)},
            ]
        },
        "description": f"URL path prefix; {RESERVED_ROUTE_PREFIX}* is the controller's",
    },
)
HOST = Rule(
    to_host,
    {
        "type": "string",
        "anyOf": [
            {"format": "ipv4"},
            {"format": "ipv6"},
            {
                "pattern": HOST_NAME_SCHEMA_PATTERN,
                "maxLength": MAX_HOST_NAME,
                "not": {"pattern": NUMERIC_LAST_LABEL_PATTERN},
            },
        ],
        "description": "an IPv4 or IPv6 literal, or a DNS name (RFC 1123) that the "
        "controller resolves: every A/AAAA record becomes an endpoint; localhost is "
        "127.0.0.1",
    },
)
NAME_SERVER = Rule(
    to_name_server,
    {"type": "string", "description": "ip or ip:port (IPv6 as [::1]:53) of a DNS server"},
)
PORT = integer(1, 65535)
# Envoy rejects a locality whose weights sum above 2**32 - 1; a cap per
# backend keeps any realistic service far below that.
WEIGHT = integer(1, MAX_WEIGHT, "share of traffic under the weighted strategy")
PRIORITY = integer(
    0, MAX_PRIORITY, description="higher numbers take traffic only when lower ones are unhealthy"
)
FLAG = Rule(to_flag, {"type": "boolean"}, flag_from_text)
DRAINING = Rule(
    to_flag,
    {"type": "boolean", "description": "true: no new requests (EDS DRAINING)"},
    flag_from_text,
)
SECONDS = number(0, inclusive=False, description="seconds")
# A timeout where 0 switches the limit off (Envoy's meaning of a zero duration there);
# null or omitted: the level above decides (a service's the router's, the router's
# Envoy's listener).
_TIMEOUT_SCHEMA = {"type": "number", "minimum": 0, "maximum": MAX_TIMEOUT_S}
TIMEOUT = Rule(
    or_null(number_between(0, inclusive=True, maximum=MAX_TIMEOUT_S)),
    {"anyOf": [_TIMEOUT_SCHEMA, {"type": "null"}], "description": "seconds; 0 = none"},
    number_from_text,
)
RETRY_CONDITION = Rule(
    to_retry_condition,
    {
        "anyOf": [
            {"type": "string", "enum": list(RETRY_CONDITIONS)},
            {
                "type": "integer",
                "minimum": RETRY_STATUS_CODES[0],
                "maximum": RETRY_STATUS_CODES[1],
            },
        ],
        "description": "an Envoy retry_on condition, or an HTTP status code to retry",
    },
    to_json=_condition_json,
)
ACCESS_LOG = Rule(
    to_access_log,
    {
        "anyOf": [
            {"type": "string", "enum": ["stdout", "off"]},
            {"const": False},
            {"type": "string", "pattern": "^/.*[^/]$"},
        ],
        "description": "Envoy's access log, one JSON object per request on the listener: "
        "stdout, off (false too), or an absolute file path on Envoy's host whose "
        "directory exists",
    },
    to_json=str,
)
_ADDRESS_SCHEMA = {"type": "string", "pattern": r"^.+:[0-9]+$"}
IP_ADDRESS = Rule(
    to_ip_socket_address,
    _ADDRESS_SCHEMA
    | {
        "description": "ip:port (IPv6 as [::1]:port), an IP literal: Envoy binds or "
        "connects to it and resolves no names there"
    },
    to_json=str,
)
# Empty means unset, so `ROUTER_REDIS_URL=` can switch a file's value off.
REDIS_URL = Rule(
    optional_text(to_redis_url),
    {
        "anyOf": [
            {"type": "string", "pattern": "^(" + "|".join(map(re.escape, REDIS_SCHEMES)) + ")"},
            {"const": ""},
            {"type": "null"},
        ]
    },
)
TEXT = Rule(optional_text(str), {"anyOf": [{"type": "string"}, {"type": "null"}]})

Name = Annotated[str, NAME]
BackendName = Annotated[
    str, NAME, Field(description="unique across all services (Envoy endpoint hostname, stats key)")
]
OptionalName = Annotated[str | None, NAME]  # may be omitted, not null
ModelName = Annotated[str, MODEL]
StrategyName = Annotated[Strategy, STRATEGY]
OptionalStrategy = Annotated[Strategy | None, STRATEGY]
ProtocolName = Annotated[Protocol, PROTOCOL]
HeaderName = Annotated[str, HEADER_NAME]
OptionalHeaderName = Annotated[str | None, HEADER_NAME]
HealthPath = Annotated[str, HEALTH_PATH]
Route = Annotated[str, ROUTE]
Host = Annotated[str, HOST]
NameServer = Annotated[str, NAME_SERVER]
Port = Annotated[int, PORT]
Weight = Annotated[int, WEIGHT]
OptionalWeight = Annotated[int | None, WEIGHT]
Priority = Annotated[int, PRIORITY]
OptionalPriority = Annotated[int | None, PRIORITY]
Draining = Annotated[bool, DRAINING]
OptionalDraining = Annotated[bool | None, DRAINING]
Flag = Annotated[bool, FLAG]
Seconds = Annotated[float, SECONDS]
OptionalTimeout = Annotated[float | None, TIMEOUT]
RetryCondition = Annotated[str, RETRY_CONDITION]
IpAddress = Annotated[SocketAddress, IP_ADDRESS]
AccessLogTarget = Annotated[AccessLog, ACCESS_LOG]
RedisUrl = Annotated[str | None, REDIS_URL]
OptionalText = Annotated[str | None, TEXT]
EscapedSlashesAction = Annotated[
    EscapedSlashes,
    choice(
        EscapedSlashes,
        "a path with %2F or %5C: reject_request (400), unescape_and_redirect (307), "
        "unescape_and_forward, keep_unchanged (Envoy path_with_escaped_slashes_action)",
    ),
]
UnderscoreHeadersAction = Annotated[
    UnderscoreHeaders,
    choice(
        UnderscoreHeaders,
        "a request header named with '_': reject_request (400), drop_header, allow "
        "(Envoy headers_with_underscores_action)",
    ),
]
HealthCheckerName = Annotated[
    HealthChecker,
    choice(
        HealthChecker,
        "who probes the backends: controller (the controller itself), or envoy (K "
        "connected Envoys each, over HDS; the controller probes what none is assigned)",
    ),
]


def not_a_list(what: str, value: object) -> str:
    return f"must be a non-empty list of {what}, got {shown(value)}"


@dataclass(frozen=True)
class Listed:
    """A list of `item` (read into a tuple), with the config file's message for anything else.

    `non_empty=False` lets an empty list through: a gRPC service may have no
    routes, so emptiness is then a rule of the service (settings/rules.py)."""

    what: str
    item: Any
    non_empty: bool = True

    def check(self, value: object) -> object:
        if not isinstance(value, list) or (self.non_empty and not value):
            raise invalid_value(not_a_list(self.what, value))
        return value

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        # tuple[item, ...] built at run time (mypy reads `tuple[...]` as a type).
        items = handler.generate_schema(tuple.__class_getitem__((self.item, ...)))
        return core_schema.no_info_before_validator_function(self.check, items)

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        json_schema = handler(schema)
        if self.non_empty:
            json_schema["minItems"] = 1
        return json_schema


def rule_of(metadata: list[Any]) -> Rule | None:
    """The Rule among a field's metadata (pydantic keeps Annotated extras there)."""
    return next((item for item in metadata if isinstance(item, Rule)), None)


class SchemaGenerator(GenerateJsonSchema):
    """pydantic's JSON Schema, less `"default": null` where null is no valid value
    (an optional field that may be omitted but not set to null)."""

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        json_schema = super().default_schema(schema)
        if json_schema.get("default", False) is None and not allows_null(json_schema):
            del json_schema["default"]
        return json_schema


def allows_null(json_schema: Mapping[str, Any]) -> bool:
    kind = json_schema.get("type")
    if kind == "null" or (isinstance(kind, list) and "null" in kind):
        return True
    return any(allows_null(option) for option in json_schema.get("anyOf", ()))

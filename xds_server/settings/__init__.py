"""Settings: `router_config.yaml` plus `ROUTER_*` environment -> one validated value.

Contract:
- `parse_settings` is pure (no I/O, no clock); `load_settings` reads the file.
- Every problem is reported with its field path (`router.queue_size`,
  `services[1].backends[0].port`, `env:ROUTER_STRATEGY`), never only the first.
- Every key of the `router:` section can be overridden by `ROUTER_<KEY>`; the
  environment beats the file. Unknown `ROUTER_*` variables are ignored, so other
  tools may share the prefix; a known variable with a bad value is an error.
- Omitted keys take the defaults of `xds_server.model`, which the shipped
  `config/router_config.yaml` spells out.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from xds_server.errors import ConfigError, InvalidValue, Problem
from xds_server.model.intent import Backend, Intent, Policies, Protocol, Service, SocketAddress
from xds_server.settings.values import (
    ADDRESS,
    IP_ADDRESS,
    MAX_WEIGHT,
    RESERVED_ROUTE_PREFIX,
    RESERVED_ROUTES,
    SECONDS,
    Convert,
    RouterField,
    flag_from_text,
    int_field,
    integer_between,
    is_ip,
    number_field,
    optional_text,
    shown,
    to_flag,
    to_header_name,
    to_ip,
    to_name,
    to_path,
    to_protocol,
    to_redis_url,
    to_route,
    to_strategy,
)
from xds_server.translate.grpc import grpc_problems

__all__ = [
    "BACKEND_FIELDS",
    "EMBEDDED_DEFAULTS",
    "EMBEDDED_SOURCE",
    "ENV_PREFIX",
    "MAX_WEIGHT",
    "RESERVED_ROUTES",
    "RESERVED_ROUTE_PREFIX",
    "InvalidValue",
    "Settings",
    "check_fields",
    "format_problems",
    "header_name_value",
    "ip_literal",
    "load_settings",
    "name_value",
    "parse_settings",
    "strategy_value",
]

EMBEDDED_DEFAULTS: Path = Path(__file__).parent.parent / "defaults" / "router_config.yaml"
EMBEDDED_SOURCE = "<embedded defaults>"
ENV_PREFIX = "ROUTER_"


@dataclass(frozen=True)
class Settings:
    """Everything the controller needs at start: the first intent plus process knobs."""

    intent: Intent
    health_check_interval_s: float
    health_check_timeout_s: float
    worker_threads: int
    metrics_enabled: bool
    xds_address: SocketAddress
    envoy_admin_address: SocketAddress
    # Secrets (a Redis URL may hold a password) stay out of reprs and logs.
    redis_url: str | None = field(repr=False)
    admin_token: str | None = field(repr=False)
    source: str
    # Health-probe verdicts (xds_server/health.py): passes and failures in a
    # row that flip a verdict, and the share of the interval over which the
    # probes of different backends are spread.
    health_check_healthy_threshold: int = 2
    health_check_unhealthy_threshold: int = 3
    health_check_jitter: float = 0.1
    # With Redis: how long the elected prober's lease lasts (docs/replicas.md).
    health_prober_lease: float = 5.0


_ROUTER_FIELDS: dict[str, RouterField] = {
    "strategy": RouterField(to_strategy),
    "health_check_interval": SECONDS,
    "health_check_timeout": SECONDS,
    "health_check_healthy_threshold": int_field(1),
    "health_check_unhealthy_threshold": int_field(1),
    "health_check_jitter": number_field(0, inclusive=True, maximum=1),
    "health_prober_lease": SECONDS,
    "circuit_breaker_threshold": int_field(1),
    "circuit_breaker_timeout": SECONDS,
    "max_retries": int_field(0),
    "retry_delay": number_field(0.001, inclusive=True),  # Envoy's back-off is in ms
    "queue_size": int_field(1),
    "worker_threads": int_field(1),
    "metrics_enabled": RouterField(to_flag, flag_from_text),
    "max_requests": int_field(1),
    "max_connections": int_field(1),
    "request_timeout": SECONDS,
    "healthy_panic_threshold": number_field(0, inclusive=True, maximum=100),
    "listen_address": IP_ADDRESS,
    "envoy_admin_address": IP_ADDRESS,
    "xds_address": ADDRESS,
    "admin_address": ADDRESS,
    "redis_url": RouterField(optional_text(to_redis_url)),
    "admin_token": RouterField(optional_text(str)),
}

# router keys named like their Settings field, defaults taken from it
_HEALTH_VERDICT_KEYS = (
    "health_check_healthy_threshold",
    "health_check_unhealthy_threshold",
    "health_check_jitter",
    "health_prober_lease",
)

# router key -> Policies field
_POLICY_KEYS = {
    "circuit_breaker_threshold": "circuit_breaker_threshold",
    "circuit_breaker_timeout": "circuit_breaker_timeout_s",
    "max_retries": "max_retries",
    "retry_delay": "retry_delay_s",
    "queue_size": "queue_size",
    "max_requests": "max_requests",
    "max_connections": "max_connections",
    "request_timeout": "request_timeout_s",
    "healthy_panic_threshold": "healthy_panic_threshold_percent",
}


def _router_defaults() -> dict[str, Any]:
    """Defaults come from the model so the file, the code and the model cannot drift."""
    intent, policies = Intent(services=()), Policies()
    return {
        "strategy": intent.default_strategy,
        "health_check_interval": 30.0,
        "health_check_timeout": 5.0,
        **{key: Settings.__dataclass_fields__[key].default for key in _HEALTH_VERDICT_KEYS},
        "worker_threads": 8,
        "metrics_enabled": True,
        "listen_address": intent.listen,
        "envoy_admin_address": SocketAddress("127.0.0.1", 9901),
        "xds_address": SocketAddress("127.0.0.1", 18000),
        "admin_address": intent.admin,
        "redis_url": None,
        "admin_token": None,
        **{key: getattr(policies, attr) for key, attr in _POLICY_KEYS.items()},
    }


_SERVICE_SCALARS: dict[str, Convert] = {
    "name": to_name,
    "strategy": to_strategy,
    "group": to_name,
    "hash_header": to_header_name,
    "protocol": to_protocol,
}
_SERVICE_KEYS = (*_SERVICE_SCALARS, "routes", "backends")
_SERVICE_REQUIRED = ("name", "backends")  # and routes, unless the service is grpc

_BACKEND_SCALARS: dict[str, Convert] = {
    "name": to_name,
    "address": to_ip,
    "port": integer_between(1, 65535),
    # Envoy rejects a locality whose weights sum above 2**32 - 1; a cap per
    # backend keeps any realistic service far below that.
    "weight": integer_between(1, MAX_WEIGHT),
    "priority": integer_between(0),
    "health_path": to_path,
    "draining": to_flag,
}
_BACKEND_REQUIRED = ("name", "address", "port")


# --- structure -----------------------------------------------------------------------


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _mapping(
    problems: list[Problem],
    path: str,
    raw: object,
    allowed: Collection[str],
    required: Collection[str] = (),
) -> Mapping[str, object] | None:
    """Check keys; return the mapping even with bad keys so its values are checked too."""
    if not isinstance(raw, dict):
        subject = "" if path else "the configuration "
        problems.append(Problem(path, f"{subject}must be a mapping, got {shown(raw)}"))
        return None
    for key in raw:
        if key not in allowed:
            problems.append(Problem(_join(path, str(key)), _unknown_key(str(key), allowed)))
    for key in required:
        if key not in raw:
            problems.append(Problem(_join(path, key), "required"))
    return {str(k): v for k, v in raw.items() if k in allowed}


def _unknown_key(key: str, allowed: Collection[str]) -> str:
    close = difflib.get_close_matches(key, list(allowed), n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"allowed: {', '.join(allowed)}"
    return f"unknown key; {hint}"


def _items(problems: list[Problem], path: str, raw: object, what: str) -> list[object]:
    if not isinstance(raw, list) or not raw:
        problems.append(Problem(path, f"must be a non-empty list of {what}, got {shown(raw)}"))
        return []
    return raw


def _scalars(
    problems: list[Problem],
    path: str,
    item: Mapping[str, object],
    converters: Mapping[str, Convert],
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, convert in converters.items():
        if key in item:
            try:
                out[key] = convert(item[key])
            except InvalidValue as invalid:
                problems.append(Problem(_join(path, key), str(invalid)))
    return out


class _Seen:
    """Names and routes that must be unique across the whole document."""

    def __init__(self) -> None:
        self._first: dict[tuple[str, str], str] = {}

    def claim(self, problems: list[Problem], path: str, kind: str, value: str) -> None:
        first = self._first.setdefault((kind, value), path)
        if first != path:
            problems.append(Problem(path, f"duplicate {kind} {value!r} (first at {first})"))


# --- router section and environment --------------------------------------------------


def _parse_router(
    problems: list[Problem], raw: object, environ: Mapping[str, str]
) -> dict[str, Any]:
    """Defaults, then the file, then the env. A key whose winning value is bad is dropped."""
    values = _router_defaults()
    section = {} if raw is None else _mapping(problems, "router", raw, _ROUTER_FIELDS)
    for key, value in (section or {}).items():
        _set(problems, values, key, f"router.{key}", value)
    for key in _ROUTER_FIELDS:
        name = ENV_PREFIX + key.upper()
        if name in environ:
            _set(problems, values, key, f"env:{name}", environ[name], from_text=True)
    return values


def _set(
    problems: list[Problem],
    values: dict[str, Any],
    key: str,
    path: str,
    raw: object,
    *,
    from_text: bool = False,
) -> None:
    spec = _ROUTER_FIELDS[key]
    try:
        values[key] = spec.convert(spec.from_text(str(raw)) if from_text else raw)
    except InvalidValue as invalid:
        values.pop(key, None)
        problems.append(Problem(path, str(invalid)))


def _check_router(problems: list[Problem], values: Mapping[str, Any]) -> None:
    interval, timeout = values.get("health_check_interval"), values.get("health_check_timeout")
    if interval is not None and timeout is not None and timeout >= interval:
        message = f"must be less than health_check_interval ({interval:g}), got {timeout:g}"
        problems.append(Problem("router.health_check_timeout", message))
    admin, token_known = values.get("admin_address"), "admin_token" in values
    # A token-less admin API may only be reachable from this host.
    if admin and token_known and values["admin_token"] is None and not _is_loopback(admin.host):
        message = f"required when admin_address is not loopback ({admin})"
        problems.append(Problem("router.admin_token", message))


def _is_loopback(host: str) -> bool:
    if host.lower().removesuffix(".") == "localhost":
        return True
    return is_ip(host) and ipaddress.ip_address(host).is_loopback


# --- services -------------------------------------------------------------------------


def _parse_services(problems: list[Problem], raw: object) -> tuple[Service, ...]:
    seen = _Seen()
    items = _items(problems, "services", raw, "services")
    parsed = [_parse_service(problems, f"services[{i}]", s, seen) for i, s in enumerate(items)]
    return tuple(s for s in parsed if s is not None)


def _parse_service(problems: list[Problem], path: str, raw: object, seen: _Seen) -> Service | None:
    before = len(problems)
    item = _mapping(problems, path, raw, _SERVICE_KEYS, _SERVICE_REQUIRED)
    if item is None:
        return None
    fields = _scalars(problems, path, item, _SERVICE_SCALARS)
    if "name" in fields:
        seen.claim(problems, f"{path}.name", "service name", fields["name"])
    _service_routes(problems, path, item, fields, seen)
    if "backends" in item:
        fields["backends"] = _parse_backends(problems, f"{path}.backends", item["backends"], seen)
    return Service(**fields) if len(problems) == before else None


def _service_routes(
    problems: list[Problem],
    path: str,
    item: Mapping[str, object],
    fields: dict[str, Any],
    seen: _Seen,
) -> None:
    """A gRPC service may have no routes (`[]` or none): only proxyless gRPC
    clients reach it then, not Envoy."""
    grpc = fields.get("protocol") is Protocol.GRPC
    raw = item.get("routes", [] if grpc else None)
    if grpc and raw == []:
        fields["routes"] = ()
    elif "routes" in item:
        fields["routes"] = _parse_routes(problems, f"{path}.routes", raw, seen)
    else:
        problems.append(Problem(f"{path}.routes", "required (only grpc services may omit it)"))


def _parse_routes(problems: list[Problem], path: str, raw: object, seen: _Seen) -> tuple[str, ...]:
    routes: list[str] = []
    for i, value in enumerate(_items(problems, path, raw, "path prefixes")):
        try:
            routes.append(to_route(value))
        except InvalidValue as invalid:
            problems.append(Problem(f"{path}[{i}]", str(invalid)))
            continue
        seen.claim(problems, f"{path}[{i}]", "route", routes[-1])
    return tuple(routes)


def _parse_backends(
    problems: list[Problem], path: str, raw: object, seen: _Seen
) -> tuple[Backend, ...]:
    items = _items(problems, path, raw, "backends")
    parsed = [_parse_backend(problems, f"{path}[{i}]", b, seen) for i, b in enumerate(items)]
    return tuple(b for b in parsed if b is not None)


def _parse_backend(problems: list[Problem], path: str, raw: object, seen: _Seen) -> Backend | None:
    before = len(problems)
    item = _mapping(problems, path, raw, _BACKEND_SCALARS, _BACKEND_REQUIRED)
    if item is None:
        return None
    fields = _scalars(problems, path, item, _BACKEND_SCALARS)
    if "name" in fields:
        # Unique across services: the name is the Envoy endpoint hostname and stats key.
        seen.claim(problems, f"{path}.name", "backend name", fields["name"])
    return Backend(**fields) if len(problems) == before else None


# --- validators shared with the admin API ---------------------------------------------

# The admin API validates request bodies by the file's rules: same messages,
# same limits. Each converter raises InvalidValue.
BACKEND_FIELDS: Mapping[str, Convert] = MappingProxyType(_BACKEND_SCALARS)
name_value: Convert = to_name
ip_literal: Convert = to_ip
strategy_value: Convert = to_strategy
header_name_value: Convert = to_header_name


def check_fields(
    raw: object, converters: Mapping[str, Convert], required: Collection[str] = ()
) -> dict[str, Any]:
    """Check a flat mapping (an API request body): unknown keys, missing keys, bad values.

    Returns the converted values of the keys present. Raises ConfigError listing
    every problem, each with its key as the path.
    """
    problems: list[Problem] = []
    item = _mapping(problems, "", raw, converters, required)
    fields = _scalars(problems, "", item, converters) if item is not None else {}
    if problems:
        raise ConfigError(problems)
    return fields


# --- public API -----------------------------------------------------------------------


def parse_settings(document: object, environ: Mapping[str, str], source: str) -> Settings:
    """Turn a parsed YAML document and the environment into Settings (pure).

    Raises ConfigError listing every problem found.
    """
    problems: list[Problem] = []
    allowed = ("router", "services")
    top = _mapping(problems, "", document, allowed, required=("services",))
    router = _parse_router(problems, (top or {}).get("router"), environ)
    _check_router(problems, router)
    services = _parse_services(problems, top["services"]) if top and "services" in top else ()
    if problems:
        raise ConfigError(problems)
    settings = _build(router, services, source)
    # Needs the whole intent (a service may inherit router.strategy), so it
    # runs once everything else is valid; the translator checks the same.
    problems = grpc_problems(settings.intent)
    if problems:
        raise ConfigError(problems)
    return settings


def _build(values: Mapping[str, Any], services: tuple[Service, ...], source: str) -> Settings:
    policies = Policies(**{attr: values[key] for key, attr in _POLICY_KEYS.items()})
    intent = Intent(
        services=services,
        default_strategy=values["strategy"],
        policies=policies,
        listen=values["listen_address"],
        admin=values["admin_address"],
    )
    return Settings(
        intent=intent,
        health_check_interval_s=values["health_check_interval"],
        health_check_timeout_s=values["health_check_timeout"],
        **{key: values[key] for key in _HEALTH_VERDICT_KEYS},
        worker_threads=values["worker_threads"],
        metrics_enabled=values["metrics_enabled"],
        xds_address=values["xds_address"],
        envoy_admin_address=values["envoy_admin_address"],
        redis_url=values["redis_url"],
        admin_token=values["admin_token"],
        source=source,
    )


def load_settings(
    path: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read the YAML file (None: the embedded defaults), apply the env, validate.

    Raises ConfigError for an unreadable file, a YAML syntax error or any invalid value.
    """
    source = EMBEDDED_SOURCE if path is None else os.fspath(path)
    document = _read_yaml(EMBEDDED_DEFAULTS if path is None else Path(path), source)
    return parse_settings(document, os.environ if environ is None else environ, source)


def _read_yaml(file: Path, source: str) -> object:
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError([Problem(source, f"cannot read: {error}")]) from error
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader subclass: no arbitrary objects
    except yaml.YAMLError as error:
        raise ConfigError([Problem(source, _yaml_message(error))]) from error


def _yaml_message(error: yaml.YAMLError) -> str:
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return f"YAML error at line {mark.line + 1}, column {mark.column + 1}: {error.problem}"
    return f"YAML error: {error}"


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys, which plain YAML silently overwrites."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: list[object] = []  # a list: YAML keys need not be hashable
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                mark = key_node.start_mark
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", mark)
            seen.append(key)
        return super().construct_mapping(node, deep=deep)


def format_problems(error: ConfigError) -> str:
    """One problem per line, as `path: message`."""
    return "\n".join(str(problem) for problem in error.problems)

"""Settings: `router_config.yaml` plus `ROUTER_*` environment -> one validated value.

Contract:
- `parse_settings` is pure (no clock, no I/O) but for reading the PEM files a
  backend's `tls` and `router.tls` name (settings/backend_tls.py,
  settings/edge_tls.py: their problems are the document's, in the same pass)
  and looking at router.access_log's directory (settings/access_log.py);
  `load_settings` reads the file, within the size, depth and alias limits of
  settings/yamlfile.py (a fault is a problem of the file, never a crash or a
  runaway parse).
- Every problem is reported with its field path (`router.queue_size`,
  `services[1].backends[0].port`, `env:ROUTER_STRATEGY`), never only the first,
  rules across fields included (settings/rules.py).
- Every key of the `router:` section can be overridden by `ROUTER_<KEY>`; the
  environment beats the file (settings/environment.py).
- The file's shape, limits and defaults are the models of model/schema.py
  (`xds-server schema` prints them as JSON Schema); omitted keys take the
  defaults of xds_server.model, which the shipped `config/router_config.yaml`
  spells out.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

from pydantic import ValidationError

from xds_server.errors import ConfigError, InvalidValue, Problem
from xds_server.model.health_checker import HealthChecker
from xds_server.model.intent import Intent, Policies, SocketAddress
from xds_server.model.schema import (
    ConfigDocument,
    EdgeTlsConfig,
    RouterConfig,
    ServiceConfig,
    XdsTlsConfig,
)
from xds_server.model.validation import Located, located, problems_of
from xds_server.model.values import MAX_WEIGHT, RESERVED_ROUTE_PREFIX, RESERVED_ROUTES
from xds_server.settings.access_log import access_log_problems
from xds_server.settings.backend_tls import backend_tls_files, warn_insecure, with_ca_pems
from xds_server.settings.edge_tls import edge_tls_problems
from xds_server.settings.environment import ENV_PREFIX, effective_router
from xds_server.settings.rules import router_problems, service_problems
from xds_server.settings.yamlfile import DEFAULT_LIMITS, parse_yaml, read_config_bytes

__all__ = [
    "EMBEDDED_DEFAULTS",
    "EMBEDDED_SOURCE",
    "ENV_PREFIX",
    "MAX_WEIGHT",
    "RESERVED_ROUTES",
    "RESERVED_ROUTE_PREFIX",
    "InvalidValue",
    "Settings",
    "format_problems",
    "load_settings",
    "parse_settings",
    "settings_from",
]

EMBEDDED_DEFAULTS: Path = Path(__file__).parent.parent / "defaults" / "router_config.yaml"
EMBEDDED_SOURCE = "<embedded defaults>"
_DEFAULTS = RouterConfig()


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
    # Health-probe verdicts (xds_server/health/verdict.py): passes and failures in a
    # row that flip a verdict, and the share of the interval over which the
    # probes of different backends are spread.
    health_check_healthy_threshold: int = _DEFAULTS.health_check_healthy_threshold
    health_check_unhealthy_threshold: int = _DEFAULTS.health_check_unhealthy_threshold
    health_check_jitter: float = _DEFAULTS.health_check_jitter
    # With Redis: how long the elected prober's lease lasts (docs/replicas.md).
    health_prober_lease: float = _DEFAULTS.health_prober_lease
    # Who probes: the controller, or K connected Envoys over HDS (model/health_checker.py).
    health_checker: HealthChecker = _DEFAULTS.health_checker
    health_checkers_per_backend: int = _DEFAULTS.health_checkers_per_backend
    # TLS on the xDS port, and whose Envoy admins may be read (docs/xds-protocol.md rule 34).
    xds_tls: XdsTlsConfig | None = None
    # HTTPS on the listener: the files the controller serves to Envoy by SDS.
    tls: EdgeTlsConfig | None = None
    envoy_admin_allowlist: tuple[IPv4Network | IPv6Network, ...] = ()
    # Backends named by DNS (xds_server/dns/): who answers, and how often names are asked.
    dns_servers: tuple[str, ...] = ()
    dns_refresh_interval_s: float = _DEFAULTS.dns_refresh_interval


# router keys of the health checks named like their Settings field
_HEALTH_KEYS = (
    "health_check_healthy_threshold",
    "health_check_unhealthy_threshold",
    "health_check_jitter",
    "health_prober_lease",
    "health_checker",
    "health_checkers_per_backend",
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
    "idle_timeout": "idle_timeout_s",
    "healthy_panic_threshold": "healthy_panic_threshold_percent",
}


def parse_settings(document: object, environ: Mapping[str, str], source: str) -> Settings:
    """Turn a parsed YAML document and the environment into Settings (pure).

    Raises ConfigError listing every problem found: the file's, in document
    order (rules across fields included), then the environment's.
    """
    found: list[Located] = []
    parsed: ConfigDocument | None = None
    try:
        parsed = ConfigDocument.model_validate(document)
    except ValidationError as error:
        found = located(ConfigDocument, error)
    section = document.get("router") if isinstance(document, dict) else None
    router = effective_router(section, environ)
    tls_files = backend_tls_files(document)
    found += router_problems(router) + service_problems(document, router) + tls_files.problems
    found += edge_tls_problems(router) + access_log_problems(router)
    problems = problems_of(document, found) + list(router.problems)
    if problems or parsed is None:
        raise ConfigError([_named(p, source, document) for p in problems])
    settings = _build(router.values, parsed.services, source)
    intent = with_ca_pems(settings.intent, tls_files.ca_pems)
    warn_insecure(intent, source)
    return dataclasses.replace(settings, intent=intent)


def _named(problem: Problem, source: str, document: object) -> Problem:
    """A problem of the whole document is the file's: it names the file (a reload's log
    line has no other context), and an empty file says it is empty."""
    if problem.path:
        return problem
    if document is None:
        return Problem(source, "the file is empty; it needs at least a `services:` list")
    return Problem(source, problem.message)


def _build(router: RouterConfig, services: tuple[ServiceConfig, ...], source: str) -> Settings:
    policies = Policies(**{attr: getattr(router, key) for key, attr in _POLICY_KEYS.items()})
    intent = Intent(
        services=tuple(s.to_service() for s in services),
        default_strategy=router.strategy,
        policies=policies,
        listen=router.listen_address,
        admin=router.admin_address,
        admin_via_listener=router.admin_via_listener,
        edge=router.edge.to_edge(),
        access_log=router.access_log,
    )
    return Settings(
        intent=intent,
        health_check_interval_s=router.health_check_interval,
        health_check_timeout_s=router.health_check_timeout,
        **{key: getattr(router, key) for key in _HEALTH_KEYS},
        worker_threads=router.worker_threads,
        metrics_enabled=router.metrics_enabled,
        xds_address=router.xds_address,
        envoy_admin_address=router.envoy_admin_address,
        redis_url=router.redis_url,
        admin_token=router.admin_token,
        source=source,
        xds_tls=router.xds_tls,
        tls=router.tls,
        envoy_admin_allowlist=tuple(router.envoy_admin_allowlist),
        dns_servers=router.dns_servers,
        dns_refresh_interval_s=router.dns_refresh_interval,
    )


def load_settings(
    path: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read the YAML file (None: the embedded defaults), apply the env, validate.

    Raises ConfigError for an unreadable file, a YAML syntax error, a file beyond
    the limits of settings/yamlfile.py or any invalid value.
    """
    source = EMBEDDED_SOURCE if path is None else os.fspath(path)
    file = EMBEDDED_DEFAULTS if path is None else Path(path)
    content = read_config_bytes(file, source, DEFAULT_LIMITS.max_bytes)
    return settings_from(content, os.environ if environ is None else environ, source)


def settings_from(content: bytes, environ: Mapping[str, str], source: str) -> Settings:
    """The file's `content` (as read by load_settings) parsed, with the env, validated:
    what a reload runs on the bytes it has seen settle (settings/reload.py)."""
    return parse_settings(parse_yaml(content, source), environ, source)


def format_problems(error: ConfigError) -> str:
    """One problem per line, as `path: message`."""
    return "\n".join(str(problem) for problem in error.problems)

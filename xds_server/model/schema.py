"""The shape of `router_config.yaml`: one pydantic model per level of the file.

These are boundary shapes: they check what a file says and describe it as JSON
Schema (`xds-server schema`); the frozen dataclasses of model/intent.py stay
the runtime intent, and `to_service` / `to_backend` convert into them. Values
are checked by the field types of model/fields.py, which the admin API's body
models reuse. Defaults come from the intent's dataclasses, so the file, the
code and the schema cannot drift.

Rules across fields (timeout < interval, unique names and routes, a service's
routes depending on its protocol, the gRPC rules) are not model validators:
pydantic runs those only once every field is valid, and the config file
reports every problem in one pass. settings/rules.py checks them on whatever
part of a document is valid.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated, Any

from pydantic import BeforeValidator, ConfigDict, Field, IPvAnyNetwork

from xds_server.model.edge import KIB, MIB, Edge
from xds_server.model.fields import (
    AccessLogTarget,
    BackendName,
    Draining,
    EscapedSlashesAction,
    Flag,
    HeaderName,
    HealthCheckerName,
    HealthPath,
    Host,
    IpAddress,
    Listed,
    ModelName,
    Name,
    NameServer,
    OptionalStrategy,
    OptionalText,
    OptionalTimeout,
    Port,
    Priority,
    ProtocolName,
    RedisUrl,
    RetryCondition,
    Route,
    SchemaGenerator,
    Seconds,
    StrategyName,
    UnderscoreHeadersAction,
    Weight,
    integer,
    invalid_value,
    number,
)
from xds_server.model.health_checker import (
    DEFAULT_HEALTH_CHECKER,
    DEFAULT_HEALTH_CHECKERS_PER_BACKEND,
)
from xds_server.model.intent import Backend, Intent, Policies, Service
from xds_server.model.shape import OptionalPemFile, PemFile, Shape
from xds_server.model.tls_schema import BackendTls
from xds_server.model.values import shown

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def default_of(cls: type[Any], name: str) -> Any:
    """The default of a dataclass field: the intent's defaults are the file's."""
    default = {f.name: f for f in dataclasses.fields(cls)}[name].default
    assert default is not dataclasses.MISSING, (cls, name)
    return default


class BackendFields(Shape):
    """What defines an upstream host; the admin API's backend body shares it."""

    name: BackendName
    address: Host
    port: Port
    weight: Weight = default_of(Backend, "weight")
    priority: Priority = default_of(Backend, "priority")
    health_path: HealthPath = default_of(Backend, "health_path")


class BackendConfig(BackendFields):
    """One upstream host of a service."""

    draining: Draining = default_of(Backend, "draining")
    tls: BackendTls = None

    def to_backend(self) -> Backend:
        fields = dict(self)
        fields["tls"] = None if self.tls is None else self.tls.to_upstream_tls()
        return Backend(**fields)


class ServiceConfig(Shape):
    """A routed service: URL path prefixes in, backends out."""

    name: Name = Field(description="unique; names the Envoy cluster")
    strategy: OptionalStrategy = Field(
        default=None, description="overrides router.strategy for this service"
    )
    group: Name = Field(
        default=default_of(Service, "group"),
        description="groups services in the health report (default: the name)",
    )
    hash_header: HeaderName = default_of(Service, "hash_header")
    protocol: ProtocolName = default_of(Service, "protocol")
    grpc_health_service: str = Field(
        default=default_of(Service, "grpc_health_service"),
        max_length=256,
        pattern=r"^[A-Za-z0-9_.]*$",
        description="grpc services: the service name the controller's gRPC health check "
        "(grpc.health.v1.Health/Check) asks each backend about; empty = the server as a "
        "whole. Not used by http services",
    )
    routes: Annotated[tuple[str, ...] | None, Listed("path prefixes", Route, non_empty=False)] = (
        Field(
            default=None,
            description="path prefixes, unique across services; required, and non-empty, "
            "unless the service is grpc",
        )
    )
    backends: Annotated[tuple[BackendConfig, ...], Listed("backends", BackendConfig)]
    models: Annotated[tuple[str, ...], Listed("model ids", ModelName, non_empty=False)] = Field(
        default=default_of(Service, "models"),
        description="OpenAI model ids routed to this service from /v1/chat/completions, "
        "/v1/completions and /v1/embeddings (the body's `model`); unique across services",
    )
    request_timeout: OptionalTimeout = Field(
        default=None,
        description="whole-request timeout in seconds, retries included; 0 = none "
        "(a long generation); default: router.request_timeout",
    )
    idle_timeout: OptionalTimeout = Field(
        default=None,
        description="seconds without a byte in either direction that end a request or a "
        "stream (Envoy route idle_timeout); 0 = none; default: router.idle_timeout",
    )
    retry_on: Annotated[
        tuple[str, ...] | None, Listed("retry conditions", RetryCondition, non_empty=False)
    ] = Field(
        default=None,
        description="what a retry is for: Envoy retry_on conditions and HTTP status codes; "
        "default: connect-failure, refused-stream, reset, 5xx. A request is never retried "
        "once its response has started",
    )

    def to_service(self) -> Service:
        return Service(
            name=self.name,
            routes=self.routes or (),
            backends=tuple(b.to_backend() for b in self.backends),
            strategy=self.strategy,
            group=self.group,
            hash_header=self.hash_header,
            protocol=self.protocol,
            grpc_health_service=self.grpc_health_service,
            models=self.models,
            request_timeout_s=self.request_timeout,
            idle_timeout_s=self.idle_timeout,
            retry_on=self.retry_on,
        )


def _none_is_empty(value: object) -> object:
    """`router:` (or `edge:`) with nothing under it is YAML null: the defaults."""
    return {} if value is None else value


_INTENT, _POLICIES, _EDGE = Intent(services=()), Policies(), Edge()
# Envoy's own bounds, so a value Envoy would reject is a config error here.
_UINT32_MAX = 2**32 - 1
_H2_WINDOW = integer(65_535, 2**31 - 1)


class EdgeConfig(Shape):
    """`router.edge`: the listener as a front door (model/edge.py has the why of each
    default). Each key can be overridden by ROUTER_EDGE_<KEY IN UPPER CASE>."""

    xff_num_trusted_hops: Annotated[int, integer(0)] = Field(
        default=_EDGE.xff_num_trusted_hops,
        description="proxies in front of Envoy trusted to append to X-Forwarded-For "
        "(0: the client is Envoy's peer)",
    )
    normalize_path: Flag = Field(
        default=_EDGE.normalize_path,
        description="route on the RFC 3986 normalized path (/a/../b and %2e%2e resolved)",
    )
    merge_slashes: Flag = Field(
        default=_EDGE.merge_slashes, description="route on the path with // merged into /"
    )
    path_with_escaped_slashes_action: EscapedSlashesAction = _EDGE.path_with_escaped_slashes_action
    headers_with_underscores_action: UnderscoreHeadersAction = _EDGE.headers_with_underscores_action
    request_headers_timeout: Seconds = Field(
        default=_EDGE.request_headers_timeout_s,
        description="seconds a client has to send its whole request head",
    )
    idle_timeout: Seconds = Field(
        default=_EDGE.idle_timeout_s,
        description="seconds a client connection may stay open without a request",
    )
    stream_idle_timeout: Seconds = Field(
        default=_EDGE.stream_idle_timeout_s,
        description="seconds a request may pass with no bytes either way; at least request_timeout",
    )
    per_connection_buffer_limit_bytes: Annotated[int, integer(KIB, _UINT32_MAX)] = Field(
        default=_EDGE.per_connection_buffer_limit_bytes,
        description="read/write buffer per connection, listener and clusters (flow control "
        "beyond it)",
    )
    request_body_buffer_limit_bytes: Annotated[int, integer(KIB, _UINT32_MAX)] = Field(
        default=_EDGE.request_body_buffer_limit_bytes,
        description="bytes of a request body Envoy keeps to retry the request; a failed "
        "request with a larger body is not retried",
    )
    max_concurrent_streams: Annotated[int, integer(1, 2**31 - 1)] = Field(
        default=_EDGE.max_concurrent_streams, description="HTTP/2 streams per connection"
    )
    initial_stream_window_size: Annotated[int, _H2_WINDOW] = Field(
        default=_EDGE.initial_stream_window_size, description="HTTP/2 stream window, bytes"
    )
    initial_connection_window_size: Annotated[int, _H2_WINDOW] = Field(
        default=_EDGE.initial_connection_window_size,
        description="HTTP/2 connection window, bytes",
    )
    max_request_headers_kb: Annotated[int, integer(1, 8192)] = Field(
        default=_EDGE.max_request_headers_kb,
        description="KiB a request's headers may take; beyond it, 431",
    )
    max_connections: Annotated[int, integer(1)] = Field(
        default=_EDGE.max_connections,
        description="Envoy's downstream connections in all (overload manager); beyond it "
        "new ones are closed at once",
    )
    max_heap_bytes: Annotated[int, integer(64 * MIB)] = Field(
        default=_EDGE.max_heap_bytes,
        description="Envoy's heap (overload manager): shrink at 95 %, stop accepting "
        "requests at 98 %",
    )

    def to_edge(self) -> Edge:
        return Edge(**{_EDGE_FIELDS.get(key, key): value for key, value in self})


# EdgeConfig key -> Edge field, where they differ (seconds are *_s in the intent)
_EDGE_FIELDS = {
    "request_headers_timeout": "request_headers_timeout_s",
    "idle_timeout": "idle_timeout_s",
    "stream_idle_timeout": "stream_idle_timeout_s",
}


class XdsTlsConfig(Shape):
    """TLS on the xDS port; with client_ca_file, mutual TLS that names each proxy
    (docs/xds-protocol.md rule 34). The files are re-read when they change."""

    cert_file: PemFile = Field(description="PEM certificate chain the xDS server presents")
    key_file: PemFile = Field(description="PEM private key of cert_file")
    client_ca_file: OptionalPemFile = Field(
        default=None,
        description="PEM CA certificates; when set, every xDS client must present a "
        "certificate they signed, with its node id as a DNS SAN or at the end of a URI SAN",
    )


class EdgeTlsConfig(Shape):
    """HTTPS on the listener: the controller reads the files and serves them to Envoy
    by SDS (docs/xds-protocol.md rule 39); replaced files are served again within
    about a second, without draining the listener."""

    cert_file: PemFile = Field(description="PEM certificate chain the listener presents")
    key_file: PemFile = Field(description="PEM private key of cert_file")
    client_ca_file: OptionalPemFile = Field(
        default=None,
        description="PEM CA certificates; when set, every client must present a "
        "certificate they signed (mutual TLS)",
    )


def _json_object_text(value: object) -> object:
    """ROUTER_XDS_TLS='{"cert_file": ...}' (and ROUTER_TLS) reads as the mapping;
    empty as unset."""
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            return json.loads(value)
        except ValueError:
            return value  # reported as "not a mapping" by the model
    return value


def _comma_separated(value: object) -> object:
    """ROUTER_ENVOY_ADMIN_ALLOWLIST=10.0.0.0/8,192.0.2.7 reads as the list."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _name_servers(value: object) -> object:
    """A list (comma separated in ROUTER_DNS_SERVERS); anything else says so,
    not pydantic's "valid tuple"."""
    value = _comma_separated(value)
    if not isinstance(value, list | tuple):
        raise invalid_value(
            f"must be a list of DNS servers (ip or ip:port each), got {shown(value)}"
        )
    return value


class RouterConfig(Shape):
    """The `router:` section. Each key can be overridden by ROUTER_<KEY IN UPPER CASE>."""

    # Addresses default to their text (validated into a SocketAddress), so the
    # schema shows host:port.

    strategy: StrategyName = Field(
        default=_INTENT.default_strategy,
        description="default load-balancing strategy, per service overridable",
    )
    health_check_interval: Seconds = Field(
        default=30.0, description="seconds between the controller's probes of a backend"
    )
    health_check_timeout: Seconds = Field(
        default=5.0, description="seconds a probe may take; less than the interval"
    )
    health_check_healthy_threshold: Annotated[int, integer(1)] = Field(
        default=2, description="passes in a row that readmit an unhealthy backend"
    )
    health_check_unhealthy_threshold: Annotated[int, integer(1)] = Field(
        default=3, description="ambiguous failures in a row that eject a backend"
    )
    health_check_jitter: Annotated[float, number(0, inclusive=True, maximum=1)] = Field(
        default=0.1, description="share of the interval over which probes are spread"
    )
    dns_servers: Annotated[tuple[NameServer, ...], BeforeValidator(_name_servers)] = Field(
        default=(),
        description="DNS servers that resolve backend names (ip or ip:port each); "
        "empty: the system's (/etc/resolv.conf)",
    )
    # A lookup of every backend name many times a second would flood the DNS server.
    dns_refresh_interval: Annotated[float, number(1, inclusive=True)] = Field(
        default=30.0, description="seconds between lookups of each backend's DNS name (>= 1)"
    )
    health_prober_lease: Seconds = Field(
        default=5.0, description="seconds the elected prober's Redis lease lasts"
    )
    health_checker: HealthCheckerName = DEFAULT_HEALTH_CHECKER
    health_checkers_per_backend: Annotated[int, integer(1)] = Field(
        default=DEFAULT_HEALTH_CHECKERS_PER_BACKEND,
        description="with health_checker envoy: how many connected Envoys check each "
        "backend (all of them when fewer are connected)",
    )
    circuit_breaker_threshold: Annotated[int, integer(1)] = Field(
        default=_POLICIES.circuit_breaker_threshold,
        description="consecutive 5xx or connect failures that eject a backend",
    )
    circuit_breaker_timeout: Seconds = Field(
        default=_POLICIES.circuit_breaker_timeout_s, description="ejection time in seconds"
    )
    max_retries: Annotated[int, integer(0)] = Field(
        default=_POLICIES.max_retries, description="retries of a failed request"
    )
    # Envoy's back-off is in milliseconds.
    retry_delay: Annotated[float, number(0.001, inclusive=True)] = Field(
        default=_POLICIES.retry_delay_s, description="retry back-off base interval in seconds"
    )
    queue_size: Annotated[int, integer(1)] = Field(
        default=_POLICIES.queue_size,
        description="requests waiting for a connection per service; beyond it, 503 at once",
    )
    worker_threads: Annotated[int, integer(1)] = Field(
        default=8, description="Envoy worker threads (--concurrency)"
    )
    metrics_enabled: Flag = Field(
        default=True, description="collect and serve metrics (/metrics, /api/v1/router/metrics)"
    )
    max_requests: Annotated[int, integer(1)] = Field(
        default=_POLICIES.max_requests, description="concurrent requests per service"
    )
    max_connections: Annotated[int, integer(1)] = Field(
        default=_POLICIES.max_connections, description="upstream connections per service"
    )
    request_timeout: Annotated[float, number(0, inclusive=True)] = Field(
        default=_POLICIES.request_timeout_s,
        description="whole-request timeout in seconds, retries included; 0 = none",
    )
    idle_timeout: OptionalTimeout = Field(
        default=_POLICIES.idle_timeout_s,
        description="seconds without a byte either way that end a stream (route "
        "idle_timeout); null: the listener's stream_idle_timeout applies; 0 = none",
    )
    healthy_panic_threshold: Annotated[float, number(0, inclusive=True, maximum=100)] = Field(
        default=_POLICIES.healthy_panic_threshold_percent,
        description="percent of healthy backends below which Envoy uses all (0: never)",
    )
    listen_address: IpAddress = Field(
        default=str(_INTENT.listen),
        validate_default=True,
        description="Envoy's listener: where clients send requests",
    )
    envoy_admin_address: IpAddress = Field(
        default="127.0.0.1:9901", validate_default=True, description="Envoy's admin interface"
    )
    xds_address: IpAddress = Field(
        default="127.0.0.1:18000",
        validate_default=True,
        description="the controller's xDS server (Envoy's bootstrap connects to it)",
    )
    admin_address: IpAddress = Field(
        default=str(_INTENT.admin),
        validate_default=True,
        description="the controller's admin API (Envoy routes /api/v1/router/ to it)",
    )
    redis_url: RedisUrl = Field(
        default=None, description="keep intent and metrics in Redis; null: in memory"
    )
    admin_token: OptionalText = Field(
        default=None,
        description="bearer token the admin API demands for changes; required when "
        "admin_address is not loopback, and when listen_address is not loopback while "
        "admin_via_listener is true",
    )
    admin_via_listener: Flag = Field(
        default=_INTENT.admin_via_listener,
        description="Envoy routes /api/v1/router/ to the admin API; false: only "
        "/api/v1/health (the overall summary) is routed, the rest answers 404",
    )
    edge: Annotated[EdgeConfig, BeforeValidator(_none_is_empty)] = Field(
        default_factory=EdgeConfig, description="the listener as a front door"
    )
    xds_tls: Annotated[XdsTlsConfig | None, BeforeValidator(_json_object_text)] = Field(
        default=None,
        description="TLS (mutual with client_ca_file) on the xDS port; required when "
        "xds_address is not loopback; null: plaintext",
    )
    tls: Annotated[EdgeTlsConfig | None, BeforeValidator(_json_object_text)] = Field(
        default=None,
        description="HTTPS on listen_address (Envoy's certificate served by SDS); null: plain HTTP",
    )
    access_log: AccessLogTarget = Field(
        default=str(_INTENT.access_log),
        validate_default=True,
        description="Envoy's access log, one JSON object per request on listen_address "
        '(README, "Access logs"): stdout, off, or an absolute file path on Envoy\'s host',
    )
    envoy_admin_allowlist: Annotated[
        tuple[IPvAnyNetwork, ...], BeforeValidator(_comma_separated)
    ] = Field(
        default=(),
        description="networks whose Envoy admin addresses the controller reads stats from "
        "besides the xDS stream's own peer IP (an IP or a CIDR each)",
    )


def _or_null(json_schema: dict[str, Any]) -> None:
    json_schema["anyOf"] = [{"$ref": json_schema.pop("$ref")}, {"type": "null"}]


class ConfigDocument(Shape):
    """xds-server's router_config.yaml: router settings and the routed services."""

    model_config = ConfigDict(title="xds-server router_config.yaml")

    router: Annotated[RouterConfig, BeforeValidator(_none_is_empty)] = Field(
        default_factory=RouterConfig, json_schema_extra=_or_null
    )
    services: Annotated[tuple[ServiceConfig, ...], Listed("services", ServiceConfig)]


def config_json_schema() -> dict[str, Any]:
    """The JSON Schema of router_config.yaml (`xds-server schema`)."""
    schema = ConfigDocument.model_json_schema(schema_generator=SchemaGenerator)
    return {"$schema": SCHEMA_DIALECT, **schema}

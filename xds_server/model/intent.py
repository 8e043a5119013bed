"""The intent: what the operator wants the router to do.

Everything here is immutable and plain data. Settings build the first intent; the
admin API derives new ones with `dataclasses.replace`; the translator turns an
intent (plus health verdicts) into Envoy resources. Nothing here does I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from xds_server.model.access_log import AccessLog
from xds_server.model.edge import Edge
from xds_server.model.upstream_tls import UpstreamTls


class Strategy(StrEnum):
    """Load-balancing strategies an operator can choose per service."""

    ROUND_ROBIN = "round_robin"
    # Envoy's LEAST_REQUEST: power-of-two-choices over *active requests*, not
    # connections. The name is the spec's; the behaviour is Envoy's.
    LEAST_CONNECTIONS = "least_connections"
    WEIGHTED = "weighted"
    RANDOM = "random"
    RING_HASH = "ring_hash"
    MAGLEV = "maglev"


class Protocol(StrEnum):
    """What a service's backends speak, and so which clients it is built for."""

    HTTP = "http"  # routed by Envoy on the router listener
    # Also served to proxyless gRPC clients (target xds:///<service name>): an
    # API listener and route configuration named after the service.
    GRPC = "grpc"


class Health(StrEnum):
    """A backend's health verdict as the controller sees it."""

    UNKNOWN = "unknown"
    HEALTHY = "healthy"
    UNHEALTHY = "unhealthy"


@dataclass(frozen=True, order=True)
class SocketAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Backend:
    """One upstream host of a service.

    `name` is unique across the whole intent; it becomes the Envoy endpoint
    hostname, so per-host stats and the metrics API are keyed by it.
    """

    name: str
    address: str
    port: int
    weight: int = 1
    priority: int = 0
    health_path: str = "/health"
    draining: bool = False
    tls: UpstreamTls | None = None  # None: plaintext (model/upstream_tls.py)


@dataclass(frozen=True)
class Service:
    """A routed service: URL prefixes in, a set of backends out.

    `group` only groups services for display (the spec shows phi3, hermes and
    mixtral under "external"); it defaults to the service name. A gRPC service
    may have no routes: then only proxyless gRPC clients reach it. `models`
    are the OpenAI model ids whose requests on the front door
    (`POST /v1/chat/completions` etc.) go to this service.
    """

    name: str
    routes: tuple[str, ...]
    backends: tuple[Backend, ...]
    strategy: Strategy | None = None  # None: the intent's default strategy
    group: str = ""
    hash_header: str = "x-session-id"  # hash key of ring_hash and maglev
    protocol: Protocol = Protocol.HTTP
    # The gRPC health service the controller checks on each backend of a gRPC
    # service (grpc.health.v1.Health/Check); "" = the server as a whole.
    grpc_health_service: str = ""
    # OpenAI model ids this service answers for on the front door
    # (translate/openai.py): unique across services.
    models: tuple[str, ...] = ()
    # None: the intent's Policies. 0: no limit. A generation streams for minutes,
    # so LLM services lift the whole-request limit and cut on silence instead.
    request_timeout_s: float | None = None
    idle_timeout_s: float | None = None
    # Envoy retry_on conditions, HTTP status codes as digits ("503"); None: RETRY_ON
    # of translate/routes.py. Retries never happen once a response has started.
    retry_on: tuple[str, ...] | None = None

    @property
    def display_group(self) -> str:
        return self.group or self.name

    def backend(self, name: str) -> Backend | None:
        return next((b for b in self.backends if b.name == name), None)


@dataclass(frozen=True)
class Policies:
    """Resilience settings shared by every service (the spec's ROUTER_* knobs)."""

    circuit_breaker_threshold: int = 10  # consecutive 5xx before ejection
    circuit_breaker_timeout_s: float = 60.0  # ejection time
    max_retries: int = 3
    retry_delay_s: float = 1.0  # retry back-off base interval
    queue_size: int = 1000  # Envoy max_pending_requests
    max_requests: int = 10_000
    max_connections: int = 10_000
    # Concurrent retries allowed per cluster. Envoy's default of 3 made 98 % of
    # requests fail after a backend was killed under load (docs/envoy-notes.md).
    max_concurrent_retries: int = 10_000
    request_timeout_s: float = 15.0  # whole request, retries included; 0: none
    # No bytes either way for this long ends a stream (route idle_timeout; 0: none).
    # None: the route sets none, so the listener's stream_idle_timeout applies.
    idle_timeout_s: float | None = None
    # Below this share of healthy hosts Envoy spreads traffic over all hosts
    # (panic mode). 0 means: never send to hosts we know to be unhealthy.
    healthy_panic_threshold_percent: float = 0.0

    def request_timeout_of(self, service: Service) -> float:
        """The service's whole-request timeout in seconds; 0: none."""
        if service.request_timeout_s is not None:
            return service.request_timeout_s
        return self.request_timeout_s

    def idle_timeout_of(self, service: Service) -> float | None:
        """The service's stream idle timeout; None: the listener's applies."""
        if service.idle_timeout_s is not None:
            return service.idle_timeout_s
        return self.idle_timeout_s


@dataclass(frozen=True)
class Intent:
    """The whole desired routing state, as one value."""

    services: tuple[Service, ...]
    default_strategy: Strategy = Strategy.ROUND_ROBIN
    policies: Policies = field(default_factory=Policies)
    listen: SocketAddress = SocketAddress("127.0.0.1", 8000)
    # Where Envoy sends /api/v1/router/ and /api/v1/health: the controller's admin API.
    admin: SocketAddress = SocketAddress("127.0.0.1", 18080)
    # False: the listener routes none of the admin API (only the overall health
    # summary, GET /api/v1/health, which a load balancer in front may probe).
    admin_via_listener: bool = True
    edge: Edge = field(default_factory=Edge)  # the listener's limits (model/edge.py)
    # Envoy's access log of the listener's requests (model/access_log.py).
    access_log: AccessLog = field(default_factory=AccessLog)

    def service(self, name: str) -> Service | None:
        return next((s for s in self.services if s.name == name), None)

    def strategy_of(self, service: Service) -> Strategy:
        return service.strategy or self.default_strategy

    def backends(self) -> tuple[Backend, ...]:
        return tuple(b for s in self.services for b in s.backends)

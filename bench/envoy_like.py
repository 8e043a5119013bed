"""Envoy-like health checking for bench/health_fleet.py: Envoy's active HTTP health
checker and its HDS delegate, without Envoy, so 50 of them fit on 2 cores.

What is modelled after envoyproxy/envoy
`source/extensions/health_checkers/common/health_checker_base_impl.cc` and
`source/common/upstream/health_discovery_service.cc`:

- A host starts unhealthy (FAILED_ACTIVE_HC, as HdsCluster::initialize sets it);
  the very first passing check makes it healthy at once, later ones need
  `healthy_threshold` passes in a row.
- A failure that is an answer (a status outside `expected_statuses`, default
  200 only) makes a host unhealthy at once; a network failure (refused, reset,
  closed, timeout) counts towards `unhealthy_threshold`.
- The next check is scheduled when a check ends, from that check's result
  (HealthCheckerImplBase::interval). On a cluster with traffic: after a pass
  `interval` (`healthy_edge_interval` while a change is pending), after a
  failure `unhealthy_interval` (`unhealthy_edge_interval` while pending). On a
  cluster that never had a connection, as an HDS cluster: after a pass that
  changed nothing pending `no_traffic_healthy_interval`, otherwise
  `no_traffic_interval` (default 60 s). A CDS cluster of the benchmark's mode
  (b) is taken to carry traffic. No jitter: an HDS check runs as soon as its
  specifier arrives (`initial_jitter` 0); the checkers of mode (b) start at a
  random phase (Envoys are not started in the same millisecond).
- HTTP/1.1 over one kept connection per host (`reuse_connection`, default true).
- HDS: the first message is a HealthCheckRequest (node, capability HTTP); each
  HealthCheckSpecifier replaces the set of checked hosts (a host whose cluster,
  address and check are unchanged keeps its state); an EndpointHealthResponse
  (HEALTHY, UNHEALTHY, or TIMEOUT when the last failure was one) goes out every
  `specifier.interval` (default 1 s), grouped by cluster and locality, with the
  legacy flat `endpoints_health` list too, as Envoy sends it.

bench/envoy_fleet.py runs many of them in one process.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
from envoy.config.core.v3 import address_pb2, base_pb2, health_check_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2
from envoy.service.health.v3 import hds_pb2, hds_pb2_grpc
from google.protobuf import duration_pb2

Endpoint = tuple[str, int]  # (address, port)
# Told on every verdict change of one checker: (node, endpoint, healthy).
OnVerdict = Callable[[str, Endpoint, bool], None]

DEFAULT_REPORT_INTERVAL_S = 1.0  # Envoy's default when the specifier has no interval
MAX_RESPONSE_BYTES = 64 * 1024


class Outcome(enum.Enum):
    PASSED = "passed"
    ANSWERED_BAD = "answered with an unexpected status"  # Envoy: ACTIVE failure
    NETWORK = "network failure"  # refused, reset, closed mid-answer
    TIMEOUT = "timeout"  # Envoy: a NETWORK failure that also sets TIMEOUT


class Transition(enum.Enum):
    UNCHANGED = "unchanged"
    CHANGED = "changed"
    PENDING = "change pending"


def seconds(duration: duration_pb2.Duration) -> float:
    return duration.seconds + duration.nanos / 1e9


@dataclass(frozen=True)
class CheckConfig:
    """An HTTP health check as Envoy reads it from a HealthCheck message."""

    path: str = "/health"
    interval_s: float = 1.0
    timeout_s: float = 0.5
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3
    unhealthy_interval_s: float | None = None  # None: Envoy's default (see intervals())
    unhealthy_edge_interval_s: float | None = None
    healthy_edge_interval_s: float | None = None
    no_traffic_interval_s: float = 60.0
    no_traffic_healthy_interval_s: float | None = None
    expected_statuses: tuple[tuple[int, int], ...] = ((200, 201),)  # [start, end)
    host: str = ""  # the Host header; "" = the cluster's name, as Envoy sends it

    @classmethod
    def from_proto(cls, check: health_check_pb2.HealthCheck) -> CheckConfig:
        def optional(name: str) -> float | None:
            return seconds(getattr(check, name)) if check.HasField(name) else None

        http = check.http_health_check
        statuses = tuple((r.start, r.end) for r in http.expected_statuses)
        return cls(
            path=http.path or "/",
            interval_s=seconds(check.interval),
            timeout_s=seconds(check.timeout),
            # Envoy refuses a HealthCheck without both thresholds; here a missing one is 1.
            healthy_threshold=max(1, check.healthy_threshold.value),
            unhealthy_threshold=max(1, check.unhealthy_threshold.value),
            unhealthy_interval_s=optional("unhealthy_interval"),
            unhealthy_edge_interval_s=optional("unhealthy_edge_interval"),
            healthy_edge_interval_s=optional("healthy_edge_interval"),
            no_traffic_interval_s=optional("no_traffic_interval") or 60.0,
            no_traffic_healthy_interval_s=optional("no_traffic_healthy_interval"),
            expected_statuses=statuses or ((200, 201),),
            host=http.host,
        )

    def expects(self, status: int) -> bool:
        return any(start <= status < end for start, end in self.expected_statuses)

    def intervals(self) -> tuple[float, float, float, float, float]:
        """interval, unhealthy, unhealthy edge, healthy edge, no-traffic healthy:
        each with Envoy's default when unset (HealthCheckerImplBase's constructor)."""
        unhealthy = self.unhealthy_interval_s or self.interval_s
        return (
            self.interval_s,
            unhealthy,
            self.unhealthy_edge_interval_s or unhealthy,
            self.healthy_edge_interval_s or self.interval_s,
            self.no_traffic_healthy_interval_s or self.no_traffic_interval_s,
        )


@dataclass
class HostHealth:
    """One host's state in one checker: Envoy's ActiveHealthCheckSession counting."""

    config: CheckConfig
    healthy: bool = False  # Envoy starts a checked host with FAILED_ACTIVE_HC
    timed_out: bool = False  # the last failure was a timeout (reported as TIMEOUT)
    first_check: bool = True
    passes: int = 0
    failures: int = 0
    last_passed: bool = False  # the last check's result, which picks the next interval

    def record(self, outcome: Outcome) -> Transition:
        self.last_passed = outcome is Outcome.PASSED
        transition = self._passed() if self.last_passed else self._failed(outcome)
        self.first_check = False
        return transition

    def _passed(self) -> Transition:
        self.failures = 0
        self.timed_out = False
        if self.healthy:
            return Transition.UNCHANGED
        self.passes += 1
        if self.first_check or self.passes >= self.config.healthy_threshold:
            self.healthy = True
            return Transition.CHANGED
        return Transition.PENDING

    def _failed(self, outcome: Outcome) -> Transition:
        self.passes = 0
        self.timed_out = outcome is Outcome.TIMEOUT
        if not self.healthy:
            return Transition.UNCHANGED
        self.failures += 1
        network = outcome in (Outcome.NETWORK, Outcome.TIMEOUT)
        if not network or self.failures >= self.config.unhealthy_threshold:
            self.healthy = False
            return Transition.CHANGED
        return Transition.PENDING

    def next_interval(self, transition: Transition, *, traffic: bool) -> float:
        """Seconds from the end of the last check to the next one, after its result and
        `transition` (HealthCheckerImplBase::interval); `traffic`: the cluster ever had
        a connection."""
        interval, unhealthy, unhealthy_edge, healthy_edge, idle_healthy = self.config.intervals()
        pending = transition is Transition.PENDING
        if not traffic:
            return (
                idle_healthy
                if self.last_passed and not pending
                else self.config.no_traffic_interval_s
            )
        if self.last_passed:
            return healthy_edge if pending else interval
        return unhealthy_edge if pending else unhealthy

    def status(self) -> int:
        """The HealthStatus an HDS report gives this host (HdsDelegate::sendResponse)."""
        if self.healthy:
            return int(health_check_pb2.HEALTHY)
        return int(health_check_pb2.TIMEOUT if self.timed_out else health_check_pb2.UNHEALTHY)


# ---- HTTP/1.1 probes over a kept connection ---------------------------------------------


def health_request(path: str, host: str) -> bytes:
    """Envoy's health check request: GET, Host = the cluster name unless set otherwise."""
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: Envoy/HC\r\n"
        "Connection: keep-alive\r\n\r\n"
    ).encode()


def parse_status_line(line: bytes) -> int:
    """The status code of `HTTP/1.1 200 OK`; ValueError on anything else."""
    version, _, rest = line.decode("latin-1").strip().partition(" ")
    if not version.startswith("HTTP/1.") or not rest[:3].isdigit():
        raise ValueError(f"not an HTTP/1.x status line: {line!r}")
    return int(rest[:3])


class HttpHealthProbe:
    """GETs of one host's health path, reusing one connection while it lasts."""

    def __init__(self, address: str, port: int, host_header: str) -> None:
        self.address, self.port, self.host_header = address, port, host_header
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def check(self, config: CheckConfig) -> Outcome:
        try:
            async with asyncio.timeout(config.timeout_s):
                status, keep = await self._exchange(config.path)
        except TimeoutError:
            self.close()
            return Outcome.TIMEOUT
        except (OSError, ValueError, asyncio.IncompleteReadError):
            self.close()
            return Outcome.NETWORK
        if not keep:
            self.close()
        return Outcome.PASSED if config.expects(status) else Outcome.ANSWERED_BAD

    async def _exchange(self, path: str) -> tuple[int, bool]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.address, self.port)
        assert self._reader is not None
        self._writer.write(health_request(path, self.host_header))
        await self._writer.drain()
        status = parse_status_line(await self._reader.readline())
        length, keep = 0, True
        while (line := await self._reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
            elif name.strip().lower() == "connection" and value.strip().lower() == "close":
                keep = False
        if line == b"" or length > MAX_RESPONSE_BYTES:
            raise ValueError("connection closed in the answer's head, or a huge body")
        await self._reader.readexactly(length)
        return status, keep

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


@dataclass
class ActiveCheck:
    """One checker's probing of one host: the probe, the state, the loop."""

    node: str
    endpoint: Endpoint
    config: CheckConfig
    on_verdict: OnVerdict
    cluster: str = ""
    locality: base_pb2.Locality = field(default_factory=base_pb2.Locality)
    traffic: bool = True  # False for an HDS cluster, which never carries a connection
    health: HostHealth = field(init=False)
    task: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.health = HostHealth(self.config)

    def start(self, first_in_s: float) -> None:
        self.task = asyncio.create_task(self._run(first_in_s))

    async def _run(self, first_in_s: float) -> None:
        host = self.config.host or self.cluster or "bench"
        probe = HttpHealthProbe(*self.endpoint, host_header=host)
        await asyncio.sleep(first_in_s)
        try:
            while True:
                transition = self.health.record(await probe.check(self.config))
                if transition is Transition.CHANGED:
                    self.on_verdict(self.node, self.endpoint, self.health.healthy)
                await asyncio.sleep(self.health.next_interval(transition, traffic=self.traffic))
        finally:
            probe.close()

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


# ---- HDS --------------------------------------------------------------------------------

# What identifies one checked host across specifiers: cluster, endpoint, the check itself.
CheckKey = tuple[str, Endpoint, CheckConfig]


@dataclass(frozen=True)
class Assigned:
    cluster: str
    endpoint: Endpoint
    config: CheckConfig
    locality: base_pb2.Locality

    @property
    def key(self) -> CheckKey:
        return self.cluster, self.endpoint, self.config


def assignments(specifier: hds_pb2.HealthCheckSpecifier) -> list[Assigned]:
    """Every (cluster, endpoint) to check, with the cluster's first HTTP health check
    (the only kind this client speaks; it said so in its capability)."""
    found = []
    for cluster in specifier.cluster_health_checks:
        http = [c for c in cluster.health_checks if c.HasField("http_health_check")]
        if not http:
            continue
        config = CheckConfig.from_proto(http[0])
        for group in cluster.locality_endpoints:
            for endpoint in group.endpoints:
                address = endpoint.address.socket_address
                where = (address.address, address.port_value)
                found.append(Assigned(cluster.cluster_name, where, config, group.locality))
    return found


def report_interval(specifier: hds_pb2.HealthCheckSpecifier) -> float:
    if specifier.HasField("interval"):
        return seconds(specifier.interval) or DEFAULT_REPORT_INTERVAL_S
    return DEFAULT_REPORT_INTERVAL_S


def health_check_request(node_id: str) -> hds_pb2.HealthCheckRequestOrEndpointHealthResponse:
    request = hds_pb2.HealthCheckRequest(
        node=base_pb2.Node(id=node_id, cluster="bench"),
        capability=hds_pb2.Capability(health_check_protocols=[hds_pb2.Capability.HTTP]),
    )
    return hds_pb2.HealthCheckRequestOrEndpointHealthResponse(health_check_request=request)


def health_response(
    checks: Iterable[ActiveCheck],
) -> hds_pb2.HealthCheckRequestOrEndpointHealthResponse:
    """Every checked host's status, per cluster and locality, plus the flat legacy list."""
    response = hds_pb2.EndpointHealthResponse()
    clusters: dict[str, hds_pb2.ClusterEndpointsHealth] = {}
    localities: dict[tuple[str, bytes], hds_pb2.LocalityEndpointsHealth] = {}
    for check in checks:
        if check.cluster not in clusters:
            clusters[check.cluster] = response.cluster_endpoints_health.add(
                cluster_name=check.cluster
            )
        where = (check.cluster, check.locality.SerializeToString(deterministic=True))
        if where not in localities:
            group = clusters[check.cluster].locality_endpoints_health.add()
            group.locality.CopyFrom(check.locality)
            localities[where] = group
        address = address_pb2.Address(
            socket_address=address_pb2.SocketAddress(
                address=check.endpoint[0], port_value=check.endpoint[1]
            )
        )
        one = endpoint_components_pb2.Endpoint(address=address)
        status = check.health.status()
        localities[where].endpoints_health.add(endpoint=one, health_status=status)
        response.endpoints_health.add(endpoint=one, health_status=status)
    return hds_pb2.HealthCheckRequestOrEndpointHealthResponse(endpoint_health_response=response)


class HdsUnimplemented(Exception):
    """The controller answered the HDS stream with UNIMPLEMENTED."""


class HdsClient:
    """One Envoy's HDS delegate: a StreamHealthCheck stream, the checks it was given,
    and the periodic report."""

    def __init__(self, channel: grpc.aio.Channel, node_id: str, on_verdict: OnVerdict) -> None:
        self.node_id = node_id
        self.checks: dict[CheckKey, ActiveCheck] = {}
        self.specifiers = 0
        self._on_verdict = on_verdict
        self._outbox: asyncio.Queue[Any] = asyncio.Queue()
        self._interval_s = 0.0
        self._stub = hds_pb2_grpc.HealthDiscoveryServiceStub(channel)
        self._reporter: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """Until cancelled; HdsUnimplemented if the server does not serve HDS."""
        self._outbox.put_nowait(health_check_request(self.node_id))
        call = self._stub.StreamHealthCheck(self._sent())
        try:
            async for specifier in call:
                await self.apply(specifier)
        except grpc.aio.AioRpcError as error:
            if error.code() is grpc.StatusCode.UNIMPLEMENTED:
                raise HdsUnimplemented(error.details() or "UNIMPLEMENTED") from error
            raise
        finally:
            call.cancel()
            await self.stop()

    async def _sent(self) -> AsyncIterator[Any]:
        while True:
            yield await self._outbox.get()

    async def apply(self, specifier: hds_pb2.HealthCheckSpecifier) -> None:
        """Check what `specifier` assigns: new hosts start, gone ones stop, the rest
        keep their state; the report timer restarts when its interval changed."""
        self.specifiers += 1
        wanted = {a.key: a for a in assignments(specifier)}
        for key in [k for k in self.checks if k not in wanted]:
            await self.checks.pop(key).stop()
        for key, given in wanted.items():
            if key not in self.checks:
                check = ActiveCheck(
                    self.node_id,
                    given.endpoint,
                    given.config,
                    self._on_verdict,
                    cluster=given.cluster,
                    locality=given.locality,
                    traffic=False,
                )
                check.start(0.0)  # Envoy's initial_jitter is 0: the first check at once
                self.checks[key] = check
        interval = report_interval(specifier)
        if interval != self._interval_s:  # Envoy restarts its report timer only then
            self._interval_s = interval
            if self._reporter is not None:
                self._reporter.cancel()
            self._reporter = asyncio.create_task(self._report_every(interval))

    async def _report_every(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            self._outbox.put_nowait(health_response(self.checks.values()))

    async def stop(self) -> None:
        if self._reporter is not None:
            self._reporter.cancel()
            await asyncio.gather(self._reporter, return_exceptions=True)
            self._reporter, self._interval_s = None, 0.0
        for check in self.checks.values():
            await check.stop()
        self.checks.clear()

"""Where an experiment runs: limits, the one-at-a-time claim, Envoy's view of
the service, and probe traffic through the Envoy listener."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field

import aiohttp

from xds_server.errors import Conflict, DependencyUnavailable, NotFound
from xds_server.health.base import HealthHolds
from xds_server.model.certificates import EdgeCertificate
from xds_server.model.intent import Backend, Intent, Policies, Service
from xds_server.pipeline.changes import ChangeApplier
from xds_server.store.base import IntentView
from xds_server.telemetry import envoy_stats
from xds_server.telemetry.envoy_stats import HostStats
from xds_server.telemetry.failover import FailoverEvent
from xds_server.xds.status import ProxyRegistry, ProxyStatus

POLL_S = 0.02
APPLY_WAIT_S = 5.0
DEFAULT_EJECTION_S = 2.0  # used when the configured ejection time is longer
HOLD_MARGIN_S = 60.0  # restoring after the deadline: a few bounded steps
CONFIRM_PROBES = 10  # requests sent after the ejection to see who serves them
MAX_PROBES = 20_000  # per experiment, whatever the duration
PROBE_HEADER = "x-xds-server-experiment"
HTTP_503, CONNECTION_REFUSED = "http_503", "connection_refused"
FAILURE_MODES = (HTTP_503, CONNECTION_REFUSED)
_OUT_EDS = frozenset({"UNHEALTHY", "DRAINING", "TIMEOUT"})


@dataclass(frozen=True)
class Limits:
    """What a caller may set; everything is bounded."""

    max_duration_s: float = 30.0
    ejection_time_s: float | None = None  # None: min(configured, DEFAULT_EJECTION_S)
    concurrency: int = 4
    failure: str | None = None  # None: http_503 if the backend has the control, else refused


class Experiments:
    """The intent's one-at-a-time registry: at most one experiment, and never one
    while an intent change is being applied, nor a change while one runs (see the
    package docstring). Each run's failover event goes to the event log (the
    metrics API's failover figures)."""

    def __init__(self, on_event: Callable[[FailoverEvent], None] | None = None) -> None:
        self.running: str | None = None  # "the failover experiment on qdrant-primary"
        self._on_event = on_event
        self._changes: dict[int, str] = {}  # in-flight intent changes, by ticket
        self._ticket = 0
        self._idle: asyncio.Event | None = None

    def record(self, event: FailoverEvent) -> None:
        if self._on_event is not None:
            self._on_event(event)

    @contextlib.contextmanager
    def claim(self, kind: str, target: str | None = None) -> Iterator[None]:
        """Hold the intent for one experiment; Conflict while another runs or a
        change is being applied (its restore would race that change)."""
        if self.running is not None:
            raise Conflict(f"{self.running} is running; retry when it has ended")
        if self._changes:
            change = next(iter(self._changes.values()))
            raise Conflict(
                f"an intent change ({change}) is being applied; retry when it is confirmed"
            )
        self.running = f"the {kind} experiment" + (f" on {target}" if target else "")
        self._idle = asyncio.Event()
        try:
            yield
        finally:
            self.running = None
            self._idle.set()

    @contextlib.contextmanager
    def changing(self, what: str) -> Iterator[None]:
        """Hold off experiments while the intent change `what` is applied; Conflict
        while one runs: it restores state when it ends, and it measures a config that
        must not move under it."""
        if self.running is not None:
            raise Conflict(
                f"{self.running} is running: intent changes are refused until it has "
                "restored its temporary changes; retry when it has ended"
            )
        self._ticket += 1
        ticket = self._ticket
        self._changes[ticket] = what
        try:
            yield
        finally:
            del self._changes[ticket]

    async def idle(self) -> None:
        """Return once no experiment runs (at once when none does)."""
        while self.running is not None and self._idle is not None:
            await self._idle.wait()


# --- where: the service, the backend, the proxy -------------------------------------


def resolve(intent: Intent, name: str) -> tuple[Service, Backend]:
    """A service name means its first backend; otherwise a backend name."""
    service = intent.service(name)
    if service is not None:
        if not service.backends:
            raise NotFound(f"service {name!r} has no backends")
        return service, service.backends[0]
    for service in intent.services:
        backend = service.backend(name)
        if backend is not None:
            return service, backend
    raise NotFound(f"no service or backend named {name!r}")


@dataclass(frozen=True)
class LabPorts:
    """What the experiments work with, each a narrow collaborator (wired in app.py)."""

    intent: IntentView
    changes: ChangeApplier
    holds: HealthHolds
    proxies: ProxyRegistry
    registry: Experiments
    # router.tls: the certificate the listener presents (None: plain HTTP).
    listener_certificate: Callable[[], EdgeCertificate | None] = lambda: None


def observed_proxy(proxies: ProxyRegistry) -> ProxyStatus:
    for proxy in proxies.connected():
        if proxy.envoy_admin:
            return proxy
    raise DependencyUnavailable(
        "no connected Envoy with an admin address in its node metadata: nothing to observe"
    )


@dataclass
class Lab:
    """Everything one experiment works with."""

    ports: LabPorts
    admin: aiohttp.ClientSession
    traffic: aiohttp.ClientSession
    proxy: ProxyStatus
    service: Service
    target: Backend
    deadline: float
    temporary_changes: list[str] = field(default_factory=list)

    def remaining(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def probe_url(self) -> str:
        scheme = "http" if self.ports.listener_certificate() is None else "https"
        return f"{scheme}://{self.ports.intent.intent.listen}{self.service.routes[0]}"


@contextlib.asynccontextmanager
async def open_lab(
    ports: LabPorts, kind: str, service: Service, target: Backend, limits: Limits
) -> AsyncIterator[Lab]:
    proxy = observed_proxy(ports.proxies)
    # Envoy gives up first (the route's timeout); a route without one (an LLM's,
    # 0) still gets a bounded client.
    route_timeout_s = ports.intent.intent.policies.request_timeout_of(service)
    timeout = aiohttp.ClientTimeout(total=(route_timeout_s or Policies().request_timeout_s) + 1)
    # The hold outlives every bounded step of the experiment; with replicas it is
    # shared and expires by itself should this controller die meanwhile.
    hold_s = limits.max_duration_s + HOLD_MARGIN_S
    with ports.registry.claim(kind, target.name):
        async with (
            ports.holds.held(target.name, hold_s),
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0)) as admin,
            aiohttp.ClientSession(
                timeout=timeout,
                connector=aiohttp.TCPConnector(ssl=pinned(ports.listener_certificate())),
            ) as traffic,
        ):
            deadline = time.monotonic() + limits.max_duration_s
            yield Lab(ports, admin, traffic, proxy, service, target, deadline)


def pinned(certificate: EdgeCertificate | None) -> ssl.SSLContext | bool:
    """Probe traffic to our own listener trusts exactly the certificate the
    controller serves it (the chain's certificates as trust anchors), whatever
    name the listen address has (0.0.0.0 is in no certificate)."""
    if certificate is None:
        return True  # plain HTTP: aiohttp's default
    context = ssl.create_default_context(cadata=certificate.cert_chain.decode("ascii"))
    context.check_hostname = False
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


# --- reading Envoy -------------------------------------------------------------------

Counters = dict[tuple[str, str], HostStats]  # (hostname, address) -> host


async def hosts(lab: Lab) -> tuple[HostStats, ...] | None:
    """The service cluster's hosts as the proxy sees them; None if unreadable."""
    read = await envoy_stats.read_proxy(lab.admin, lab.proxy.node_id, lab.proxy.envoy_admin)
    if read.error is not None:
        return None
    return tuple(h for h in read.hosts if h.cluster == lab.service.name)


async def counters(lab: Lab) -> Counters:
    return {(h.hostname, h.address): h for h in await hosts(lab) or ()}


def delta(before: Counters, after: Counters, name: str, counter: str) -> int:
    """How much `counter` grew for backend `name` (a host new since `before` counts from 0)."""
    grown = 0
    for key, host in after.items():
        if key[0] == name:
            old = before.get(key)
            grown += host.get(counter) - (old.get(counter) if old is not None else 0)
    return grown


def is_ejected(host: HostStats) -> bool:
    return bool(host.health.get("failed_outlier_check"))


def out_of_rotation(host: HostStats) -> bool:
    health = host.health
    failed = health.get("failed_active_health_check") or health.get("eds_health_status") in _OUT_EDS
    return is_ejected(host) or bool(failed)


def named(found: Sequence[HostStats], name: str) -> list[HostStats]:
    return [h for h in found if h.hostname == name]


def circuit_state(found: Sequence[HostStats] | None, name: str) -> str:
    """ "open" while Envoy's outlier detection ejects the backend, else "closed"."""
    if found is None:
        return "unknown"
    return "open" if any(is_ejected(h) for h in named(found, name)) else "closed"


async def wait_until(lab: Lab, check: Callable[[Sequence[HostStats]], bool]) -> float | None:
    """Poll until `check(hosts)` holds; the monotonic time it was seen, or None at the deadline."""
    while time.monotonic() < lab.deadline:
        found = await hosts(lab)
        if found is not None and check(found):
            return time.monotonic()
        await asyncio.sleep(POLL_S)
    return None


def target_out(name: str) -> Callable[[Sequence[HostStats]], bool]:
    return lambda found: (
        bool(named(found, name)) and all(out_of_rotation(h) for h in named(found, name))
    )


def target_back(name: str) -> Callable[[Sequence[HostStats]], bool]:
    return lambda found: any(not out_of_rotation(h) for h in named(found, name))


# --- probe traffic through the Envoy listener -------------------------------------------


@dataclass(frozen=True)
class Probe:
    started: float
    ended: float
    status: int | None  # None: no answer (connection error, timeout)

    @property
    def ok(self) -> bool:
        return self.status is not None and self.status < 500


class Traffic:
    """`concurrency` clients sending GET <service route> until stopped."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.probes: list[Probe] = []
        self._session, self._url = session, url
        self._stop = asyncio.Event()

    async def run(self, concurrency: int) -> None:
        await asyncio.gather(*(self._client() for _ in range(concurrency)))

    def stop(self) -> None:
        self._stop.set()

    async def send(self, count: int) -> list[Probe]:
        """`count` requests one after the other."""
        return [await self._one() for _ in range(count)]

    async def _client(self) -> None:
        while not self._stop.is_set() and len(self.probes) < MAX_PROBES:
            await self._one()

    async def _one(self) -> Probe:
        started, status = time.monotonic(), None
        try:
            async with self._session.get(self._url, headers={PROBE_HEADER: "1"}) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError):
            pass
        probe = Probe(started, time.monotonic(), status)
        self.probes.append(probe)
        return probe


@contextlib.asynccontextmanager
async def running(traffic: Traffic, concurrency: int) -> AsyncIterator[Traffic]:
    """Traffic runs while the block runs; on exit it stops and in-flight requests end."""
    task = asyncio.create_task(traffic.run(concurrency))
    try:
        yield traffic
    finally:
        traffic.stop()
        await task

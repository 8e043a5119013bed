"""The controller's own health checker: HTTP probes of every backend's health path.

Verdicts (`model.Health`) are written into the controller's `health` mapping,
which the translator turns into EDS `health_status`; every changed verdict
calls `on_change` (the publisher's `mark_dirty`), so Envoy moves traffic
within one publish. Envoy has no per-backend response time of its own
(envoy-notes.md), so the probe durations here are what the health report shows.

Rules (tests/test_health_unit.py pins them):
- A backend is probed as soon as it appears (start-up, or added to the
  intent), so verdicts settle before Envoy even connects. Later probes run at
  a random, stable phase in [0, jitter x interval) plus whole intervals:
  probes of many backends do not burst together, and no two probes of one
  backend are more than one interval apart, so a dead backend is seen within
  one interval plus the timeout.
- A probe passes on a 2xx answer within `timeout_s`.
- A definitive failure marks the backend unhealthy at once: an explicit non-2xx
  answer (Envoy's HTTP health checker does the same) or a refused connection
  (nothing listens: the process is gone, waiting helps nobody). Ambiguous
  failures (timeout, reset, other errors) count: `unhealthy_threshold` in a row.
- A never-probed backend is UNKNOWN (Envoy routes to it); its first pass makes
  it HEALTHY. An UNHEALTHY backend needs `healthy_threshold` passes in a row.
- The checker follows the intent: a new backend starts UNKNOWN, a removed one is
  forgotten, one whose address, port or health path changed starts over as
  UNKNOWN (it is another target now).

With several replicas (xds_server/redis_health.py, docs/replicas.md) only the
elected prober runs this checker; it starts each backend from the shared record
(`seed`) instead of UNKNOWN, reports every state change (`on_state`) so the
record can be written, and is run again from scratch on a later term.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp

from xds_server.model import Backend, Health, Intent, Service, SocketAddress
from xds_server.model import Protocol as ServiceProtocol
from xds_server.store import IntentStore

log = logging.getLogger("xds_server.health")


@dataclass(frozen=True)
class HealthPolicy:
    interval_s: float = 30.0
    timeout_s: float = 5.0
    healthy_threshold: int = 2
    unhealthy_threshold: int = 3
    jitter: float = 0.1  # share of the interval over which first probes are spread


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    definitive: bool  # a failure that needs no confirmation
    elapsed_s: float
    at: float  # wall clock (epoch seconds) when the probe ended
    error: str | None = None


Prober = Callable[[Backend], Awaitable[ProbeResult]]


class HealthObserver(Protocol):
    """What the checker reports (metrics, failover timing); called synchronously,
    after the verdict is written and the publisher marked dirty."""

    def probed(self, name: str, result: ProbeResult) -> None: ...

    def verdict_changed(
        self, name: str, previous: Health, current: Health, result: ProbeResult
    ) -> None: ...


@dataclass
class BackendHealth:
    """What the checker knows of one backend."""

    verdict: Health = Health.UNKNOWN
    passes: int = 0  # in a row
    failures: int = 0  # in a row
    last: ProbeResult | None = None
    since: float | None = None  # wall clock of the last verdict change

    def record(self, result: ProbeResult, policy: HealthPolicy) -> bool:
        """Count `result`; True when the verdict changed."""
        self.last = result
        self.passes = self.passes + 1 if result.ok else 0
        self.failures = 0 if result.ok else self.failures + 1
        verdict = next_verdict(self.verdict, self.passes, self.failures, result, policy)
        if verdict is self.verdict:
            return False
        self.verdict, self.since = verdict, result.at
        return True


def next_verdict(
    current: Health, passes: int, failures: int, result: ProbeResult, policy: HealthPolicy
) -> Health:
    if result.ok:
        if current is Health.UNHEALTHY and passes < policy.healthy_threshold:
            return current
        return Health.HEALTHY
    if result.definitive or failures >= policy.unhealthy_threshold:
        return Health.UNHEALTHY
    return current


# --- probing -------------------------------------------------------------------------


def probe_url(backend: Backend) -> str:
    return f"http://{SocketAddress(backend.address, backend.port)}{backend.health_path}"


class HttpProber:
    """GET the health path over a fresh connection each time.

    No keep-alive on purpose: a pooled connection to a killed backend fails as
    an ambiguous disconnect, a fresh one as a definitive refusal; and the
    response time then includes connecting, as a client's would.
    """

    def __init__(self, session: aiohttp.ClientSession, timeout_s: float) -> None:
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def __call__(self, backend: Backend) -> ProbeResult:
        started = time.perf_counter()
        try:
            async with self._session.get(probe_url(backend), timeout=self._timeout) as response:
                await response.read()
                status = response.status
        except aiohttp.ClientConnectorError as error:
            refused = isinstance(error.os_error, ConnectionRefusedError)
            return _failed(started, f"connect: {error.os_error}", definitive=refused)
        except TimeoutError:
            return _failed(started, "timeout", definitive=False)
        except aiohttp.ClientError as error:
            return _failed(started, f"{type(error).__name__}: {error}", definitive=False)
        if 200 <= status < 300:
            return ProbeResult(True, False, time.perf_counter() - started, time.time())
        return _failed(started, f"HTTP {status}", definitive=True)


def _failed(started: float, error: str, *, definitive: bool) -> ProbeResult:
    return ProbeResult(False, definitive, time.perf_counter() - started, time.time(), error)


def new_session() -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    return aiohttp.ClientSession(connector=connector)


# --- the checker -----------------------------------------------------------------------

Target = tuple[str, int, str]  # what a probe talks to: address, port, health path
# The state to start a backend from (a shared record), or None for a fresh UNKNOWN.
Seed = Callable[[str, Target], BackendHealth | None]


def probed_backends(intent: Intent) -> dict[str, Backend]:
    """Backends the HTTP prober can judge. A gRPC-only backend never answers an
    HTTP GET of its health path, and a verdict from that would remove it from
    EDS; it stays UNKNOWN, which Envoy and gRPC clients route to."""
    return {
        b.name: b for s in intent.services if s.protocol is ServiceProtocol.HTTP for b in s.backends
    }


def probe_target(backend: Backend) -> Target:
    return backend.address, backend.port, backend.health_path


@dataclass
class _Probing:
    target: Target
    task: asyncio.Task[None]


class HealthChecker:
    """Probes every backend of the current intent; writes verdicts into `verdicts`."""

    def __init__(
        self,
        store: IntentStore,
        verdicts: MutableMapping[str, Health],
        on_change: Callable[[], None],
        policy: HealthPolicy,
        *,
        prober: Prober | None = None,
        rng: random.Random | None = None,
        observers: Sequence[HealthObserver] = (),
        on_state: Callable[[str], None] | None = None,
        seed: Seed | None = None,
    ) -> None:
        self.policy = policy
        self.observers = list(observers)
        self.states: dict[str, BackendHealth] = {}
        self._store = store
        self._verdicts = verdicts
        self._on_change = on_change
        self._prober = prober
        self._on_state = on_state  # any change to one backend's state: probe counted, forgotten
        self._seed = seed
        self._rng = rng or random.Random()
        self._probing: dict[str, _Probing] = {}
        self._held: set[str] = set()
        self._intent_changed = asyncio.Event()
        store.on_change(self._intent_changed.set)

    async def run(self) -> None:
        """Probe until cancelled, following every intent change. A later run (the
        replica is elected prober again) starts over from the intent and the seed."""
        self._probing.clear()
        self.states.clear()
        if self._prober is not None:
            await self._follow_intent(self._prober)
            return
        async with new_session() as session:
            await self._follow_intent(HttpProber(session, self.policy.timeout_s))

    @contextmanager
    def held(self, name: str) -> Iterator[None]:
        """Freeze one backend: no probes, and its verdict stays even if the intent
        moves it. An experiment fails it on purpose and wants the circuit breaker,
        not this checker, to react; on release it is probed (or retargeted) again."""
        self.hold(name)
        try:
            yield
        finally:
            self.release(name)

    def hold(self, name: str) -> None:
        self._held.add(name)

    def release(self, name: str) -> None:
        """End a hold. With a seed, the state starts again from it: the shared record
        is the truth, and a probe that raced the hold may have moved the local state."""
        if name not in self._held:
            return
        self._held.discard(name)
        probing = self._probing.get(name)
        if self._seed is not None and probing is not None:
            seeded = self._seed(name, probing.target)
            if seeded is not None:
                self.states[name] = seeded
        self._intent_changed.set()

    @property
    def holds(self) -> frozenset[str]:
        return frozenset(self._held)

    def target_of(self, name: str) -> Target | None:
        """What `name` is probed at now; None when it is not probed."""
        probing = self._probing.get(name)
        return None if probing is None else probing.target

    async def _follow_intent(self, prober: Prober) -> None:
        # Cancelling run() cancels this TaskGroup and with it every probe loop.
        async with asyncio.TaskGroup() as tasks:
            while True:
                self._intent_changed.clear()
                self._reconcile(self._store.intent, tasks, prober)
                await self._intent_changed.wait()

    def _reconcile(self, intent: Intent, tasks: asyncio.TaskGroup, prober: Prober) -> None:
        wanted = probed_backends(intent)
        for name, probing in list(self._probing.items()):
            backend = wanted.get(name)
            if name in self._held and backend is not None:
                continue  # frozen; reconciled on release
            if backend is None or probe_target(backend) != probing.target:
                probing.task.cancel()
                del self._probing[name]
                self._forget(name)
        for name, backend in wanted.items():
            if name not in self._probing:
                self.states[name] = self._initial(name, backend)
                task = tasks.create_task(self._probe_loop(backend, prober), name=f"probe {name}")
                self._probing[name] = _Probing(probe_target(backend), task)

    def _initial(self, name: str, backend: Backend) -> BackendHealth:
        seeded = self._seed(name, probe_target(backend)) if self._seed is not None else None
        if seeded is None:
            return BackendHealth()
        if seeded.verdict is not Health.UNKNOWN:
            self._verdicts[name] = seeded.verdict  # already published: no on_change
        return seeded

    def _forget(self, name: str) -> None:
        self.states.pop(name, None)
        if self._verdicts.pop(name, Health.UNKNOWN) is not Health.UNKNOWN:
            self._on_change()
        self._state_changed(name)

    def _state_changed(self, name: str) -> None:
        if self._on_state is not None:
            self._on_state(name)

    async def _probe_loop(self, backend: Backend, prober: Prober) -> None:
        loop = asyncio.get_running_loop()
        interval = self.policy.interval_s
        if backend.name not in self._held:
            self._apply(backend.name, await _safely(prober, backend))
        due = loop.time() + self._rng.uniform(0.0, self.policy.jitter * interval)
        while True:
            await asyncio.sleep(max(0.0, due - loop.time()))
            # Fixed ticks, not "interval after the last probe": no drift. A tick
            # missed (a stalled loop) is skipped rather than caught up in a burst.
            due = max(due + interval, loop.time())
            if backend.name not in self._held:
                self._apply(backend.name, await _safely(prober, backend))

    def _apply(self, name: str, result: ProbeResult) -> None:
        state = self.states.get(name)
        if state is None:
            return
        previous = state.verdict
        changed = state.record(result, self.policy)
        self._state_changed(name)
        self._tell("probed", name, result)
        if not changed:
            return
        self._verdicts[name] = state.verdict
        log.info(
            "backend %s is %s (%s)",
            name,
            state.verdict,
            result.error or "probe passed",
            extra={"backend": name, "verdict": str(state.verdict)},
        )
        self._on_change()
        self._tell("verdict_changed", name, previous, state.verdict, result)

    def _tell(self, hook: str, *args: object) -> None:
        # An observer that fails is logged; it must not end the probe loop.
        for observer in self.observers:
            try:
                getattr(observer, hook)(*args)
            except Exception:
                log.exception("health observer %r failed in %s", observer, hook)


async def _safely(prober: Prober, backend: Backend) -> ProbeResult:
    """A probe that raises is an ambiguous failure: one odd backend must not
    end the TaskGroup, and with it the controller."""
    started = time.perf_counter()
    try:
        return await prober(backend)
    except Exception as error:
        log.exception("probing %s failed unexpectedly", backend.name)
        return _failed(started, f"{type(error).__name__}: {error}", definitive=False)


# --- the report (GET /api/v1/router/health, GET /api/v1/health) ------------------------

OVERALL_HEALTHY, OVERALL_DEGRADED, OVERALL_UNHEALTHY = "healthy", "degraded", "unhealthy"


@dataclass(frozen=True)
class HealthSummary:
    """Counts and the overall verdict.

    A not-yet-probed backend counts in `total` and in `unknown`, never as healthy
    or unhealthy. It keeps the overall verdict at "degraded" at best (nothing is
    confirmed), but a service whose backends are merely unknown still counts as
    serving, because Envoy does route to UNKNOWN hosts. "unhealthy" means some
    service has no backend that can take traffic (all unhealthy or draining).
    """

    total: int
    healthy: int
    unhealthy: int
    unknown: int
    services: dict[str, str] = field(default_factory=dict)

    @property
    def overall(self) -> str:
        states = set(self.services.values())
        if OVERALL_UNHEALTHY in states or not self.services:
            return OVERALL_UNHEALTHY
        return OVERALL_DEGRADED if OVERALL_DEGRADED in states else OVERALL_HEALTHY


def service_state(service: Service, verdicts: dict[str, Health]) -> str:
    serving = [
        b for b in service.backends if not b.draining and verdicts[b.name] is not Health.UNHEALTHY
    ]
    if not serving:
        return OVERALL_UNHEALTHY
    healthy = all(verdicts[b.name] is Health.HEALTHY for b in service.backends)
    return OVERALL_HEALTHY if healthy else OVERALL_DEGRADED


def summarize(intent: Intent, states: dict[str, BackendHealth]) -> HealthSummary:
    verdicts = {b.name: _verdict(states, b.name) for b in intent.backends()}
    counted = list(verdicts.values())
    return HealthSummary(
        total=len(counted),
        healthy=counted.count(Health.HEALTHY),
        unhealthy=counted.count(Health.UNHEALTHY),
        unknown=counted.count(Health.UNKNOWN),
        services={s.name: service_state(s, verdicts) for s in intent.services},
    )


def _verdict(states: dict[str, BackendHealth], name: str) -> Health:
    state = states.get(name)
    return Health.UNKNOWN if state is None else state.verdict


def health_report(intent: Intent, states: dict[str, BackendHealth]) -> dict[str, object]:
    """The spec's "Backend health status" shape, grouped by display group."""
    groups: dict[str, dict[str, object]] = {}
    for service in intent.services:
        group = groups.setdefault(service.display_group, {})
        for key, backend in display_keys(service, group).items():
            group[key] = backend_entry(states.get(backend.name), backend)
    summary = summarize(intent, states)
    return {
        "health_status": groups,
        "overall_health": summary.overall,
        "total_backends": summary.total,
        "healthy_backends": summary.healthy,
        "unhealthy_backends": summary.unhealthy,
        "unknown_backends": summary.unknown,
    }


def display_keys(service: Service, taken: dict[str, object]) -> dict[str, Backend]:
    """ "qdrant-primary" shows as "primary" under its service; the full name is
    kept when the short one is empty or already used in the group."""
    keys: dict[str, Backend] = {}
    for backend in service.backends:
        short = backend.name.removeprefix(f"{service.name}-")
        key = short if short and short not in taken and short not in keys else backend.name
        keys[key] = backend
    return keys


def backend_entry(state: BackendHealth | None, backend: Backend) -> dict[str, object]:
    last = state.last if state is not None else None
    entry: dict[str, object] = {
        "status": str(state.verdict if state is not None else Health.UNKNOWN),
        "response_time_ms": None if last is None else round(last.elapsed_s * 1000, 1),
        "last_check": None if last is None else iso_utc(last.at),
    }
    if last is not None and last.error is not None:
        entry["error"] = last.error
    if backend.draining:
        entry["draining"] = True
    return entry


def iso_utc(epoch: float) -> str:
    """ISO-8601 UTC with milliseconds and a Z: 2025-07-15T14:30:00.123Z."""
    whole = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch))
    return f"{whole}.{int(epoch * 1000) % 1000:03d}Z"

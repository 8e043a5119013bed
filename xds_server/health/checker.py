"""The controller's own health checker: HTTP probes of every backend's health path,
gRPC health checks (health/grpc_probe.py) of every backend of a gRPC service.

Verdicts (`model.Health`) are written into the controller's `health` mapping,
which the translator turns into EDS `health_status`; every changed verdict
calls `on_change` (the publisher's `mark_dirty`), so Envoy moves traffic
within one publish. Envoy has no per-backend response time of its own
(docs/envoy-notes.md), so the probe durations here are what the health report shows.

Rules (tests/health/test_health_unit.py pins them):
- A backend is probed as soon as it appears (start-up, or added to the
  intent), so verdicts settle before Envoy even connects. Later probes run at
  a random, stable phase in [0, jitter x interval) plus whole intervals:
  probes of many backends do not burst together, and no two probes of one
  backend are more than one interval apart, so a dead backend is seen within
  one interval plus the timeout.
- A probe passes on a 2xx answer within `timeout_s` (gRPC: SERVING), at every
  address of the backend (a DNS name's records: health/addresses.py).
- A definitive failure marks the backend unhealthy at once: an explicit non-2xx
  answer (Envoy's HTTP health checker does the same) or a refused connection
  (nothing listens: the process is gone, waiting helps nobody). Ambiguous
  failures (timeout, reset, other errors) count: `unhealthy_threshold` in a row.
- A failed probe while Envoy's outlier detection ejects the backend on some
  proxy (`ejected`, telemetry/passive.py) is definitive too: two independent
  witnesses agree, the data path's consecutive failures and our probe. An
  ejection alone changes nothing (a probe that passes keeps the verdict), so
  EDS health never flaps on one proxy's ejection.
- `probe_now(name)` (the first ejection of a backend seen) probes it at once
  instead of at its next tick, at most once per interval per backend, so a
  backend Envoy ejected is confirmed within a sampler interval of the
  ejection, not up to a probe interval later. The regular ticks stay as they are.
- Confirmation probes: after an ambiguous failure of a backend that is not
  unhealthy, the next probes come interval / (unhealthy_threshold - 1) -
  timeout after the previous one ended (at once if that is negative), until
  the threshold is reached or a probe passes; so a hung backend is unhealthy
  within one interval of its first failed probe, not threshold - 1 intervals
  later. At most threshold - 1 extra probes per failure; the regular ticks stay.
- A never-probed backend is UNKNOWN (Envoy routes to it); its first pass makes
  it HEALTHY. An UNHEALTHY backend needs `healthy_threshold` passes in a row.
- The checker follows the intent: a new backend starts UNKNOWN, a removed one is
  forgotten, one whose address, port, health path or tls changed starts over as
  UNKNOWN (it is another target now).
- A TLS backend is probed over TLS as Envoy reaches it (health/tls.py): a
  certificate that does not verify is a definitive failure with its reason.

With several replicas (xds_server/health/shared.py, docs/replicas.md) only the
elected prober runs this checker; it starts each backend from the shared record
(`seed`) instead of UNKNOWN, reports every state change (`on_state`) so the
record can be written, and is run again from scratch on a later term.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

from xds_server.dns.base import Resolved
from xds_server.health.addresses import EachAddress
from xds_server.health.grpc_probe import GrpcProber
from xds_server.health.probe import HttpProber, Prober, failed_probe, new_session
from xds_server.health.verdict import (
    BackendHealth,
    DelegatedVerdict,
    HealthObserver,
    HealthPolicy,
    ProbeResult,
)
from xds_server.model.health_checker import confirmation_gap_s
from xds_server.model.intent import Backend, Health, Intent
from xds_server.model.intent import Protocol as ServiceProtocol
from xds_server.store.base import IntentStore

log = logging.getLogger("xds_server.health")


# What a probe talks to: address, port, and the health path, or for a gRPC health
# check GRPC_CHECK + the health service name (a path starts with "/": no clash);
# over TLS, TLS_CHECK + the digest of the backend's tls + the path, so a changed
# CA, name or client certificate is another target (probed afresh, with it).
Target = tuple[str, int, str]
GRPC_CHECK = "grpc:"
TLS_CHECK = "tls:"


# The state to start a backend from (a shared record), or None for a fresh UNKNOWN.
Seed = Callable[[str, Target], BackendHealth | None]


@dataclass(frozen=True)
class Probed:
    """A backend and how it is probed: None = HTTP GET of its health path, else
    the gRPC health service to check ("" = the server as a whole)."""

    backend: Backend
    grpc_health_service: str | None = None

    @property
    def target(self) -> Target:
        address, port, tls = self.backend.address, self.backend.port, self.backend.tls
        if self.grpc_health_service is None and tls is not None:
            return address, port, f"{TLS_CHECK}{tls.key}:{self.backend.health_path}"
        if self.grpc_health_service is None:
            return address, port, self.backend.health_path
        return address, port, GRPC_CHECK + self.grpc_health_service


def probed_backends(intent: Intent) -> dict[str, Probed]:
    """Every backend, with how to probe it. A gRPC backend never answers an HTTP
    GET of its health path (a verdict from that would remove it from EDS): it
    gets the gRPC health check of its service's `grpc_health_service`."""
    probed: dict[str, Probed] = {}
    for service in intent.services:
        grpc = service.protocol is ServiceProtocol.GRPC
        health_service = service.grpc_health_service if grpc else None
        for backend in service.backends:
            probed[backend.name] = Probed(backend, health_service)
    return probed


class Delegate(Protocol):
    """Envoys that probe on the checker's behalf (health/delegation.py, HDS)."""

    def delegated(self, name: str) -> bool:
        """True: Envoys report on `name`; the checker does not probe it."""

    async def run(self, checker: HealthChecker) -> None:
        """Runs while the checker runs; hands verdicts in with `checker.report`."""


@dataclass
class _Probing:
    target: Target
    task: asyncio.Task[None]
    early: asyncio.Event  # set by probe_now: probe before the next tick
    early_at: float | None = None  # loop time of the last early probe asked for


class HealthChecker:
    """Probes every backend of the current intent; writes verdicts into `verdicts`."""

    def __init__(
        self,
        store: IntentStore,
        verdicts: MutableMapping[str, Health],
        on_change: Callable[[], None],
        policy: HealthPolicy,
        *,
        prober: Prober | None = None,  # replaces both HTTP and gRPC probes (tests)
        rng: random.Random | None = None,
        observers: Sequence[HealthObserver] = (),
        on_state: Callable[[str], None] | None = None,
        seed: Seed | None = None,
        resolved: Resolved | None = None,  # addresses of backends named by DNS
        ejected: Callable[[str], bool] | None = None,
        delegate: Delegate | None = None,
    ) -> None:
        self.policy = policy
        self._delegate = delegate  # Envoys probing on our behalf (HDS)
        self._resolved = resolved
        self.observers = list(observers)
        self.states: dict[str, BackendHealth] = {}
        self._store = store
        self._verdicts = verdicts
        self._on_change = on_change
        self._prober = prober
        self._on_state = on_state  # any change to one backend's state: probe counted, forgotten
        self._seed = seed
        self._ejected = ejected  # Envoy's outlier detection ejects this backend somewhere
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
            given = self._prober
            await self._follow_intent(lambda _: given)
            return
        async with new_session() as session:
            http = HttpProber(session, self.policy.timeout_s)
            await self._follow_intent(functools.partial(self._prober_for, http))

    def _prober_for(self, http: HttpProber, probed: Probed) -> Prober:
        """The HTTP probe, or a gRPC health check of the backend's health service,
        at each of the backend's addresses (health/addresses.py)."""
        if probed.grpc_health_service is None:
            return EachAddress(http.at, self._resolved)
        grpc = GrpcProber(probed.grpc_health_service, self.policy.timeout_s)
        return EachAddress(grpc.at, self._resolved)

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

    def probe_now(self, name: str) -> bool:
        """Probe `name` at once, unless it is not probed here, held, or had an early
        probe less than one interval ago (module docstring). True if asked."""
        probing = self._probing.get(name)
        if probing is None or name in self._held:
            return False
        now = asyncio.get_running_loop().time()
        if probing.early_at is not None and now - probing.early_at < self.policy.interval_s:
            return False
        probing.early_at = now
        probing.early.set()
        return True

    def report(self, name: str, delegated: DelegatedVerdict) -> None:
        """A verdict the Envoys probing `name` reached (HDS): Envoy applied the
        thresholds already, so it is taken as it is, through the same path as our
        own probes' (EDS, shared record, observers). Ignored while held."""
        state = self.states.get(name)
        if state is None or name in self._held:
            return
        previous = state.verdict
        state.last, state.passes, state.failures = delegated.result, 0, 0
        state.checked_by, state.reported_at = delegated.checked_by, dict(delegated.reported_at)
        changed = previous is not delegated.verdict
        if changed:
            state.verdict, state.since = delegated.verdict, delegated.result.at
        self._state_changed(name)
        if changed:
            self._publish(name, previous, state, delegated.result)

    @property
    def holds(self) -> frozenset[str]:
        return frozenset(self._held)

    def target_of(self, name: str) -> Target | None:
        """What `name` is probed at now; None when it is not probed."""
        probing = self._probing.get(name)
        return None if probing is None else probing.target

    async def _follow_intent(self, prober_for: Callable[[Probed], Prober]) -> None:
        # Cancelling run() cancels this TaskGroup and with it every probe loop.
        async with asyncio.TaskGroup() as tasks:
            if self._delegate is not None:
                tasks.create_task(self._delegate.run(self), name="HDS delegation")
            while True:
                self._intent_changed.clear()
                self._reconcile(self._store.intent, tasks, prober_for)
                await self._intent_changed.wait()

    def _reconcile(
        self, intent: Intent, tasks: asyncio.TaskGroup, prober_for: Callable[[Probed], Prober]
    ) -> None:
        wanted = probed_backends(intent)
        for name, probing in list(self._probing.items()):
            probed = wanted.get(name)
            if name in self._held and probed is not None:
                continue  # frozen; reconciled on release
            if probed is None or probed.target != probing.target:
                probing.task.cancel()
                del self._probing[name]
                self._forget(name)
        for name, probed in wanted.items():
            if name not in self._probing:
                self.states[name] = self._initial(name, probed.target)
                early = asyncio.Event()
                loop = self._probe_loop(probed.backend, prober_for(probed), early)
                task = tasks.create_task(loop, name=f"probe {name}")
                self._probing[name] = _Probing(probed.target, task, early)

    def _initial(self, name: str, target: Target) -> BackendHealth:
        seeded = self._seed(name, target) if self._seed is not None else None
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

    async def _probe_loop(self, backend: Backend, prober: Prober, early: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        interval = self.policy.interval_s
        if self._probes_here(backend.name):
            self._apply(backend.name, await _safely(prober, backend))
        due = loop.time() + self._rng.uniform(0.0, self.policy.jitter * interval)
        while True:
            wake = min(due, loop.time() + self._confirm_after(backend.name))
            if not await _woken(early, wake - loop.time()) and wake == due:
                # Fixed ticks, not "interval after the last probe": no drift. A tick
                # missed (a stalled loop) is skipped rather than caught up in a burst.
                due = max(due + interval, loop.time())
            early.clear()
            if self._probes_here(backend.name):
                self._apply(backend.name, await _safely(prober, backend))

    def _probes_here(self, name: str) -> bool:
        """Not held, and no Envoy reports on it (else the controller probes it:
        the fallback for a backend no connected Envoy is assigned to)."""
        return name not in self._held and not (self._delegate and self._delegate.delegated(name))

    def _confirm_after(self, name: str) -> float:
        """Seconds to the next confirmation probe (module docstring), inf for none:
        after an ambiguous failure of a backend not yet unhealthy, the probes that
        reach the threshold follow each other so that the last one ends within one
        interval of the first (or back to back when the timeouts alone take longer)."""
        state = self.states.get(name)
        threshold = self.policy.unhealthy_threshold
        if state is None or state.verdict is Health.UNHEALTHY or threshold < 2:
            return math.inf
        if not 0 < state.failures < threshold:
            return math.inf
        return confirmation_gap_s(self.policy.interval_s, self.policy.timeout_s, threshold)

    def _apply(self, name: str, result: ProbeResult) -> None:
        state = self.states.get(name)
        if state is None:
            return
        if not result.ok and not result.definitive and self._ejected and self._ejected(name):
            result = dataclasses.replace(result, definitive=True)  # corroborated (docstring)
        previous = state.verdict
        changed = state.record(result, self.policy)
        self._state_changed(name)
        self._tell("probed", name, result)
        if changed:
            self._publish(name, previous, state, result)

    def _publish(
        self, name: str, previous: Health, state: BackendHealth, result: ProbeResult
    ) -> None:
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


async def _woken(early: asyncio.Event, delay_s: float) -> bool:
    """Sleep `delay_s`, or less if `early` is set: True when woken early."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, delay_s)):
            await early.wait()
            return True
    return False


async def _safely(prober: Prober, backend: Backend) -> ProbeResult:
    """A probe that raises is an ambiguous failure: one odd backend must not
    end the TaskGroup, and with it the controller."""
    started = time.perf_counter()
    try:
        return await prober(backend)
    except Exception as error:
        log.exception("probing %s failed unexpectedly", backend.name)
        return failed_probe(started, f"{type(error).__name__}: {error}", definitive=False)

"""Pure health rules: the probe policy, one probe's result, a backend's state and
the next verdict after a probe, and the summary of a whole intent (overall
healthy / degraded / unhealthy). No I/O: the checker and the shared health feed it."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from xds_server.model.health_checker import HealthChecker
from xds_server.model.intent import Health, Intent, Service

log = logging.getLogger("xds_server.health")

OVERALL_HEALTHY, OVERALL_DEGRADED, OVERALL_UNHEALTHY = "healthy", "degraded", "unhealthy"
# Who reached a verdict: the controller's own probes, or Envoys (HDS) named by node id.
CONTROLLER = HealthChecker.CONTROLLER.value


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
    # The checkers whose results count for the verdict, and when each last reported
    # (wall clock): the controller, or the Envoys it delegated the probes to (HDS).
    checked_by: tuple[str, ...] = ()
    reported_at: dict[str, float] = field(default_factory=dict)

    def record(self, result: ProbeResult, policy: HealthPolicy) -> bool:
        """Count the controller's probe `result`; True when the verdict changed."""
        self.last = result
        self.checked_by, self.reported_at = (CONTROLLER,), {CONTROLLER: result.at}
        self.passes = self.passes + 1 if result.ok else 0
        self.failures = 0 if result.ok else self.failures + 1
        verdict = next_verdict(self.verdict, self.passes, self.failures, result, policy)
        if verdict is self.verdict:
            return False
        self.verdict, self.since = verdict, result.at
        return True


@dataclass(frozen=True)
class DelegatedVerdict:
    """What the Envoys probing a backend (HDS) agree on, for the checker to publish."""

    verdict: Health
    result: ProbeResult  # elapsed_s is 0: Envoy reports no probe duration
    checked_by: tuple[str, ...]
    reported_at: Mapping[str, float]


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


def summarize(intent: Intent, states: Mapping[str, BackendHealth]) -> HealthSummary:
    verdicts = {b.name: _verdict(states, b.name) for b in intent.backends()}
    counted = list(verdicts.values())
    return HealthSummary(
        total=len(counted),
        healthy=counted.count(Health.HEALTHY),
        unhealthy=counted.count(Health.UNHEALTHY),
        unknown=counted.count(Health.UNKNOWN),
        services={s.name: service_state(s, verdicts) for s in intent.services},
    )


def _verdict(states: Mapping[str, BackendHealth], name: str) -> Health:
    state = states.get(name)
    return Health.UNKNOWN if state is None else state.verdict

"""Who runs the active health checks of the backends (README, "Health checkers").

- `controller`: the controller probes every backend itself (health/checker.py);
  with replicas, the elected prober does (docs/replicas.md).
- `envoy`: the controller hands each backend's checks to K of the Envoys
  connected over HDS (envoy.service.health.v3.HealthDiscoveryService,
  `router.health_checkers_per_backend`), aggregates their reports
  (health/aggregation.py) and probes itself only what no Envoy is assigned.

Plain values; nothing here does I/O.
"""

from __future__ import annotations

from enum import StrEnum


class HealthChecker(StrEnum):
    CONTROLLER = "controller"
    ENVOY = "envoy"


DEFAULT_HEALTH_CHECKER = HealthChecker.CONTROLLER
# Two checkers per backend: one sick proxy alone never ejects a backend
# (health/aggregation.py needs a strict majority), and a leaving one leaves a witness.
DEFAULT_HEALTH_CHECKERS_PER_BACKEND = 2


def confirmation_gap_s(interval_s: float, timeout_s: float, unhealthy_threshold: int) -> float:
    """After a failed probe of a backend not yet unhealthy, the wait before the next
    one, so that the `unhealthy_threshold`-th failure ends within one interval of
    the first (health/checker.py): interval / (threshold - 1) - timeout, 0 when
    the timeouts alone take longer; the interval itself when one failure is enough.
    Envoy's checks by HDS use the same gap (translate/hds.py)."""
    if unhealthy_threshold < 2:
        return interval_s
    return max(0.0, interval_s / (unhealthy_threshold - 1) - timeout_s)

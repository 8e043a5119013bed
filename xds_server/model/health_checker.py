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

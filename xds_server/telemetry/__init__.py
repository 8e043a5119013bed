"""What the controller measures: Envoy's stats read back (envoy_stats.py), routing
totals across counter resets (traffic.py, sampler.py, routing.py), failover events
(failover.py), Envoy's outlier ejections (passive.py), Prometheus metrics
(prometheus.py) and the logs (logs.py); shared.py keeps totals and events in
Redis for replicas."""

from __future__ import annotations

from dataclasses import dataclass

from xds_server.telemetry.failover import EventLog, FailoverTracker
from xds_server.telemetry.passive import PassiveView
from xds_server.telemetry.prometheus import ControllerMetrics
from xds_server.telemetry.sampler import TrafficSampler


@dataclass(frozen=True)
class Telemetry:
    """Everything that exists only with metrics enabled."""

    metrics: ControllerMetrics
    sampler: TrafficSampler
    failovers: FailoverTracker
    events: EventLog
    passive: PassiveView  # Envoy's outlier ejections, from the sampler's readings

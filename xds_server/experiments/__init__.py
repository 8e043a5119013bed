"""Resilience experiments: fail one backend for real, drive traffic through
Envoy, watch Envoy's admin API react, measure, and put everything back.

What both experiments promise:
- One at a time per controller: a second one gets Conflict (HTTP 409).
- Bounded: every wait ends at the caller's `max_duration_s`; the restore steps
  run afterwards whatever happened (finally), each bounded too.
- The failure is real. A sample backend (it answers GET /_control/fault) is
  told to answer 503 to all traffic; any other backend is pointed, by a
  temporary intent change, at a loopback port that refuses connections (a
  bound socket that never listens). The previous state comes back at the end.
- The health checker is paused for the failed backend, so what reacts is the
  circuit breaker (Envoy outlier detection), not the probes, and the
  experiment cannot leave a verdict behind.
- An ejection lasts circuit_breaker_timeout (60 s by default). To measure a
  recovery within the bound, the experiment shortens it by a temporary intent
  change (policies are global: every cluster is rebuilt, twice), restored at
  the end and listed under `temporary_changes`.
- Times come from polling Envoy's /clusters every POLL_S: each is an upper
  bound within one poll (plus one admin read).
"""

from xds_server.experiments.lab import FAILURE_MODES, Experiments, LabPorts, Limits
from xds_server.experiments.runs import circuit_breaker_test, failover_test

__all__ = [
    "FAILURE_MODES",
    "Experiments",
    "LabPorts",
    "Limits",
    "circuit_breaker_test",
    "failover_test",
]

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

A change during an experiment: the user's change is never lost. The choice:
refuse, and restore only what the experiment itself changed, for what cannot
be refused.
- While an experiment runs, every intent-changing admin call (strategy PUT,
  backend POST/PATCH/DELETE) is refused with 409 naming it ("the failover
  experiment on qdrant-primary is running ..."), and an experiment asked for
  while such a call is being applied (from its first read to its last ACK) is
  refused with 409 naming that call (`Experiments.changing` / `claim`,
  admin/__init__.py). Why refuse rather than accept and merge: the experiment
  measures a config that must stay put (a strategy change rebuilds every
  cluster, which resets Envoy's outlier state and counters mid-measurement),
  the wait is bounded (max_duration_s, then the restore), and the caller learns
  at once that the change did not happen, instead of a 200 whose effect the
  restore might undo.
- A config reload cannot be answered with 409: it waits until the experiment
  has ended and restored (app.py), so the file is the last word. This also
  covers the case value comparison cannot: a file that sets the ejection time
  to exactly the experiment's temporary value.
- Writes no one can refuse here (another replica, sharing the intent through
  Redis, has its own registry): each restore touches only what the experiment
  changed, and only while it still holds the experiment's value
  (model/edits.py `swap_address`, `swap_ejection_time`): a backend's address
  and port go back only while they are still the refusing port this run bound
  (so no one else's value can equal it), its weight, priority or drain set
  meanwhile stay; the ejection time goes back only while it is still the
  temporary one. Not restored is said in `temporary_changes`. The one case left
  open: another replica's reload setting the ejection time to exactly the
  temporary value during the run gets the configured value back.
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

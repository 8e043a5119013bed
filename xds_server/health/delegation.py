"""router.health_checker: envoy - the controller hands its active health checks to
the Envoys connected over HDS (xds/hds.py) and publishes what they see.

While the checker runs (one controller; with replicas, the elected prober only:
health/shared.py), `Delegation`:
- assigns each backend of the intent to K of the connected Envoys
  (health/assignment.py: balanced, sticky) and sends each Envoy the
  HealthCheckSpecifier of its backends (translate/hds.py), again whenever an
  Envoy joins, leaves or opens a newer stream, the intent changes, or a name's
  addresses change (looked at every report interval; only then is anything
  assigned or translated, and HdsSessions.push sends an Envoy only what
  differs from what it has);
- takes each Envoy's reports (every REPORT_INTERVAL_S) into health/aggregation.py
  and hands the aggregated verdict to the checker (`HealthChecker.report`),
  which publishes it through the same path as its own probes: EDS health, the
  shared record, the observers, and `checked_by` in the health report;
- says which backends it covers (`delegated`): those with a fresh word from an
  assigned Envoy. The checker probes the others itself, so a backend nobody is
  assigned (no Envoy connected, its checkers just left, a name without
  addresses yet) falls back to the controller's probes within one interval.

A verdict is handed on when it or its checkers change, and otherwise at most
once per probe interval (so `last_report` in the health report is at most one
interval old, and a shared record is not rewritten every second).

When the checker stops (the replica lost the prober lease, or shuts down)
every Envoy is sent an empty specifier: it stops probing, and the next prober
assigns afresh (Envoys connected to other replicas are not assigned: their
reports would reach a replica that does not probe; docs/replicas.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from xds_server.dns.base import Resolved
from xds_server.health.aggregation import Reports, health_of_status, stale_after
from xds_server.health.assignment import Assignment, assign
from xds_server.health.verdict import DelegatedVerdict, HealthPolicy, ProbeResult
from xds_server.model.intent import Health, Intent
from xds_server.store.base import IntentStore
from xds_server.translate.hds import health_check_specifier
from xds_server.xds.hds import HdsNode, HdsSessions, HealthReport

if TYPE_CHECKING:
    from xds_server.health.checker import HealthChecker

log = logging.getLogger("xds_server.health")

# How often each Envoy reports (the specifier's interval; Envoy's default too).
REPORT_INTERVAL_S = 1.0


class _Basis(NamedTuple):
    """What the assignment and the specifiers are made of."""

    intent: Intent  # immutable: a change is another object
    nodes: tuple[tuple[str, float], ...]  # (node id, connect time), sorted
    addresses: dict[str, tuple[str, ...]]  # a copy of the resolver's

    def differs(self, older: _Basis | None) -> bool:
        return (
            older is None
            or self.intent is not older.intent
            or self.nodes != older.nodes
            or self.addresses != older.addresses
        )


class Delegation:
    """The HdsOwner of the sessions: assignment out, verdicts in."""

    def __init__(
        self,
        sessions: HdsSessions,
        store: IntentStore,
        policy: HealthPolicy,
        per_backend: int,
        resolved: Resolved | None = None,
        *,
        report_interval_s: float = REPORT_INTERVAL_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._sessions = sessions
        self._store = store
        self._policy = policy
        self._per_backend = per_backend
        self._resolved = resolved
        self._report_interval_s = report_interval_s
        self._clock = clock
        # A newly assigned Envoy's first reports call every host unhealthy until its
        # first check ends, within the timeout (health/aggregation.py, warm-up).
        self._reports = Reports(stale_after(report_interval_s), warmup_s=policy.timeout_s)
        self.assignment: Assignment = {}
        self._checker: HealthChecker | None = None
        # backend -> (verdict, checkers) last handed to the checker, and when
        self._handed: dict[str, tuple[tuple[Health, tuple[str, ...]], float]] = {}
        self._changed = asyncio.Event()
        sessions.owner = self
        store.on_change(self._changed.set)

    # --- what the checker asks ---------------------------------------------------------

    def delegated(self, name: str) -> bool:
        """True while an Envoy assigned to `name` has a fresh word on it."""
        if self._checker is None:
            return False
        assigned = self.assignment.get(name, ())
        return self._reports.verdict(name, assigned, self._clock()).health is not None

    async def run(self, checker: HealthChecker) -> None:
        """Delegate on behalf of `checker` until cancelled (its run() ends)."""
        self._checker = checker
        basis: _Basis | None = None
        try:
            while True:
                self._changed.clear()
                # Assigning and translating every Envoy's specifier costs backends x
                # Envoys: done when what they are made of changed, not every tick.
                current = self._basis()
                if current.differs(basis):
                    self._reassign()
                    basis = current
                self._hand_all()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._report_interval_s):
                        await self._changed.wait()
        finally:
            self._checker = None
            self.assignment = {}
            self._handed.clear()
            self._push_all()  # empty: nobody probes for a checker that stopped

    def _basis(self) -> _Basis:
        """What the assignment and the specifiers are made of. A node that opened a
        newer stream counts as changed (its connect time): it needs its specifier
        again. The intent is immutable: a change is another object."""
        nodes = tuple(sorted((n.node_id, n.connected_at) for n in self._sessions.nodes().values()))
        addresses = dict(self._resolved.addresses) if self._resolved is not None else {}
        return _Basis(self._store.intent, nodes, addresses)

    # --- HdsOwner: what the sessions tell ----------------------------------------------

    def node_joined(self, node: HdsNode) -> None:
        # The run loop assigns it its share and pushes at once (a push here would
        # send the old assignment first: nothing for a new node). A stream that
        # replaced an older one of the node is sent its specifier again too.
        self._changed.set()

    def node_left(self, node: HdsNode) -> None:
        self._reports.drop(node.node_id)
        self._changed.set()

    def reported(self, node_id: str, report: HealthReport) -> None:
        if self._checker is None:
            return
        now = self._clock()
        for backend, endpoints in report.items():
            if node_id not in self.assignment.get(backend, ()):
                continue  # a report on a specifier this node no longer has
            addresses = {f"{e.address}:{e.port}": health_of_status(e.status) for e in endpoints}
            self._reports.record(node_id, backend, addresses, now)
            self._hand(backend, now)

    # --- out: assignment and specifiers ------------------------------------------------

    def _reassign(self) -> None:
        intent = self._store.intent
        backends = [b.name for b in intent.backends()]
        self._reports.retain(backends)
        nodes = sorted(self._sessions.nodes())
        assignment = assign(backends, nodes, self._per_backend, self.assignment)
        if assignment != self.assignment and nodes:
            moved = sum(1 for b in backends if assignment[b] != self.assignment.get(b))
            log.info("HDS: %d backends assigned anew over %d Envoys", moved, len(nodes))
        self.assignment = assignment
        self._push_all()

    def _push_all(self) -> None:
        """Each connected Envoy its backends' specifier (an empty one: none assigned)."""
        by_node: dict[str, list[str]] = {node_id: [] for node_id in self._sessions.nodes()}
        for name, checkers in self.assignment.items():
            for node_id in checkers:
                by_node.setdefault(node_id, []).append(name)
        addresses = self._resolved.addresses if self._resolved is not None else {}
        for node_id, names in by_node.items():
            specifier = health_check_specifier(
                self._store.intent, names, self._policy, self._report_interval_s, addresses
            )
            self._sessions.push(node_id, specifier)  # False for one that just left

    # --- in: verdicts for the checker --------------------------------------------------

    def _hand_all(self) -> None:
        now = self._clock()
        for name in self.assignment:
            self._hand(name, now)

    def _hand(self, name: str, now: float) -> None:
        checker = self._checker
        if checker is None:
            return
        verdict = self._reports.verdict(name, self.assignment.get(name, ()), now)
        if verdict.health is None:
            self._handed.pop(name, None)  # the checker probes it again
            return
        handed = (verdict.health, verdict.checked_by)
        last = self._handed.get(name)
        if last is not None and last[0] == handed and now - last[1] < self._policy.interval_s:
            return
        ok = verdict.health is Health.HEALTHY
        checkers = ", ".join(verdict.checked_by)
        error = None if ok else f"failed the health checks of most of its Envoys (HDS: {checkers})"
        result = ProbeResult(ok=ok, definitive=True, elapsed_s=0.0, at=now, error=error)
        checker.report(
            name, DelegatedVerdict(verdict.health, result, verdict.checked_by, verdict.reported_at)
        )
        self._handed[name] = (handed, now)

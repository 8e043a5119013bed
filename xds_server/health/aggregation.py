"""Envoys' HDS reports -> one verdict per backend. Pure: the caller passes
every time (`at`, `now`: wall clock, epoch seconds); nothing here does I/O.

`Reports` keeps the latest report of each (checker node, backend). A report
gives the health of each address Envoy checked for that backend (its
EndpointHealth list); the checker's word on the backend is:

- HEALTHY when every address is healthy, UNHEALTHY when any one is not (as the
  controller's own probe, health/addresses.py: a HEALTHY verdict never sends
  traffic to an address that failed its check); no word (UNKNOWN) when it
  reported no address, or none is unhealthy but some has no word yet.
- Envoy starts a host it was just given as failed until its first check
  passes (FAILED_ACTIVE_HC, source/common/upstream/health_discovery_service.cc),
  so it reports UNHEALTHY for an address it has not checked yet. An address's
  UNHEALTHY counts only after it was once HEALTHY, or once `warmup_s` (the
  check timeout: the first check starts when the specifier arrives, before
  the first report, and ends within it) has passed since the first report
  naming it; before that it is no word. A backend newly handed to a checker
  is therefore never ejected by the hand-over itself.

`verdict(backend, assigned, now)`: among the currently assigned checkers, the
reports that are fresh (at most `stale_after_s` old, by default three report
intervals: one lost report is no reason to forget a checker) and carry a
word count. Then:

- UNHEALTHY when a strict majority of them says UNHEALTHY;
- HEALTHY otherwise (at least one says HEALTHY), a tie included: with K = 2,
  one checker that cannot reach a backend while the other can is more likely
  that proxy's own trouble (its network, its overload) than the backend's,
  and EDS health is one verdict for every proxy, so one sick Envoy must not
  eject every backend it checks. Each proxy's data path still avoids a
  backend it cannot reach (outlier detection, retries). A dead backend fails
  on both checkers, within an interval of each other.
- None when no assigned checker has a fresh word: the caller falls back to
  its own probes (health/checker.py), e.g. the checkers just left, or a new
  assignment is still warming up.

`checked_by` names the checkers whose fresh word counted; `reported_at` the
time of the last report of each assigned checker that ever reported on the
backend, stale ones included (the health report shows who went quiet).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from envoy.config.core.v3 import health_check_pb2

from xds_server.model.intent import Health

DEFAULT_STALE_REPORTS = 3  # report intervals

# Envoy's HealthStatus of an HDS EndpointHealth, by name -> our word for one address.
# HDS reports HEALTHY, UNHEALTHY, or TIMEOUT (unhealthy after timeouts).
_ENVOY_STATUS = {
    "HEALTHY": Health.HEALTHY,
    "DEGRADED": Health.HEALTHY,  # serving, if not at its best
    "UNHEALTHY": Health.UNHEALTHY,
    "TIMEOUT": Health.UNHEALTHY,
    "DRAINING": Health.UNHEALTHY,
}


def health_of_status(status: int | str) -> Health:
    """An EndpointHealth's `health_status` (its value, or its name as the parsed
    reports of xds/hds.py carry it) as the Health of that address."""
    if isinstance(status, int):
        known = status in health_check_pb2.HealthStatus.values()
        status = health_check_pb2.HealthStatus.Name(status) if known else ""
    return _ENVOY_STATUS.get(status, Health.UNKNOWN)


def stale_after(report_interval_s: float, reports: int = DEFAULT_STALE_REPORTS) -> float:
    return report_interval_s * reports


@dataclass
class _Address:
    first_at: float  # the first report naming it (of this run of reports)
    ever_healthy: bool = False


@dataclass
class _Report:
    """One checker's latest word on one backend."""

    health: Health
    at: float
    addresses: dict[str, _Address] = field(default_factory=dict)


@dataclass(frozen=True)
class Verdict:
    health: Health | None  # None: no fresh word; the caller probes itself
    checked_by: tuple[str, ...]  # node ids whose fresh word counted, sorted
    reported_at: Mapping[str, float]  # node id -> its last report's time


class Reports:
    def __init__(self, stale_after_s: float, warmup_s: float) -> None:
        self._stale_after_s = stale_after_s
        self._warmup_s = warmup_s
        self._latest: dict[str, dict[str, _Report]] = {}  # node -> backend -> report

    def record(self, node: str, backend: str, addresses: Mapping[str, Health], at: float) -> Health:
        """Take `node`'s report on `backend` (address -> health); the checker's word."""
        reports = self._latest.setdefault(node, {})
        previous = reports.get(backend)
        if previous is not None and at - previous.at > self._stale_after_s:
            previous = None  # a gap: checked afresh (reassigned back, or restarted)
        known = {} if previous is None else previous.addresses
        seen = {ip: _seen(known.get(ip), health, at) for ip, health in addresses.items()}
        word = _word([self._counted(seen[ip], health, at) for ip, health in addresses.items()])
        reports[backend] = _Report(word, at, seen)
        return word

    def drop(self, node: str) -> None:
        """Forget a checker whose stream ended: its reports no longer count."""
        self._latest.pop(node, None)

    def retain(self, backends: Collection[str]) -> None:
        """Forget the reports on backends no longer in the intent."""
        for reports in self._latest.values():
            for name in [b for b in reports if b not in backends]:
                del reports[name]

    def verdict(self, backend: str, assigned: Iterable[str], now: float) -> Verdict:
        reported: dict[str, float] = {}
        words: dict[str, Health] = {}
        for node in sorted(set(assigned)):
            report = self._latest.get(node, {}).get(backend)
            if report is None:
                continue
            reported[node] = report.at
            if now - report.at <= self._stale_after_s and report.health is not Health.UNKNOWN:
                words[node] = report.health
        return Verdict(_majority(list(words.values())), tuple(words), reported)

    def _counted(self, address: _Address, health: Health, at: float) -> Health:
        if health is not Health.UNHEALTHY or address.ever_healthy:
            return health
        return health if at - address.first_at >= self._warmup_s else Health.UNKNOWN


def _seen(known: _Address | None, health: Health, at: float) -> _Address:
    address = _Address(at) if known is None else _Address(known.first_at, known.ever_healthy)
    address.ever_healthy = address.ever_healthy or health is Health.HEALTHY
    return address


def _word(healths: list[Health]) -> Health:
    """One checker's word on a backend from the words on each of its addresses."""
    if Health.UNHEALTHY in healths:
        return Health.UNHEALTHY
    if healths and all(h is Health.HEALTHY for h in healths):
        return Health.HEALTHY
    return Health.UNKNOWN


def _majority(words: list[Health]) -> Health | None:
    if not words:
        return None
    unhealthy = words.count(Health.UNHEALTHY)
    return Health.UNHEALTHY if 2 * unhealthy > len(words) else Health.HEALTHY

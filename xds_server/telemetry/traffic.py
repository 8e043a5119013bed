"""Controller-side traffic totals built from Envoy counters that restart.

Envoy's per-host counters (`/clusters`) start again at 0 whenever a cluster is
rebuilt, e.g. by a strategy change (docs/envoy-notes.md); some cluster counters
(`upstream_rq_5xx`, the response-time histogram) disappear with the old
cluster and come back from 0; every counter restarts with Envoy. The
`TrafficBook` turns repeated readings into totals that only grow:

- a counter's growth since the previous reading of the same proxy counts;
- a counter seen for the first time (a new proxy, a new host, a stat that was
  gone in the previous reading) counts in full: it started at 0 after that reading;
- a counter that went down restarted in between: its whole value counts;
- a host whose cluster was rebuilt since the previous reading (Envoy's
  `last_updated` changed) counts in full, even if it already grew past the old value.

What this cannot see: requests served between the last reading and a rebuild
(at most one sampling interval, see TrafficSampler). Readings are applied one
at a time, in the order they were taken.

Pure: no I/O and no clock; the caller passes the times.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from xds_server.telemetry.envoy_stats import CLUSTER_COUNTERS, RQ_TIME, TrafficReading

HOST_COUNTERS = ("rq_total", "rq_success", "rq_error")
CLUSTER_FIGURES = (*CLUSTER_COUNTERS, f"{RQ_TIME}_sum", f"{RQ_TIME}_count")
WINDOW_S = 60.0
MAX_POINTS = 2000  # bounds the window however often it is sampled
FORGET_PROXY_S = 3600.0  # last values of a proxy not read for this long are dropped

Key = tuple[str, ...]


@dataclass
class BackendTotals:
    """One backend (Envoy host, by hostname), summed over proxies and addresses."""

    rq_total: float = 0.0
    rq_success: float = 0.0
    rq_error: float = 0.0  # 5xx answers and failed connects, every attempt
    last_failure_at: float | None = None  # wall clock of the reading that saw rq_error grow

    def add(self, counter: str, amount: float) -> None:
        setattr(self, counter, getattr(self, counter) + amount)


@dataclass(frozen=True)
class Point:
    """The cluster totals at one reading; the window is made of these."""

    at: float  # monotonic
    figures: Mapping[tuple[str, str], float]  # (cluster, figure) -> total

    def total(self, figure: str, clusters: Iterable[str] | None = None) -> float:
        return sum(v for (c, f), v in self.figures.items() if f == figure and _in(c, clusters))


@dataclass
class ProxyBaseline:
    """What one proxy's counters read last: the reference for its next growth."""

    last: dict[Key, float] = field(default_factory=dict)
    built: Mapping[str, str] = field(default_factory=dict)
    read_at: float = 0.0  # the caller's clock: monotonic here, wall clock in Redis


@dataclass
class Growth:
    """What one reading adds to the totals."""

    backends: dict[tuple[str, str, str], float] = field(default_factory=dict)  # cluster, host, ctr
    clusters: dict[tuple[str, str], float] = field(default_factory=dict)  # cluster, figure
    failed: set[tuple[str, str]] = field(default_factory=set)  # (cluster, host): rq_error grew


def measure(
    reading: TrafficReading, baseline: ProxyBaseline, clusters: set[str], at: float
) -> tuple[Growth, ProxyBaseline]:
    """How much `reading` (taken at `at`) adds over `baseline`, and the next baseline.
    Pure, so a shared store can apply it with a compare-and-set (telemetry/shared.py)."""
    growth = Growth()
    rebuilt = {c for c, built in reading.built.items() if baseline.built.get(c) != built}
    seen: dict[Key, float] = {}
    for host in reading.hosts:
        if host.cluster not in clusters:
            continue
        key = (host.cluster, host.hostname, host.address)
        for counter in HOST_COUNTERS:
            value = float(host.get(counter))
            grown = _growth(baseline.last.get((*key, counter)), value, host.cluster in rebuilt)
            seen[(*key, counter)] = value
            total = (host.cluster, host.hostname, counter)
            growth.backends[total] = growth.backends.get(total, 0.0) + grown
            if counter == "rq_error" and grown > 0:
                growth.failed.add((host.cluster, host.hostname))
    for (cluster, figure), value in reading.clusters.items():
        if cluster in clusters and figure in CLUSTER_FIGURES:
            grown = _growth(baseline.last.get((cluster, figure)), value, False)
            seen[(cluster, figure)] = value
            growth.clusters[(cluster, figure)] = growth.clusters.get((cluster, figure), 0) + grown
    return growth, ProxyBaseline(seen, dict(reading.built), at)


class TrafficBook:
    """Monotonic totals per backend and per service cluster, and a window of points."""

    def __init__(self) -> None:
        self.backends: dict[tuple[str, str], BackendTotals] = {}  # (cluster, hostname)
        self.clusters: dict[tuple[str, str], float] = {}  # (cluster, figure) -> total
        self.points: deque[Point] = deque(maxlen=MAX_POINTS)
        self.first_reading_at: float | None = None  # wall clock
        self._proxies: dict[str, ProxyBaseline] = {}

    def apply(
        self, readings: Iterable[TrafficReading], clusters: set[str], at: float, wall: float
    ) -> None:
        """Count readings taken at `at` (monotonic) / `wall`; only `clusters` are counted."""
        for reading in readings:
            if reading.error is None:
                baseline = self._proxies.get(reading.node_id, ProxyBaseline())
                growth, self._proxies[reading.node_id] = measure(reading, baseline, clusters, at)
                self.add(growth, wall)
        self.mark(at, wall)
        self._forget(at)

    def add(self, growth: Growth, wall: float) -> None:
        for (cluster, hostname, counter), amount in growth.backends.items():
            totals = self.backends.setdefault((cluster, hostname), BackendTotals())
            totals.add(counter, amount)
        for backend in growth.failed:
            self.backends[backend].last_failure_at = wall
        for key, amount in growth.clusters.items():
            self.clusters[key] = self.clusters.get(key, 0) + amount

    def load(
        self,
        backends: dict[tuple[str, str], BackendTotals],
        clusters: dict[tuple[str, str], float],
        first_reading_at: float | None,
    ) -> None:
        """Take totals kept elsewhere (Redis) as this book's."""
        self.backends, self.clusters = backends, clusters
        self.first_reading_at = first_reading_at

    def mark(self, at: float, wall: float) -> None:
        """Close one round of readings: a point of the window at `at`."""
        if self.first_reading_at is None:
            self.first_reading_at = wall
        self.points.append(Point(at, dict(self.clusters)))
        while self.points[0].at < at - WINDOW_S:  # the newest point always stays
            self.points.popleft()

    def cluster_total(self, figure: str, clusters: Iterable[str] | None = None) -> float:
        return sum(v for (c, f), v in self.clusters.items() if f == figure and _in(c, clusters))

    def failed(self, clusters: Iterable[str] | None = None) -> float:
        """Requests answered with a 5xx: by a backend (after retries) or by Envoy itself.

        Envoy's own refusals (overflow, no healthy host) are 503s charged to
        upstream_rq_5xx as well, so they are not added again."""
        return self.cluster_total("upstream_rq_5xx", clusters)

    def window(self, now: float, window_s: float = WINDOW_S) -> tuple[Point, Point] | None:
        """The oldest and newest point within `window_s` of `now`; None with fewer than two."""
        inside = [p for p in self.points if p.at >= now - window_s]
        if len(inside) < 2 or inside[-1].at <= inside[0].at:
            return None
        return inside[0], inside[-1]

    def _forget(self, now: float) -> None:
        for node in [n for n, p in self._proxies.items() if now - p.read_at > FORGET_PROXY_S]:
            del self._proxies[node]


def _growth(last: float | None, value: float, rebuilt: bool) -> float:
    """How much a counter grew since its last reading (module docstring: the rules)."""
    if last is None or rebuilt or value < last:
        return value
    return value - last


def _in(cluster: str, clusters: Iterable[str] | None) -> bool:
    return clusters is None or cluster in clusters

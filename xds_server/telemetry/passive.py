"""Envoy's passive view of the backends: which proxy's outlier detection ejects
which backend, and since when.

Source: the `GET /clusters?format=json` the traffic sampler already takes of
every connected proxy (telemetry/sampler.py, every SAMPLE_INTERVAL_S and around
each cluster change), so this costs no request of its own and inherits the
reader's caps (one reading at a time, MAX_CONCURRENT_GETS, MAX_BODY_BYTES, the
read timeout). A host of a service's cluster whose `health_status` carries
`failed_outlier_check: true` is ejected on that proxy.

"Since" is the wall time of the first reading that saw the ejection: Envoy's
`/clusters` gives no ejection time, so it is late by at most one sampler
interval. Envoy's outlier event log (`outlier_detection.event_log_path`) has
exact times, but it is a file on the proxy's host, which the controller cannot
read for an Envoy elsewhere; the admin reading works for every proxy the
telemetry already reads.

Rules (tests/telemetry/test_passive.py pins them):
- a proxy that is read and no longer ejects a backend drops its entry at once;
- a connected proxy that could not be read keeps its entries as last seen (an
  admin blip is not a recovery, nor a new ejection);
- a proxy that is no longer connected (absent from the reading) drops its entries;
- each entry that appears counts once in `seen` (Prometheus' counter), and the
  first proxy to eject a backend calls `on_first` (the controller's early probe).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from xds_server.model.intent import Service
from xds_server.telemetry.envoy_stats import ProxyReading

EJECTED_FLAG = "failed_outlier_check"
# backend name -> node id -> wall time of the first reading that saw it ejected
Ejections = dict[str, dict[str, float]]


@dataclass(frozen=True)
class Ejection:
    """One proxy ejecting one backend."""

    node_id: str
    since: float  # wall clock (epoch seconds)


class PassiveView:
    """The latest ejections per backend and proxy, kept from reading to reading."""

    def __init__(self, on_first: Callable[[str], object] | None = None) -> None:
        self._ejections: Ejections = {}
        self._seen: dict[tuple[str, str], int] = {}  # (service, backend) -> entries appeared
        self._on_first = on_first

    def observe(
        self, readings: Sequence[ProxyReading], services: Sequence[Service], wall: float
    ) -> None:
        """Take one sampler reading (every connected proxy) made at `wall`."""
        service_of = {b.name: s.name for s in services for b in s.backends}
        updated: Ejections = {}
        for reading in readings:
            for name, since in self._of_proxy(reading, service_of, wall).items():
                updated.setdefault(name, {})[reading.node_id] = since
        self._count_new(updated, service_of)
        self._ejections = updated
        # Counters of backends gone from the intent go too: the label set stays bounded.
        self._seen = {k: n for k, n in self._seen.items() if service_of.get(k[1]) == k[0]}

    def _of_proxy(
        self, reading: ProxyReading, service_of: Mapping[str, str], wall: float
    ) -> dict[str, float]:
        """backend -> since, for the backends this proxy ejects now."""
        if reading.error is not None:  # unreadable: as last seen
            return {
                name: nodes[reading.node_id]
                for name, nodes in self._ejections.items()
                if reading.node_id in nodes and name in service_of
            }
        return {
            host.hostname: self._ejections.get(host.hostname, {}).get(reading.node_id, wall)
            for host in reading.hosts
            if host.health.get(EJECTED_FLAG) and service_of.get(host.hostname) == host.cluster
        }

    def _count_new(self, updated: Ejections, service_of: Mapping[str, str]) -> None:
        for name, nodes in updated.items():
            before = self._ejections.get(name, {})
            appeared = len(nodes.keys() - before.keys())
            if not appeared:
                continue
            key = (service_of[name], name)
            self._seen[key] = self._seen.get(key, 0) + appeared
            if not before and self._on_first is not None:
                self._on_first(name)

    def ejected_by(self, backend: str) -> list[Ejection]:
        """The proxies ejecting `backend` now, by node id."""
        nodes = self._ejections.get(backend, {})
        return [Ejection(node, nodes[node]) for node in sorted(nodes)]

    def ejected(self, backend: str) -> bool:
        """Some proxy's outlier detection ejects `backend` (as of the latest reading)."""
        return bool(self._ejections.get(backend))

    def ejecting(self, services: Iterable[Service]) -> list[tuple[str, str, int]]:
        """(service, backend, proxies ejecting it) for every backend of `services`."""
        return [
            (s.name, b.name, len(self._ejections.get(b.name, {})))
            for s in services
            for b in s.backends
        ]

    def seen(self, services: Iterable[Service]) -> list[tuple[str, str, int]]:
        """(service, backend, ejections seen since start) for every backend of `services`."""
        return [
            (s.name, b.name, self._seen.get((s.name, b.name), 0))
            for s in services
            for b in s.backends
        ]

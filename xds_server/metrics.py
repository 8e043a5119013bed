"""Controller metrics for Prometheus.

The registry is passed in (style.md, item 10). Events are counted by an
XdsObserver; state (connected proxies, open streams, generation) is read by a
collector at scrape time, so nothing can drift from the truth.
Push-to-ACK is measured to the ACK, not to the send.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from xds_server.resources import SHORT_NAMES
from xds_server.xds.observe import StreamInfo

PREFIX = "xds_server"
CONVERGENCE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 15)
BUILD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)


def _short(type_url: str) -> str:
    return SHORT_NAMES.get(type_url, "other")


class XdsMetrics:
    """Counts protocol events; an XdsObserver."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.responses = Counter(
            f"{PREFIX}_xds_responses", "xDS responses sent", ["type"], registry=registry
        )
        self.acks = Counter(f"{PREFIX}_xds_acks", "xDS ACKs received", ["type"], registry=registry)
        self.nacks = Counter(
            f"{PREFIX}_xds_nacks",
            "xDS NACKs received (config rejected)",
            ["type"],
            registry=registry,
        )
        self.stale = Counter(
            f"{PREFIX}_xds_stale_nonces",
            "requests ignored for carrying a stale nonce",
            ["type"],
            registry=registry,
        )
        self.streams = Counter(
            f"{PREFIX}_xds_streams_opened", "xDS streams opened", ["kind"], registry=registry
        )
        self.convergence = Histogram(
            f"{PREFIX}_xds_push_to_ack_seconds",
            "time from sending a response to receiving its ACK",
            ["type"],
            buckets=CONVERGENCE_BUCKETS,
            registry=registry,
        )
        self._sent_at: dict[tuple[int, str], float] = {}

    def stream_opened(self, info: StreamInfo) -> None:
        self.streams.labels(info.kind).inc()

    def stream_closed(self, info: StreamInfo) -> None:
        for key in [k for k in self._sent_at if k[0] == info.stream_id]:
            del self._sent_at[key]

    def response_sent(
        self, info: StreamInfo, type_url: str, version: str, names: Sequence[str], generation: int
    ) -> None:
        self.responses.labels(_short(type_url)).inc()
        self._sent_at[(info.stream_id, type_url)] = time.monotonic()

    def acked(self, info: StreamInfo, type_url: str, version: str, generation: int) -> None:
        self.acks.labels(_short(type_url)).inc()
        sent = self._sent_at.pop((info.stream_id, type_url), None)
        if sent is not None:
            self.convergence.labels(_short(type_url)).observe(time.monotonic() - sent)

    def nacked(
        self, info: StreamInfo, type_url: str, version: str, message: str, generation: int
    ) -> None:
        self.nacks.labels(_short(type_url)).inc()
        self._sent_at.pop((info.stream_id, type_url), None)

    def up_to_date(self, info: StreamInfo, type_url: str, generation: int) -> None:
        pass

    def stale_nonce(self, info: StreamInfo, type_url: str) -> None:
        self.stale.labels(_short(type_url)).inc()


class PublishMetrics:
    """Snapshot builds: how long, and how many."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.build = Histogram(
            f"{PREFIX}_snapshot_build_seconds",
            "translate + serialize + check of one snapshot",
            buckets=BUILD_BUCKETS,
            registry=registry,
        )

    def observe_build(self, seconds: float) -> None:
        self.build.observe(seconds)


@dataclass(frozen=True)
class StateReaders:
    """Where the scrape-time collector reads the controller's state."""

    generation: Callable[[], int]
    connected_proxies: Callable[[], int]
    open_streams: Callable[[], int]
    nacked_proxies: Callable[[], int]


class StateCollector(Collector):
    def __init__(self, readers: StateReaders) -> None:
        self._readers = readers

    def collect(self) -> Iterator[GaugeMetricFamily]:
        r = self._readers
        yield GaugeMetricFamily(
            f"{PREFIX}_snapshot_generation", "generation of the published snapshot", r.generation()
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_connected_proxies", "proxies with an open xDS stream", r.connected_proxies()
        )
        yield GaugeMetricFamily(f"{PREFIX}_xds_open_streams", "open xDS streams", r.open_streams())
        yield GaugeMetricFamily(
            f"{PREFIX}_proxies_with_nack",
            "connected proxies whose latest response of some type was rejected",
            r.nacked_proxies(),
        )

"""Reading every connected Envoy's counters into the traffic totals: every
SAMPLE_INTERVAL_S, before a cluster change, and when the metrics are asked for.

The totals live in a `Ledger`: `MemoryLedger` for one controller, or
`telemetry.shared.RedisLedger` so that replicas count each request once
(docs/replicas.md)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from xds_server.model.intent import Intent
from xds_server.telemetry.envoy_stats import TrafficReading, read_traffic_of
from xds_server.telemetry.traffic import TrafficBook
from xds_server.xds.status import ProxyRegistry

log = logging.getLogger("xds_server.metrics")


SAMPLE_INTERVAL_S = 2.0


class Ledger(Protocol):
    """Where the totals are kept; `book` holds them (or a copy) for the report."""

    book: TrafficBook

    async def apply(
        self, readings: Sequence[TrafficReading], clusters: set[str], at: float, wall: float
    ) -> None:
        """Count readings taken at `at` (monotonic) / `wall`; never raises for an outage."""


class MemoryLedger:
    """The totals of this process only."""

    def __init__(self) -> None:
        self.book = TrafficBook()

    async def apply(
        self, readings: Sequence[TrafficReading], clusters: set[str], at: float, wall: float
    ) -> None:
        self.book.apply(readings, clusters, at, wall)


class TrafficSampler:
    """Reads every connected proxy into one ledger; readings never overlap."""

    def __init__(
        self,
        proxies: ProxyRegistry,
        intent: Callable[[], Intent],
        interval_s: float = SAMPLE_INTERVAL_S,
        ledger: Ledger | None = None,
    ) -> None:
        self.ledger: Ledger = ledger or MemoryLedger()
        self.readings: list[TrafficReading] = []  # the latest, one per proxy read
        self._proxies, self._intent, self._interval_s = proxies, intent, interval_s
        # Readings must be applied in the order they were taken (traffic.py).
        self._lock = asyncio.Lock()

    @property
    def book(self) -> TrafficBook:
        return self.ledger.book

    async def sample(self) -> list[TrafficReading]:
        """Read every connected proxy now (bounded by the read timeout) and count it."""
        async with self._lock:
            readings = await read_traffic_of(self._proxies.connected())
            clusters = {s.name for s in self._intent().services}
            await self.ledger.apply(readings, clusters, time.monotonic(), time.time())
            self.readings = readings
            return readings

    async def run(self) -> None:
        while True:
            try:
                await self.sample()
            except Exception:  # metrics must never take the controller down
                log.exception("traffic sample failed")
            await asyncio.sleep(self._interval_s)

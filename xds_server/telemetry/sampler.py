"""The traffic sampler: every connected proxy's counters, read into one ledger.

Readings are taken every SAMPLE_INTERVAL_S, when the metrics API asks, and
before Envoy rebuilds a cluster: a rebuild restarts the cluster's per-host
counters (traffic.py), so the publisher calls `before_cluster_change` before it
publishes a snapshot that changes clusters, whatever made the change (the
admin API, a config reload, another replica through Redis).

A change made through the admin API reads its proxies once, before it changes
anything: `covering_change` starts that reading, which Envoy answers while the
change is computed and checked; the change is stored only once the reading is
complete (`store.base.edit`'s `ready`), and the answer reports its `cx_active`
as active_connections_before. The same reading stands for the publisher's
pre-change reading, so the hook does not read again, on three conditions:
- no other cluster change's hook ran while or since it started (such a
  reading may precede that change's rebuild, and could not stand for ours);
- it started at most MAX_COVER_AGE_S before the hook runs;
- the admin change that took it is still in progress.
Otherwise the hook reads, as before. What a rebuild can lose is the same in
kind as with the hook's own reading: requests served between the end of the
last reading and the rebuild, i.e. during the store write, the publish and
Envoy's apply (about a millisecond on one host; never more than
MAX_COVER_AGE_S after the reading began, plus the publish).

Why this, and not Envoy pushing its stats (`envoy.stat_sinks.metrics_service`,
gRPC MetricsService/StreamMetrics): a sink is flushed every
stats_flush_interval (or only on an admin request, stats_flush_on_admin), not
at the moment before a rebuild, so a pushed reading is up to one interval old
and the requests of that interval would be lost with the old cluster unless
every change waited for the next flush, which costs more than the read it
saves. Per-host counters reach a sink only with per-endpoint stats turned on in
every cluster (TrackClusterStats.per_endpoint_stats), and active_connections_after
must be measured after the ACK, which a push lags by up to an interval. The
pull stays, made once per admin change, over a kept connection
(envoy_stats.AdminReader).

Readings are applied in the order they were taken (one lock), never overlap.
The totals live in a `Ledger`: `MemoryLedger` for one controller, or
`telemetry.shared.RedisLedger` so that replicas count each request once
(docs/replicas.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from xds_server.model.intent import Intent
from xds_server.telemetry.envoy_stats import AdminReader, TrafficReading
from xds_server.telemetry.models import route_keys
from xds_server.telemetry.passive import PassiveView
from xds_server.telemetry.traffic import TrafficBook
from xds_server.xds.status import ProxyRegistry

log = logging.getLogger("xds_server.metrics")


SAMPLE_INTERVAL_S = 2.0
# How old (from its start) an admin change's reading may be and still stand for
# the pre-change reading: translation, store write and publish take ~1 ms; a
# publisher held off longer than this reads again.
MAX_COVER_AGE_S = 0.05
# Loop turns an admin reading gets to put its requests on the wire (aiohttp takes
# about three with a kept connection) before the caller's CPU work: Envoy answers
# while the change is checked. Measured A/B on strategy PUTs: 0 turns 4.1-4.3 ms,
# 3 turns 3.9-4.0 ms, 6 the same as 3. Fewer turns only lose that overlap, never
# a reading.
SEND_TURNS = 3


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


@dataclass(frozen=True)
class Cover:
    """A reading taken for an admin change in progress (module docstring)."""

    announced: int  # the hook's count of starts and ends when the reading started
    started: float  # monotonic
    reading: asyncio.Task[list[TrafficReading]]


class TrafficSampler:
    """Reads every connected proxy into one ledger; readings never overlap."""

    def __init__(
        self,
        proxies: ProxyRegistry,
        intent: Callable[[], Intent],
        interval_s: float = SAMPLE_INTERVAL_S,
        ledger: Ledger | None = None,
        passive: PassiveView | None = None,
    ) -> None:
        self.ledger: Ledger = ledger or MemoryLedger()
        # Envoy's outlier ejections, taken from the same readings (telemetry/passive.py).
        self.passive = passive or PassiveView()
        self.readings: list[TrafficReading] = []  # the latest, one per proxy read
        self.reader = AdminReader()  # kept connections to the proxies' admins
        self.hook_reads = 0  # pre-change readings the hook took itself (not covered)
        self._proxies, self._intent, self._interval_s = proxies, intent, interval_s
        # Readings must be applied in the order they were taken (traffic.py).
        self._lock = asyncio.Lock()
        self._announced = 0  # before_cluster_change's starts and ends
        self._covers: dict[object, Cover] = {}

    @property
    def book(self) -> TrafficBook:
        return self.ledger.book

    async def sample(self) -> list[TrafficReading]:
        """Read every connected proxy now (bounded by the read timeout) and count it."""
        async with self._lock:
            readings = await self.reader.traffic(self._proxies.connected())
            intent = self._intent()
            # The services' clusters and the front door's per-model routes.
            clusters = {s.name for s in intent.services} | route_keys(intent)
            wall = time.time()
            await self.ledger.apply(readings, clusters, time.monotonic(), wall)
            self.passive.observe(readings, intent.services, wall)
            self.readings = readings
            return readings

    @contextlib.asynccontextmanager
    async def covering_change(self) -> AsyncIterator[Awaitable[list[TrafficReading]]]:
        """A reading started now, counted, and standing for the pre-change reading of
        the cluster change made inside the `async with` (module docstring: when).

        It runs while the caller computes and checks its change; the caller awaits
        what it yields before it stores the change and for the figures, the hook
        awaits it (done by then) before the rebuild."""
        reading = asyncio.create_task(self._sample_for_change())
        token, cover = object(), Cover(self._announced, time.monotonic(), reading)
        self._covers[token] = cover
        try:
            for _ in range(SEND_TURNS):
                await asyncio.sleep(0)
            yield asyncio.shield(reading)
        finally:
            self._covers.pop(token, None)
            await _finished(reading)  # never left running, whatever the caller did

    async def _sample_for_change(self) -> list[TrafficReading]:
        """sample(); should counting fail (a bug: outages are reported as data), the
        change still goes ahead with its figures measured, as it would if the hook's
        own reading failed."""
        try:
            return await self.sample()
        except Exception:
            log.exception("counting the traffic reading before a change failed")
            return await self.reader.traffic(self._proxies.connected())

    async def before_cluster_change(self) -> None:
        """The publisher's hook: make sure a reading precedes the rebuild."""
        cover = next((c for c in self._covers.values() if self._covers_now(c)), None)
        self._announced += 1  # every cover taken so far is used up or too old
        self._covers.clear()
        try:
            if cover is not None and await _finished(cover.reading):
                return
            self.hook_reads += 1
            await self.sample()
        finally:
            self._announced += 1  # a reading begun meanwhile may precede this rebuild

    def _covers_now(self, cover: Cover) -> bool:
        fresh = time.monotonic() - cover.started <= MAX_COVER_AGE_S
        return fresh and cover.announced == self._announced

    async def run(self) -> None:
        while True:
            try:
                await self.sample()
            except Exception:  # metrics must never take the controller down
                log.exception("traffic sample failed")
            await asyncio.sleep(self._interval_s)

    async def aclose(self) -> None:
        """Close the kept connections (the controller's stop)."""
        await self.reader.aclose()


async def _finished(reading: asyncio.Task[list[TrafficReading]]) -> bool:
    """Wait for `reading` (a cancelled waiter leaves it running); True if it succeeded."""
    await asyncio.wait([reading])
    return not reading.cancelled() and reading.exception() is None

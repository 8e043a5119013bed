"""Failover events: when traffic moved off a failing backend, and how long it took.

Two sources (the OpenAPI description of GET /api/v1/router/metrics says the same):

- The health checker: a verdict change to "unhealthy" of a backend that was
  taking traffic (not draining) while at least one proxy was connected. Its
  failover time runs from the verdict change to the moment every connected
  proxy ACKed the first snapshot published after it, which is the EDS update
  that takes the host out. It is successful when every proxy ACKed within
  ACK_TIMEOUT_S and some other backend of the service could take the traffic
  (not unhealthy, not draining). Detection time (probe interval, thresholds)
  is not part of it: that is the health policy.
- The resilience experiments (POST .../failover/test, .../circuit-breaker/test):
  one event each. Failover test: successful when Envoy took the primary out
  and a backup served; time = its failover_time_ms. Circuit-breaker test:
  successful when the circuit opened and the backup took the traffic; time =
  its time_to_open_ms.

Why "the first snapshot published after it" is the right one: the verdict is
written, and the generation read, in one synchronous step on the event loop,
and a snapshot is built and installed without yielding, so every snapshot of
a later generation was translated from the new verdict.

Where events are kept: an `EventLog`, in memory (`MemoryEventLog`) or, with a
Redis store, in Redis (xds_server/telemetry/shared.py), so they survive a restart.
With several replicas, every replica that has proxies connected times the same
verdict change for its own proxies; the events carry one id (backend and the
time of the verdict change, identical on every replica since verdicts are
shared), and `merge` makes them one event: successful only if every replica's
proxies ACKed in time and a backup existed, timed to the last ACK.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from xds_server.cache import SnapshotCache
from xds_server.health.verdict import ProbeResult
from xds_server.model.intent import Health, Intent, Service
from xds_server.timefmt import iso_utc
from xds_server.xds.status import ProxyRegistry

log = logging.getLogger("xds_server.failover")

ACK_TIMEOUT_S = 10.0
MAX_IN_FLIGHT = 64  # verdict changes being timed at once; more are dropped (and logged)
KEPT_EVENTS = 1000
HEALTH_CHECK, FAILOVER_TEST, CIRCUIT_BREAKER_TEST = (
    "health_check",
    "failover_test",
    "circuit_breaker_test",
)


@dataclass(frozen=True)
class FailoverEvent:
    source: str
    backend: str
    at: float  # wall clock: the last proxy's ACK, or the experiment's end
    successful: bool
    failover_time_ms: float | None
    # The same failover recorded by several replicas shares one id (`merge`; "" = never merged).
    id: str = ""

    def as_json(self) -> dict[str, object]:
        return {
            "source": self.source,
            "backend": self.backend,
            "at": iso_utc(self.at),
            "successful": self.successful,
            "failover_time_ms": self.failover_time_ms,
        }


class EventLog(Protocol):
    """Where failover events are kept (memory, or Redis to survive restarts)."""

    def add(self, event: FailoverEvent) -> None:
        """Keep `event`; never blocks and never raises (a shared log writes later)."""

    async def events(self) -> list[FailoverEvent]:
        """Every kept event, merged by id."""

    async def run(self) -> None:
        """Background work until cancelled (may return at once)."""


class MemoryEventLog:
    """The last KEPT_EVENTS events of this process."""

    def __init__(self) -> None:
        self._events: deque[FailoverEvent] = deque(maxlen=KEPT_EVENTS)

    def add(self, event: FailoverEvent) -> None:
        self._events.append(event)

    async def events(self) -> list[FailoverEvent]:
        return merge(self._events)

    async def run(self) -> None:
        pass


def merge(events: Iterable[FailoverEvent]) -> list[FailoverEvent]:
    """One event per id, in first-seen order: several replicas timing one verdict
    change for their own proxies make one failover, done when the last proxy ACKed."""
    merged: dict[str, FailoverEvent] = {}
    single: list[FailoverEvent] = []
    for event in events:
        if not event.id:
            single.append(event)
            continue
        seen = merged.get(event.id)
        merged[event.id] = event if seen is None else _combined(seen, event)
    return [*single, *merged.values()]


def _combined(a: FailoverEvent, b: FailoverEvent) -> FailoverEvent:
    if a == b:
        return a  # the same record read twice (a write in flight while reading)
    times = (a.failover_time_ms, b.failover_time_ms)
    return FailoverEvent(
        source=a.source,
        backend=a.backend,
        at=max(a.at, b.at),
        successful=a.successful and b.successful,
        failover_time_ms=None if None in times else max(t for t in times if t is not None),
        id=a.id,
    )


@dataclass(frozen=True)
class _Pending:
    backend: str
    backup_available: bool
    since: float  # monotonic, at the verdict change
    generation: int  # the published generation at that moment
    changed_at: float  # wall clock of the verdict change, the same on every replica


class FailoverTracker:
    """A health observer that times verdict-driven failovers to the last ACK."""

    def __init__(
        self,
        cache: SnapshotCache,
        proxies: ProxyRegistry,
        intent: Callable[[], Intent],
        verdicts: Callable[[], dict[str, Health]],
        on_event: Callable[[FailoverEvent], None] | None = None,
    ) -> None:
        self.events: deque[FailoverEvent] = deque(maxlen=KEPT_EVENTS)  # timed here
        self._on_event = on_event
        self._cache, self._proxies = cache, proxies
        self._intent, self._verdicts = intent, verdicts
        self._pending: deque[_Pending] = deque()
        self._wake = asyncio.Event()
        self._in_flight = 0

    def probed(self, name: str, result: ProbeResult) -> None:
        pass

    def verdict_changed(
        self, name: str, previous: Health, current: Health, result: ProbeResult
    ) -> None:
        if current is not Health.UNHEALTHY or not self._proxies.connected():
            return
        service = _service_of(self._intent(), name)
        backend = service.backend(name) if service is not None else None
        if service is None or backend is None or backend.draining:
            return  # a draining backend takes no traffic: nothing moves
        if self._in_flight + len(self._pending) >= MAX_IN_FLIGHT:
            log.warning("failover of %s not timed: %d already in flight", name, MAX_IN_FLIGHT)
            return
        backup = _backup_available(service, name, self._verdicts())
        pending = _Pending(name, backup, time.monotonic(), self._cache.generation, result.at)
        self._pending.append(pending)
        self._wake.set()

    async def run(self) -> None:
        """Time every pending failover concurrently, until cancelled."""
        async with asyncio.TaskGroup() as tasks:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._pending:
                    self._in_flight += 1
                    tasks.create_task(self._time(self._pending.popleft()))

    async def _time(self, pending: _Pending) -> None:
        try:
            acked = await self._acked_by_all(pending)
        except Exception:  # metrics must never take the controller down
            log.exception("timing the failover of %s failed", pending.backend)
            return
        finally:
            self._in_flight -= 1
        took = time.monotonic() - pending.since
        event = FailoverEvent(
            source=HEALTH_CHECK,
            backend=pending.backend,
            at=time.time(),
            successful=acked and pending.backup_available,
            failover_time_ms=round(took * 1000, 1) if acked else None,
            id=event_id(HEALTH_CHECK, pending.backend, pending.changed_at),
        )
        self.events.append(event)
        if self._on_event is not None:
            self._on_event(event)
        log.info(
            "failover off %s %s in %.1f ms",
            pending.backend,
            "done" if event.successful else "failed",
            took * 1000,
            extra={"backend": pending.backend, "successful": event.successful},
        )

    async def _acked_by_all(self, pending: _Pending) -> bool:
        deadline = pending.since + ACK_TIMEOUT_S
        try:
            async with asyncio.timeout(ACK_TIMEOUT_S):
                snapshot = await self._cache.wait_for_generation(pending.generation + 1)
        except TimeoutError:
            return False
        remaining = max(0.0, deadline - time.monotonic())
        failures = await self._proxies.wait_until_applied(snapshot.generation, remaining)
        return not failures


def _service_of(intent: Intent, name: str) -> Service | None:
    return next((s for s in intent.services if s.backend(name) is not None), None)


def _backup_available(service: Service, name: str, verdicts: dict[str, Health]) -> bool:
    return any(
        b.name != name and not b.draining and verdicts.get(b.name) is not Health.UNHEALTHY
        for b in service.backends
    )


# --- ids -------------------------------------------------------------------------------------


def event_id(source: str, backend: str, at: float) -> str:
    """Identical for the same failover wherever it is recorded (`merge`)."""
    return f"{source}:{backend}@{at!r}"


def summary(events: Iterable[FailoverEvent], recent: int = 10) -> dict[str, Any]:
    """The spec's failover_events block, plus counts by source and the latest events."""
    ordered = sorted(events, key=lambda e: e.at)
    times = [e.failover_time_ms for e in ordered if e.failover_time_ms is not None]
    by_source = {s: 0 for s in (HEALTH_CHECK, FAILOVER_TEST, CIRCUIT_BREAKER_TEST)}
    for event in ordered:
        by_source[event.source] += 1
    return {
        "total_failovers": len(ordered),
        "successful_failovers": sum(1 for e in ordered if e.successful),
        "avg_failover_time_ms": round(sum(times) / len(times), 1) if times else None,
        "last_failover": iso_utc(ordered[-1].at) if ordered else None,
        "by_source": by_source,
        "recent": [e.as_json() for e in ordered[-recent:]],
    }

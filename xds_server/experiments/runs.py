"""The two experiments: what they do, in order, and what they measure."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from xds_server.errors import Conflict
from xds_server.experiments.faults import choose_failure, ejection_time, ejection_time_set, failing
from xds_server.experiments.lab import (
    CONFIRM_PROBES,
    Counters,
    Lab,
    LabPorts,
    Limits,
    Probe,
    Traffic,
    circuit_state,
    counters,
    delta,
    hosts,
    is_ejected,
    named,
    open_lab,
    resolve,
    running,
    target_back,
    target_out,
    wait_until,
)
from xds_server.model.intent import Service
from xds_server.telemetry.envoy_stats import HostStats
from xds_server.telemetry.failover import (
    CIRCUIT_BREAKER_TEST,
    FAILOVER_TEST,
    FailoverEvent,
    event_id,
)

# --- measures ---------------------------------------------------------------------------


def upstream_failures(before: Counters, after: Counters, name: str) -> int:
    """Requests the backend failed. Envoy's per-host rq_error counts 5xx answers
    and failed connects alike (cx_connect_fail would count the latter twice)."""
    return delta(before, after, name, "rq_error")


def busiest_other(before: Counters, after: Counters, service: Service, name: str) -> str | None:
    """The backend other than `name` that took the most requests between the two reads."""
    taken = {b.name: delta(before, after, b.name, "rq_total") for b in service.backends}
    others = {n: count for n, count in taken.items() if n != name and count > 0}
    return max(sorted(others), key=others.__getitem__) if others else None


def lost(probes: Sequence[Probe]) -> list[Probe]:
    return [p for p in probes if not p.ok]


def remember(ports: LabPorts, source: str, backend: str, ok: bool, time_s: float | None) -> None:
    """The run's failover event: successful when traffic moved to a backup."""
    at = time.time()
    ports.registry.record(
        FailoverEvent(source, backend, at, ok, ms(time_s), event_id(source, backend, at))
    )


def ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _ejected(name: str) -> Callable[[Sequence[HostStats]], bool]:
    return lambda found: any(is_ejected(h) for h in named(found, name))


def _readmitted(name: str) -> Callable[[Sequence[HostStats]], bool]:
    return lambda found: bool(named(found, name)) and not _ejected(name)(found)


# --- the circuit-breaker experiment --------------------------------------------------------


@dataclass(frozen=True)
class Trip:
    """What happened between making the backend fail and its readmission."""

    failure_mode: str
    failures: int
    ejected_after_s: float | None
    recovered_after_s: float | None  # from the ejection to Envoy readmitting the host
    backup: str | None
    failover_activated: bool
    probes: tuple[Probe, ...]


async def circuit_breaker_test(ports: LabPorts, name: str, limits: Limits) -> dict[str, Any]:
    """Fail the backend until Envoy ejects it, see the backup serve, undo, time the readmission."""
    started = time.monotonic()
    intent = ports.intent.intent
    service, target = resolve(intent, name)
    seconds = ejection_time(intent, limits)
    async with open_lab(ports, "circuit-breaker", service, target, limits) as the:
        initial = circuit_state(await hosts(the), target.name)
        async with ejection_time_set(the, seconds):
            trip = await trip_and_recover(the, limits)
        final = circuit_state(await hosts(the), target.name)
    opened = trip.ejected_after_s is not None
    remember(
        ports,
        CIRCUIT_BREAKER_TEST,
        target.name,
        opened and trip.failover_activated,
        trip.ejected_after_s,
    )
    return {
        "circuit_breaker_test": {
            "backend": name,
            "target_backend": target.name,
            "test_type": "failure_simulation",
            "failure_mode": trip.failure_mode,
            "initial_state": initial,
            "failure_threshold": intent.policies.circuit_breaker_threshold,
            "simulated_failures": trip.failures,
            "circuit_breaker_triggered": trip.ejected_after_s is not None,
            "new_state": "open" if trip.ejected_after_s is not None else "closed",
            "failover_activated": trip.failover_activated,
            "backup_backend": trip.backup,
            "time_to_open_ms": ms(trip.ejected_after_s),
            "test_duration_ms": ms(time.monotonic() - started),
            "recovery_time_ms": ms(trip.recovered_after_s),
            "final_state": final,
            "ejection_time_s": seconds,
            "configured_ejection_time_s": intent.policies.circuit_breaker_timeout_s,
            "requests_sent": len(trip.probes),
            "requests_lost": len(lost(trip.probes)),
            "temporary_changes": the.temporary_changes,
            "proxy": the.proxy.node_id,
        }
    }


async def trip_and_recover(the: Lab, limits: Limits) -> Trip:
    name = the.target.name
    failure = await choose_failure(the, limits.failure)
    traffic = Traffic(the.traffic, the.probe_url())
    before = await counters(the)
    failed_at = time.monotonic()
    async with failing(failure):
        async with running(traffic, limits.concurrency):
            ejected_at = await wait_until(the, _ejected(name))
        at_ejection = await counters(the)
        confirm = await traffic.send(CONFIRM_PROBES) if ejected_at is not None else []
        after_confirm = await counters(the)
    recovered_at = await wait_until(the, _readmitted(name)) if ejected_at is not None else None
    backup = busiest_other(at_ejection, after_confirm, the.service, name)
    untouched = delta(at_ejection, after_confirm, name, "rq_total") == 0
    return Trip(
        failure_mode=failure.mode,
        failures=upstream_failures(before, at_ejection, name),
        ejected_after_s=None if ejected_at is None else ejected_at - failed_at,
        recovered_after_s=None
        if recovered_at is None or ejected_at is None
        else recovered_at - ejected_at,
        backup=backup,
        failover_activated=bool(confirm) and not lost(confirm) and untouched and backup is not None,
        probes=tuple(traffic.probes),
    )


# --- the failover experiment -----------------------------------------------------------------

WARMUP_S = 0.2  # traffic flows normally before the failure
HOLD_S = 0.5  # traffic runs on the backup before the primary is repaired


@dataclass(frozen=True)
class Failover:
    failure_mode: str
    failed_at: float
    out_at: float | None  # Envoy took the primary out of rotation
    restored_at: float
    serving_at: float | None  # the primary took requests again
    backup: str | None
    retried_failures: int
    probes: tuple[Probe, ...]


async def failover_test(ports: LabPorts, name: str, limits: Limits) -> dict[str, Any]:
    """Fail the primary under continuous traffic; measure the switch, the loss, the way back."""
    started = time.monotonic()
    intent = ports.intent.intent
    service, primary = resolve(intent, name)
    if len(service.backends) < 2:
        raise Conflict(
            f"service {service.name!r} has one backend: there is nothing to fail over to"
        )
    seconds = ejection_time(intent, limits)
    async with (
        open_lab(ports, "failover", service, primary, limits) as the,
        ejection_time_set(the, seconds),
    ):
        run = await fail_over_and_back(the, limits)
    failed = lost(run.probes)
    switch_s = None if run.out_at is None else run.out_at - run.failed_at
    switched = run.out_at is not None and run.backup is not None
    remember(ports, FAILOVER_TEST, primary.name, switched, switch_s)
    return {
        "failover_test": {
            "primary_backend": primary.name,
            "backup_backend": run.backup,
            "failure_simulation": True,
            "failure_mode": run.failure_mode,
            "failover_triggered": run.out_at is not None,
            "failover_time_ms": ms(switch_s),
            "requests_during_failover": during(run.probes, run.failed_at, run.out_at),
            "requests_lost": len(failed),
            "requests_total": len(run.probes),
            "upstream_failures_retried": run.retried_failures,
            "recovery_successful": run.serving_at is not None,
            "recovery_time_ms": ms(
                None if run.serving_at is None else run.serving_at - run.restored_at
            ),
            "total_downtime_ms": ms(downtime(failed)),
            "test_duration_ms": ms(time.monotonic() - started),
            "temporary_changes": the.temporary_changes,
            "proxy": the.proxy.node_id,
        }
    }


async def fail_over_and_back(the: Lab, limits: Limits) -> Failover:
    name = the.target.name
    failure = await choose_failure(the, limits.failure)
    traffic = Traffic(the.traffic, the.probe_url())
    async with running(traffic, limits.concurrency):
        await asyncio.sleep(min(WARMUP_S, the.remaining()))
        at_failure = await counters(the)
        # Taken before start(): the failure may be live before start() returns
        # (a refused port waits for the ACK), so figures stay upper bounds.
        failed_at = time.monotonic()
        async with failing(failure):
            out_at = await wait_until(the, target_out(name))
            if out_at is not None:
                await asyncio.sleep(min(HOLD_S, the.remaining()))
            at_restore = await counters(the)
        restored_at = time.monotonic()
        serving_at = await wait_until(the, _serving_again(name, at_restore))
    return Failover(
        failure_mode=failure.mode,
        failed_at=failed_at,
        out_at=out_at,
        restored_at=restored_at,
        serving_at=serving_at,
        backup=busiest_other(at_failure, at_restore, the.service, name),
        retried_failures=upstream_failures(at_failure, at_restore, name),
        probes=tuple(traffic.probes),
    )


def _serving_again(name: str, since: Counters) -> Callable[[Sequence[HostStats]], bool]:
    def check(found: Sequence[HostStats]) -> bool:
        now = {(h.hostname, h.address): h for h in found}
        return target_back(name)(found) and delta(since, now, name, "rq_success") > 0

    return check


def during(probes: Sequence[Probe], start: float, end: float | None) -> int:
    """Client requests started while the failover was under way."""
    if end is None:
        return 0
    return sum(1 for p in probes if start <= p.started <= end)


def downtime(failed: Sequence[Probe]) -> float:
    """Client-visible downtime: from the first failed request's start to the last one's end."""
    if not failed:
        return 0.0
    return max(p.ended for p in failed) - min(p.started for p in failed)

"""The HDS delegation (health/delegation.py) between a real HDS server on loopback
(clients speaking the protocol as Envoy does) and a real HealthChecker whose own
probes are counted: who gets which backends, what a report does to the verdict,
what is ignored, and what a stopping checker sends."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator

import pytest
from envoy.config.core.v3 import health_check_pb2

from tests.factories import FAST_POLICY, one_service, passed
from tests.hds_support import HdsCall, HdsServer, read, report_of
from tests.xds.conftest import poll
from xds_server.dns.memory import MemoryResolver
from xds_server.dns.refresher import DnsRefresher
from xds_server.health.checker import HealthChecker
from xds_server.health.delegation import Delegation
from xds_server.health.verdict import ProbeResult
from xds_server.model.intent import Backend, Health
from xds_server.store.memory import MemoryStore

A = Backend("svc-a", "127.0.0.1", 7001)
B = Backend("svc-b", "127.0.0.1", 7002)
POLICY = dataclasses.replace(FAST_POLICY, interval_s=0.2, timeout_s=0.1)
# Reports go stale after three of these (0.9 s): far more than a stalled loop on a
# busy machine, so the reports written every 0.1 s below never lapse by accident.
REPORT_S = 0.3


@dataclasses.dataclass
class Rig:
    server: HdsServer
    delegation: Delegation
    checker: HealthChecker
    verdicts: dict[str, Health]
    probed: list[str]


@contextlib.asynccontextmanager
async def running(checker: HealthChecker) -> AsyncIterator[asyncio.Task[None]]:
    """The checker's run() for the block; cancelled and awaited at its end, whatever."""
    task = asyncio.create_task(checker.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    server = await HdsServer().start()
    store = MemoryStore(one_service(A, B))
    delegation = Delegation(
        server.sessions, store, POLICY, per_backend=1, report_interval_s=REPORT_S
    )
    probed: list[str] = []

    async def prober(backend: Backend) -> ProbeResult:
        probed.append(backend.name)
        return passed()

    verdicts: dict[str, Health] = {}
    checker = HealthChecker(
        store, verdicts, lambda: None, POLICY, prober=prober, delegate=delegation
    )
    try:
        async with running(checker):
            yield Rig(server, delegation, checker, verdicts, probed)
    finally:
        await server.stop()


def clusters(specifier: object) -> list[str]:
    return [c.cluster_name for c in specifier.cluster_health_checks]  # type: ignore[attr-defined]


async def two_envoys(rig: Rig) -> dict[str, HdsCall]:
    calls = {node: await rig.server.connect(node) for node in ("envoy-1", "envoy-2")}
    await poll(
        lambda: (
            len(rig.delegation.assignment.get(A.name, ())) == 1
            and len(set(rig.delegation.assignment.values())) == 2
        )
    )
    return calls


async def sent(call: HdsCall, expected: list[str]) -> None:
    """Read what the server sends until a specifier checks `expected`; fails (times
    out) when none does."""
    while clusters(await read(call)) != expected:
        pass


async def test_backends_are_split_reported_verdicts_published_and_only_the_rest_probed(
    rig: Rig,
) -> None:
    """K=1 over two Envoys: one backend each. A node's report on its backend makes the
    verdict, with checked_by naming it; the controller stops probing that backend
    and keeps probing the other, on which nobody reported yet."""
    calls = await two_envoys(rig)
    owner = {rig.delegation.assignment[name][0]: name for name in (A.name, B.name)}
    assert sorted(owner) == ["envoy-1", "envoy-2"]
    for node, call in calls.items():
        await sent(call, [owner[node]])
    node_a = rig.delegation.assignment[A.name][0]
    healthy = report_of(A.name, [("127.0.0.1", A.port, health_check_pb2.HEALTHY)])
    await calls[node_a].write(healthy)
    await poll(lambda: rig.checker.states[A.name].checked_by == (node_a,))
    unhealthy = report_of(A.name, [("127.0.0.1", A.port, health_check_pb2.UNHEALTHY)])
    await calls[node_a].write(unhealthy)
    await poll(lambda: rig.verdicts.get(A.name) is Health.UNHEALTHY)
    error = rig.checker.states[A.name].last.error  # type: ignore[union-attr]
    assert error is not None and node_a in error
    rig.probed.clear()
    for _ in range(6):  # Envoy reports every report interval (more often here)
        await calls[node_a].write(unhealthy)
        await asyncio.sleep(0.1)
    assert A.name not in rig.probed and B.name in rig.probed
    # Reports stop (the Envoy hangs): once they are stale the controller probes again.
    await poll(lambda: A.name in rig.probed, timeout=3 * REPORT_S + 3 * POLICY.interval_s + 2)


async def test_a_report_on_a_backend_not_assigned_to_the_node_is_ignored(rig: Rig) -> None:
    calls = await two_envoys(rig)
    node_b = rig.delegation.assignment[B.name][0]
    other = next(n for n in calls if n != node_b)
    await calls[other].write(report_of(B.name, [("127.0.0.1", B.port, health_check_pb2.UNHEALTHY)]))
    await calls[other].write(report_of(B.name, [("127.0.0.1", B.port, health_check_pb2.HEALTHY)]))
    # A report on its own backend, after those on one stream: once it counts, they were read.
    await calls[other].write(report_of(A.name, [("127.0.0.1", A.port, health_check_pb2.HEALTHY)]))
    await poll(lambda: rig.checker.states[A.name].checked_by == (other,))
    assert rig.checker.states[B.name].checked_by == ("controller",)
    assert not rig.delegation.delegated(B.name)


async def test_a_leaver_s_backends_go_to_the_other(rig: Rig) -> None:
    """One node's stream ends: the other is sent both backends."""
    calls = await two_envoys(rig)
    first, second = sorted(calls)
    await calls[first].done_writing()
    await poll(lambda: set(rig.delegation.assignment.values()) == {(second,)})
    await sent(calls[second], [A.name, B.name])


async def test_a_checker_that_stops_sends_an_empty_specifier() -> None:
    """The checker stops (the replica lost the prober lease, or shuts down): the Envoy
    is told to check nothing, and nothing counts as delegated any more."""
    server = await HdsServer().start()
    try:
        store = MemoryStore(one_service(A, B))
        delegation = Delegation(server.sessions, store, POLICY, per_backend=2)
        checker = HealthChecker(
            store, {}, lambda: None, POLICY, prober=_passing, delegate=delegation
        )
        async with running(checker):
            call = await server.connect("envoy-1")
            assert clusters(await read(call)) == [A.name, B.name]
        assert clusters(await read(call)) == []
        assert delegation.assignment == {} and not delegation.delegated(A.name)
    finally:
        await server.stop()


async def _passing(backend: Backend) -> ProbeResult:
    return passed()


def endpoints(specifier: object) -> list[str]:
    return [
        e.address.socket_address.address
        for c in specifier.cluster_health_checks  # type: ignore[attr-defined]
        for locality in c.locality_endpoints
        for e in locality.endpoints
    ]


async def test_a_changed_record_set_reaches_the_envoy_without_any_other_change() -> None:
    """A backend named by DNS: its new addresses are in the Envoy's next specifier
    within a report interval, though no Envoy, intent or assignment changed."""
    named = Backend("svc-named", "svc.example", 7003)
    resolver = MemoryResolver({"svc.example": ["127.0.0.5"]})
    store = MemoryStore(one_service(named))
    dns = DnsRefresher(store, resolver, lambda: None)
    await dns.refresh(["svc.example"])
    server = await HdsServer().start()
    try:
        delegation = Delegation(server.sessions, store, POLICY, 1, dns, report_interval_s=0.1)
        checker = HealthChecker(
            store, {}, lambda: None, POLICY, prober=_passing, delegate=delegation
        )
        async with running(checker):
            call = await server.connect("envoy-1")
            assert endpoints(await read(call)) == ["127.0.0.5"]
            resolver.set("svc.example", ["127.0.0.6", "127.0.0.7"])
            await dns.refresh(["svc.example"])
            assert endpoints(await read(call, timeout_s=1.0)) == ["127.0.0.6", "127.0.0.7"]
    finally:
        await server.stop()

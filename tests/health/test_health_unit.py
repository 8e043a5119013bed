"""The health checker without Envoy: verdict rules, real HTTP probes against
in-process sample backends, following the intent, scheduling, and what the
checker tells its observers."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import random
import time
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from tests.factories import FAST_POLICY, ambiguous, definitive, one_service, passed, spec_intent
from tests.support import eventually
from xds_server.health.checker import HealthChecker, probed_backends
from xds_server.health.probe import HttpProber, new_session
from xds_server.health.verdict import BackendHealth, DelegatedVerdict, HealthPolicy, ProbeResult
from xds_server.model.intent import Backend, Health, Intent, Protocol, Service
from xds_server.samples.backend import make_app
from xds_server.store.memory import MemoryStore


def verdicts_after(*results: ProbeResult) -> list[Health]:
    state = BackendHealth()
    seen = []
    for result in results:
        state.record(result, FAST_POLICY)
        seen.append(state.verdict)
    return seen


# --- verdict rules ---------------------------------------------------------------------


def test_first_pass_makes_an_unknown_backend_healthy() -> None:
    """UNKNOWN -> HEALTHY on the first passing probe (no healthy_threshold wait)."""
    assert verdicts_after(passed()) == [Health.HEALTHY]


def test_ambiguous_failures_need_the_unhealthy_threshold() -> None:
    """Timeouts and resets flip HEALTHY -> UNHEALTHY only after 3 in a row; a pass
    resets the count."""
    assert (
        verdicts_after(passed(), ambiguous(), ambiguous(), passed(), ambiguous())
        == [Health.HEALTHY] * 5
    )
    assert verdicts_after(passed(), ambiguous(), ambiguous(), ambiguous())[-1] is Health.UNHEALTHY


def test_definitive_failure_is_unhealthy_at_once() -> None:
    """An explicit error answer or a refused connection needs no confirmation."""
    assert verdicts_after(passed(), definitive()) == [Health.HEALTHY, Health.UNHEALTHY]
    assert verdicts_after(definitive()) == [Health.UNHEALTHY]


def test_unhealthy_backend_needs_healthy_threshold_passes_in_a_row() -> None:
    """UNHEALTHY -> HEALTHY after 2 passes in a row; a failure between them starts over."""
    assert verdicts_after(definitive(), passed(), ambiguous(), passed(), passed()) == [
        Health.UNHEALTHY,
        Health.UNHEALTHY,
        Health.UNHEALTHY,
        Health.UNHEALTHY,
        Health.HEALTHY,
    ]


def test_record_reports_only_changes() -> None:
    """record() is True exactly when the verdict flips (what triggers a publish)."""
    state = BackendHealth()
    changes = [
        state.record(r, FAST_POLICY) for r in (passed(), passed(), definitive(), definitive())
    ]
    assert changes == [True, False, True, False]


# --- real probes -----------------------------------------------------------------------


@pytest.fixture
async def sample() -> AsyncIterator[tuple[Backend, str]]:
    """One sample backend served in-process on a free port; yields it and its control URL."""
    runner = web.AppRunner(make_app("svc-a", "qdrant"))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield Backend("svc-a", "127.0.0.1", port), f"http://127.0.0.1:{port}/_control/fault"
    await runner.cleanup()


async def probe_once(backend: Backend, timeout_s: float = 0.5) -> ProbeResult:
    async with new_session() as session:
        return await HttpProber(session, timeout_s)(backend)


async def test_probe_passes_on_200_and_measures_time(sample: tuple[Backend, str]) -> None:
    """A 200 from /health passes; the elapsed time is real (positive, under the timeout)."""
    result = await probe_once(sample[0])
    assert result.ok and result.error is None
    assert 0 < result.elapsed_s < 0.5
    assert abs(result.at - time.time()) < 1


async def test_probe_error_answer_is_definitive(sample: tuple[Backend, str]) -> None:
    """/health answering 503 is a definitive failure naming the status."""
    backend, control = sample
    async with aiohttp.ClientSession() as http:
        await http.post(control, json={"health_status": 503})
    result = await probe_once(backend)
    assert (result.ok, result.definitive, result.error) == (False, True, "HTTP 503")


async def test_refused_connection_is_definitive(refusing_port: int) -> None:
    """Nothing listening (a killed backend) is definitive: no threshold wait."""
    result = await probe_once(Backend("gone", "127.0.0.1", refusing_port))
    assert not result.ok and result.definitive
    assert result.error is not None and result.error.startswith("connect")


async def test_hung_backend_times_out_ambiguously(silent_port: int) -> None:
    """No answer within the timeout is an ambiguous failure, after about the timeout."""
    started = time.monotonic()
    result = await probe_once(Backend("hung", "127.0.0.1", silent_port), timeout_s=0.2)
    assert (result.ok, result.definitive, result.error) == (False, False, "timeout")
    assert 0.15 < time.monotonic() - started < 1.0


# --- the checker against a store ----------------------------------------------------------


@dataclasses.dataclass
class Running:
    checker: HealthChecker
    store: MemoryStore
    verdicts: dict[str, Health]
    changes: list[dict[str, Health]]


@pytest.fixture
async def running(sample: tuple[Backend, str], refusing_port: int) -> AsyncIterator[Running]:
    """A checker (interval 0.1 s) over one live sample backend and one dead one."""
    store = MemoryStore(one_service(sample[0], Backend("svc-b", "127.0.0.1", refusing_port)))
    verdicts: dict[str, Health] = {}
    changes: list[dict[str, Health]] = []
    checker = HealthChecker(store, verdicts, lambda: changes.append(dict(verdicts)), FAST_POLICY)
    task = asyncio.create_task(checker.run())
    yield Running(checker, store, verdicts, changes)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def has(running: Running, expected: dict[str, Health]) -> bool:
    return running.verdicts == expected


async def test_verdicts_reach_the_mapping_and_each_change_is_signalled(running: Running) -> None:
    """Live backend -> HEALTHY, dead one -> UNHEALTHY; each change calls on_change once."""
    expected = {"svc-a": Health.HEALTHY, "svc-b": Health.UNHEALTHY}
    await eventually(lambda: has(running, expected), timeout_s=2)
    await asyncio.sleep(0.3)  # three more rounds: nothing changes, nothing is signalled
    assert len(running.changes) == 2
    assert running.changes[-1] == expected


async def test_checker_follows_intent_changes(
    running: Running, sample: tuple[Backend, str]
) -> None:
    """A removed backend's verdict disappears; a backend moved to a live port is
    probed again from UNKNOWN and turns healthy."""
    expected = {"svc-a": Health.HEALTHY, "svc-b": Health.UNHEALTHY}
    await eventually(lambda: has(running, expected), timeout_s=2)
    moved = Backend("svc-b", "127.0.0.1", sample[0].port)
    await running.store.put(one_service(moved))
    await eventually(lambda: has(running, {"svc-b": Health.HEALTHY}), timeout_s=2)
    assert set(running.checker.states) == {"svc-b"}


async def test_held_backend_is_frozen_then_reprobed(
    running: Running, sample: tuple[Backend, str]
) -> None:
    """While held, a backend is neither probed nor retargeted; on release it is."""
    await eventually(lambda: has(running, {"svc-a": Health.HEALTHY, "svc-b": Health.UNHEALTHY}))
    with running.checker.held("svc-b"):
        await running.store.put(
            one_service(sample[0], Backend("svc-b", "127.0.0.1", sample[0].port))
        )
        await asyncio.sleep(0.35)
        assert running.verdicts["svc-b"] is Health.UNHEALTHY
    # Passes from UNKNOWN (retargeted): one probe is enough.
    await eventually(lambda: has(running, {"svc-a": Health.HEALTHY, "svc-b": Health.HEALTHY}))


async def test_probes_keep_a_fixed_period_with_a_jittered_phase() -> None:
    """The first probe of each backend is immediate; the next falls at a phase in
    [0, jitter x interval) later, spread across backends; from then on probes are
    exactly one interval apart, which bounds detection by interval + timeout."""
    calls: dict[str, list[float]] = {}

    async def prober(backend: Backend) -> ProbeResult:
        calls.setdefault(backend.name, []).append(time.monotonic())
        return passed()

    backends = [Backend(f"b{i}", "127.0.0.1", 1000 + i) for i in range(6)]
    store = MemoryStore(one_service(*backends))
    policy = dataclasses.replace(FAST_POLICY, interval_s=0.2, jitter=0.5)
    checker = HealthChecker(store, {}, lambda: None, policy, prober=prober)
    started = time.monotonic()
    task = asyncio.create_task(checker.run())
    await asyncio.sleep(0.75)
    task.cancel()
    assert all(times[0] - started < 0.02 for times in calls.values()), calls
    phases = sorted(times[1] - times[0] for times in calls.values())
    assert len(phases) == 6 and all(0 <= p < 0.1 + 0.02 for p in phases), phases
    assert phases[-1] - phases[0] > 0.01, "the phases are spread, not one burst"
    for times in calls.values():
        gaps = [b - a for a, b in itertools.pairwise(times[1:])]
        assert gaps and all(abs(g - 0.2) < 0.03 for g in gaps), gaps


async def test_a_probe_that_raises_counts_as_an_ambiguous_failure() -> None:
    """A prober bug (here a ValueError) neither stops the checker nor flips the
    verdict at once: it is an ambiguous failure, unhealthy after the threshold."""
    verdicts: dict[str, Health] = {}
    seen_before_each: list[Health | None] = []

    async def broken(backend: Backend) -> ProbeResult:
        seen_before_each.append(verdicts.get("b"))
        raise ValueError("odd host")

    store = MemoryStore(one_service(Backend("b", "127.0.0.1", 1)))
    checker = HealthChecker(store, verdicts, lambda: None, FAST_POLICY, prober=broken)
    task = asyncio.create_task(checker.run())
    await eventually(lambda: _true(len(seen_before_each) > FAST_POLICY.unhealthy_threshold), 2)
    assert not task.done()
    assert seen_before_each[: FAST_POLICY.unhealthy_threshold + 1] == [None] * 3 + [
        Health.UNHEALTHY
    ]
    last = checker.states["b"].last
    assert last is not None and last.error == "ValueError: odd host"
    task.cancel()


async def _true(value: bool) -> bool:
    return value


# --- the report ------------------------------------------------------------------------------


def test_grpc_backends_get_the_grpc_health_check_not_an_http_get() -> None:
    """A gRPC service's backends would fail an HTTP GET and be dropped from EDS;
    they are probed with the gRPC health check of the service's health service,
    which is part of the target (a changed name is another target)."""
    http = Service("web", ("/web/",), (Backend("web-a", "127.0.0.1", 1),))
    backend = Backend("greeter-a", "127.0.0.1", 2)
    grpc = Service("greeter", (), (backend,), protocol=Protocol.GRPC, grpc_health_service="x.Y")
    probed = probed_backends(Intent(services=(http, grpc)))
    assert probed["web-a"].grpc_health_service is None
    assert probed["web-a"].target == ("127.0.0.1", 1, "/health")
    assert probed["greeter-a"].grpc_health_service == "x.Y"
    assert probed["greeter-a"].target == ("127.0.0.1", 2, "grpc:x.Y")


async def test_health_checker_reports_probes_and_verdict_changes() -> None:
    """Observers hear every probe and each verdict change with the old and new verdict;
    one failing observer does not stop the others or the checker."""
    heard: list[tuple[str, ...]] = []

    class Ear:
        def probed(self, name: str, result: ProbeResult) -> None:
            heard.append(("probed", name, str(result.ok)))

        def verdict_changed(
            self, name: str, previous: Health, current: Health, result: ProbeResult
        ) -> None:
            heard.append(("changed", name, str(previous), str(current)))

    class Broken(Ear):
        def probed(self, name: str, result: ProbeResult) -> None:
            raise RuntimeError("boom")

    store = MemoryStore(spec_intent())
    checker = HealthChecker(
        store,
        {},
        lambda: None,
        HealthPolicy(interval_s=60),
        observers=[Broken(), Ear()],
    )
    checker.states["qdrant-primary"] = BackendHealth()
    checker._apply("qdrant-primary", definitive())
    checker._apply("qdrant-primary", definitive())  # still unhealthy: a probe, no change
    changed = ("changed", "qdrant-primary", "unknown", "unhealthy")
    probed = ("probed", "qdrant-primary", "False")
    # Broken's probed() raised; its verdict_changed() (Ear's) still ran.
    assert heard == [probed, changed, changed, probed]


# --- Envoy's passive view --------------------------------------------------------------------


def corroborating_checker(ejected: set[str]) -> tuple[HealthChecker, dict[str, Health]]:
    """A checker (never run) whose backends count as ejected when named in `ejected`."""
    verdicts: dict[str, Health] = {}
    store = MemoryStore(one_service(Backend("b", "127.0.0.1", 1)))
    checker = HealthChecker(
        store, verdicts, lambda: None, FAST_POLICY, ejected=lambda name: name in ejected
    )
    checker.states["b"] = BackendHealth()
    return checker, verdicts


def test_a_failed_probe_while_envoy_ejects_the_backend_is_unhealthy_at_once() -> None:
    """An ambiguous failure (a timeout) needs the threshold on its own, but not when
    some proxy's outlier detection ejects the backend: both witnesses agree."""
    ejected: set[str] = set()
    checker, verdicts = corroborating_checker(ejected)
    checker._apply("b", passed())
    checker._apply("b", ambiguous())
    assert verdicts["b"] is Health.HEALTHY
    ejected.add("b")
    checker._apply("b", ambiguous())
    assert verdicts["b"] is Health.UNHEALTHY


def test_an_ejection_alone_never_changes_the_verdict() -> None:
    """A probe that passes while Envoy ejects the backend keeps it healthy: one
    proxy's ejection does not flap EDS health."""
    checker, verdicts = corroborating_checker({"b"})
    checker._apply("b", passed())
    checker._apply("b", passed())
    assert verdicts["b"] is Health.HEALTHY


async def test_probe_now_probes_at_once_at_most_once_per_interval() -> None:
    """An early probe comes at once instead of at the next tick (a minute away here);
    a second request within the interval is refused; held or unknown backends too."""
    calls: list[float] = []

    async def prober(backend: Backend) -> ProbeResult:
        calls.append(time.monotonic())
        return passed()

    store = MemoryStore(one_service(Backend("b", "127.0.0.1", 1)))
    policy = dataclasses.replace(FAST_POLICY, interval_s=60.0, jitter=0.5)
    # This seed puts the first tick after the first probe 4 s away.
    checker = HealthChecker(store, {}, lambda: None, policy, prober=prober, rng=random.Random(1))
    task = asyncio.create_task(checker.run())
    try:
        await eventually(lambda: _true(len(calls) == 1), 2)
        asked = time.monotonic()
        assert checker.probe_now("b")
        await eventually(lambda: _true(len(calls) == 2), 2)
        assert calls[1] - asked < 0.05
        assert not checker.probe_now("b"), "within one interval of the last early probe"
        assert not checker.probe_now("nobody")
        await asyncio.sleep(0.05)
        assert len(calls) == 2
    finally:
        task.cancel()


class FixedPhase(random.Random):
    """The phase of the first tick after the first probe: `share` of its range."""

    def __init__(self, share: float) -> None:
        super().__init__(0)
        self.share = share

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.share


async def test_ambiguous_failures_are_confirmed_within_one_interval() -> None:
    """After a timeout, the probes that reach the unhealthy threshold (3) come
    interval / 2 - timeout apart, so the verdict flips within one interval of the
    first failure; once unhealthy, probes are back on their regular ticks."""
    calls: list[float] = []
    verdicts: dict[str, Health] = {}
    flipped: list[float] = []

    async def hung(backend: Backend) -> ProbeResult:
        calls.append(time.monotonic())
        return ambiguous()

    store = MemoryStore(one_service(Backend("b", "127.0.0.1", 1)))
    policy = HealthPolicy(interval_s=0.6, timeout_s=0.05, unhealthy_threshold=3, jitter=1.0)
    checker = HealthChecker(
        store,
        verdicts,
        lambda: flipped.append(time.monotonic()),
        policy,
        prober=hung,
        rng=FixedPhase(0.9),  # the first regular tick 0.54 s after the first probe
    )
    task = asyncio.create_task(checker.run())
    try:
        await eventually(lambda: _true(len(calls) >= 5), 3)
    finally:
        task.cancel()
    gaps = [round(b - a, 2) for a, b in itertools.pairwise(calls[:5])]
    assert all(abs(g - 0.25) < 0.04 for g in gaps[:2]), gaps  # the two confirmations
    assert flipped and flipped[0] - calls[0] <= policy.interval_s, (flipped, calls)
    assert verdicts["b"] is Health.UNHEALTHY
    assert abs(calls[3] - calls[0] - 0.54) < 0.04, gaps  # the regular tick
    assert abs(gaps[3] - policy.interval_s) < 0.04, gaps  # and no more confirmations


# --- verdicts delegated to Envoys (HDS) ------------------------------------------------------


class Named:
    """A delegate (HDS in health/delegation.py) that covers the names in a set."""

    def __init__(self, names: set[str]) -> None:
        self.names = names
        self.ran_with: HealthChecker | None = None

    def delegated(self, name: str) -> bool:
        return name in self.names

    async def run(self, checker: HealthChecker) -> None:
        self.ran_with = checker
        await asyncio.Event().wait()


async def test_a_delegated_backend_is_not_probed_and_takes_the_envoys_verdict() -> None:
    """While Envoys report on a backend the controller does not probe it; their
    verdict is published as it is (Envoy counted the thresholds), with who checked;
    when the delegation ends (no fresh report) the controller probes again."""
    calls: list[str] = []

    async def prober(backend: Backend) -> ProbeResult:
        calls.append(backend.name)
        return passed()

    delegated = {"b"}
    verdicts: dict[str, Health] = {}
    changes: list[dict[str, Health]] = []
    store = MemoryStore(one_service(Backend("a", "127.0.0.1", 1), Backend("b", "127.0.0.1", 2)))
    policy = dataclasses.replace(FAST_POLICY, interval_s=0.05)
    checker = HealthChecker(
        store,
        verdicts,
        lambda: changes.append(dict(verdicts)),
        policy,
        prober=prober,
        delegate=(delegate := Named(delegated)),
    )
    task = asyncio.create_task(checker.run())
    await eventually(lambda: _true(calls.count("a") >= 3), 2)
    assert "b" not in calls and delegate.ran_with is checker
    now = time.time()
    failed = ProbeResult(ok=False, definitive=True, elapsed_s=0.0, at=now, error="unhealthy")
    checker.report("b", DelegatedVerdict(Health.UNHEALTHY, failed, ("e1", "e2"), {"e1": now}))
    assert verdicts["b"] is Health.UNHEALTHY and changes[-1]["b"] is Health.UNHEALTHY
    state = checker.states["b"]
    assert state.checked_by == ("e1", "e2") and state.reported_at == {"e1": now}
    assert state.since == now
    delegated.clear()
    await eventually(lambda: _true("b" in calls), 2)
    await eventually(lambda: _true(checker.states["b"].checked_by == ("controller",)), 2)
    task.cancel()


def test_a_held_backend_ignores_delegated_verdicts() -> None:
    """An experiment's hold freezes the verdict whoever checks."""
    checker, verdicts = corroborating_checker(set())
    with checker.held("b"):
        failed = ProbeResult(ok=False, definitive=True, elapsed_s=0.0, at=1.0)
        checker.report("b", DelegatedVerdict(Health.UNHEALTHY, failed, ("e1",), {"e1": 1.0}))
    assert "b" not in verdicts

"""The health checker without Envoy: verdict rules, real HTTP probes against
in-process sample backends, following the intent, scheduling, and the report."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import re
import socket
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
from aiohttp import web

from tests.support import eventually
from xds_server.admin.health_report import health_report
from xds_server.health.checker import HealthChecker, probed_backends
from xds_server.health.probe import HttpProber, new_session
from xds_server.health.verdict import BackendHealth, HealthPolicy, ProbeResult, summarize
from xds_server.model.intent import Backend, Health, Intent, Protocol, Service
from xds_server.samples.backend import make_app
from xds_server.store.memory import MemoryStore
from xds_server.timefmt import iso_utc

POLICY = HealthPolicy(
    interval_s=0.1, timeout_s=0.05, healthy_threshold=2, unhealthy_threshold=3, jitter=0.5
)


def passed() -> ProbeResult:
    return ProbeResult(ok=True, definitive=False, elapsed_s=0.001, at=time.time())


def ambiguous() -> ProbeResult:
    return ProbeResult(ok=False, definitive=False, elapsed_s=0.05, at=time.time(), error="timeout")


def definitive() -> ProbeResult:
    return ProbeResult(ok=False, definitive=True, elapsed_s=0.001, at=time.time(), error="HTTP 503")


def verdicts_after(*results: ProbeResult) -> list[Health]:
    state = BackendHealth()
    seen = []
    for result in results:
        state.record(result, POLICY)
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
    changes = [state.record(r, POLICY) for r in (passed(), passed(), definitive(), definitive())]
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


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts TCP connections but never answers (a hung backend)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield listener.getsockname()[1]


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A port bound but not listening: every connect is refused."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield bound.getsockname()[1]


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


def intent_of(*backends: Backend) -> Intent:
    return Intent(services=(Service("svc", ("/svc/",), tuple(backends)),))


@dataclasses.dataclass
class Running:
    checker: HealthChecker
    store: MemoryStore
    verdicts: dict[str, Health]
    changes: list[dict[str, Health]]


@pytest.fixture
async def running(sample: tuple[Backend, str], refusing_port: int) -> AsyncIterator[Running]:
    """A checker (interval 0.1 s) over one live sample backend and one dead one."""
    store = MemoryStore(intent_of(sample[0], Backend("svc-b", "127.0.0.1", refusing_port)))
    verdicts: dict[str, Health] = {}
    changes: list[dict[str, Health]] = []
    checker = HealthChecker(store, verdicts, lambda: changes.append(dict(verdicts)), POLICY)
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
    await running.store.put(intent_of(moved))
    await eventually(lambda: has(running, {"svc-b": Health.HEALTHY}), timeout_s=2)
    assert set(running.checker.states) == {"svc-b"}


async def test_held_backend_is_frozen_then_reprobed(
    running: Running, sample: tuple[Backend, str]
) -> None:
    """While held, a backend is neither probed nor retargeted; on release it is."""
    await eventually(lambda: has(running, {"svc-a": Health.HEALTHY, "svc-b": Health.UNHEALTHY}))
    with running.checker.held("svc-b"):
        await running.store.put(intent_of(sample[0], Backend("svc-b", "127.0.0.1", sample[0].port)))
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
    store = MemoryStore(intent_of(*backends))
    policy = dataclasses.replace(POLICY, interval_s=0.2, jitter=0.5)
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

    store = MemoryStore(intent_of(Backend("b", "127.0.0.1", 1)))
    checker = HealthChecker(store, verdicts, lambda: None, POLICY, prober=broken)
    task = asyncio.create_task(checker.run())
    await eventually(lambda: _true(len(seen_before_each) > POLICY.unhealthy_threshold), 2)
    assert not task.done()
    assert seen_before_each[: POLICY.unhealthy_threshold + 1] == [None] * 3 + [Health.UNHEALTHY]
    last = checker.states["b"].last
    assert last is not None and last.error == "ValueError: odd host"
    task.cancel()


async def _true(value: bool) -> bool:
    return value


# --- the report ------------------------------------------------------------------------------


def spec_intent() -> Intent:
    def backend(name: str) -> Backend:
        return Backend(name, "127.0.0.1", 1)

    return Intent(
        services=(
            Service("qdrant", ("/q/",), (backend("qdrant-primary"), backend("qdrant-secondary"))),
            Service("phi3", ("/p/",), (backend("phi3"),), group="external"),
            Service("hermes", ("/h/",), (backend("hermes"),), group="external"),
        )
    )


def states(**results: ProbeResult) -> dict[str, BackendHealth]:
    out = {}
    for name, result in results.items():
        out[name.replace("_", "-")] = state = BackendHealth()
        state.record(result, POLICY)
    return out


def test_report_has_the_spec_shape_grouped_with_short_keys() -> None:
    """Groups by display group; 'qdrant-primary' shows as 'primary'; real figures."""
    probed = states(qdrant_primary=passed(), qdrant_secondary=passed(), phi3=passed())
    report = health_report(spec_intent(), probed)
    assert set(report["health_status"]) == {"qdrant", "external"}  # type: ignore[arg-type]
    qdrant = report["health_status"]["qdrant"]  # type: ignore[index]
    assert set(qdrant) == {"primary", "secondary"}
    entry = qdrant["primary"]
    assert entry["status"] == "healthy" and entry["response_time_ms"] == 1.0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["last_check"])
    external = report["health_status"]["external"]  # type: ignore[index]
    assert external["hermes"] == {"status": "unknown", "response_time_ms": None, "last_check": None}
    assert (report["total_backends"], report["healthy_backends"]) == (4, 3)
    assert (report["unhealthy_backends"], report["unknown_backends"]) == (0, 1)


def test_unknown_backends_degrade_but_do_not_make_a_service_unhealthy() -> None:
    """Not yet probed: overall 'degraded' at best, never 'unhealthy' on its own."""
    assert summarize(spec_intent(), {}).overall == "degraded"
    everything = states(
        qdrant_primary=passed(), qdrant_secondary=passed(), phi3=passed(), hermes=passed()
    )
    assert summarize(spec_intent(), everything).overall == "healthy"


def test_a_service_without_a_serving_backend_makes_overall_unhealthy() -> None:
    """Both qdrant backends unhealthy: qdrant and the overall verdict are 'unhealthy';
    one of them unhealthy: 'degraded'."""
    one_down = states(qdrant_primary=definitive(), qdrant_secondary=passed())
    assert summarize(spec_intent(), one_down).services["qdrant"] == "degraded"
    both_down = states(qdrant_primary=definitive(), qdrant_secondary=definitive())
    summary = summarize(spec_intent(), both_down)
    assert summary.services["qdrant"] == "unhealthy" and summary.overall == "unhealthy"
    assert (summary.unhealthy, summary.unknown) == (2, 2)


def test_colliding_short_keys_fall_back_to_full_names() -> None:
    """Two services of one group with backends 'a-x' and 'b-x': 'x' once, then the full name."""
    intent = Intent(
        services=(
            Service("a", ("/a/",), (Backend("a-x", "127.0.0.1", 1),), group="g"),
            Service("b", ("/b/",), (Backend("b-x", "127.0.0.1", 1),), group="g"),
        )
    )
    assert set(health_report(intent, {})["health_status"]["g"]) == {"x", "b-x"}  # type: ignore[index]


def test_iso_utc_is_utc_with_milliseconds() -> None:
    """last_check: ISO-8601 UTC with a Z, as the spec shows."""
    assert iso_utc(1752589800.25) == "2025-07-15T14:30:00.250Z"


def test_grpc_only_backends_are_not_http_probed() -> None:
    """A gRPC service's backends would fail an HTTP GET and be dropped from EDS;
    the prober leaves them out (UNKNOWN: still routed to)."""
    http = Service("web", ("/web/",), (Backend("web-a", "127.0.0.1", 1),))
    grpc = Service("greeter", (), (Backend("greeter-a", "127.0.0.1", 2),), protocol=Protocol.GRPC)
    assert list(probed_backends(Intent(services=(http, grpc)))) == ["web-a"]

"""Resilience end to end: health checking, circuit breaking, failover,
backpressure and the two experiment endpoints, with a real Envoy 1.40 and real
backend processes. Short intervals and timeouts keep the file quick; every
figure asserted is measured here, independently of what the controller says.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from tests.e2e.backends import backend, control, served, set_fault
from tests.e2e.conftest import StackFactory
from tests.factories import SEARCH_BODY, local_settings
from tests.support import eventually
from xds_server.demo import Stack, start_backend
from xds_server.model.edits import update_backend
from xds_server.proxy.processes import ChildProcess
from xds_server.settings import Settings

pytestmark = pytest.mark.envoy

INTERVAL_S, TIMEOUT_S = 0.5, 0.25  # health probes
THRESHOLD, EJECTION_S = 3, 1.0  # circuit breaker
OUTLIER_SWEEP_S = 1.0  # Envoy un-ejects at its outlier-detection interval (clusters.py)
POLL_S = 0.02
SEARCH = "/api/v1/vectors/search"
EMBED = "/api/v1/embeddings"
CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def resilience_settings(**policies: Any) -> Settings:
    """Fast probes, a low breaker threshold, a short ejection and quick retries."""
    settings = local_settings(
        worker_threads=2, health_check_interval_s=INTERVAL_S, health_check_timeout_s=TIMEOUT_S
    )
    wanted = {
        "circuit_breaker_threshold": THRESHOLD,
        "circuit_breaker_timeout_s": EJECTION_S,
        "retry_delay_s": 0.02,
        **policies,
    }
    intent = settings.intent
    changed = dataclasses.replace(intent.policies, **wanted)
    return dataclasses.replace(settings, intent=dataclasses.replace(intent, policies=changed))


# --- reading the stack, independently of the controller's answers ------------------------


def url(stack: Stack, path: str) -> str:
    return f"http://{stack.controller.store.intent.listen}{path}"


async def fault_status(http: aiohttp.ClientSession, stack: Stack, name: str) -> int | None:
    async with http.get(control(stack, name, "fault")) as response:
        status: int | None = (await response.json())["status"]
        return status


async def envoy_host(stack: Stack, cluster: str, name: str) -> dict[str, Any]:
    """One host of Envoy's /clusters?format=json: {"health": {...}, "stats": {name: int}}."""
    document = await stack.envoy.admin_json("/clusters?format=json")
    for entry in document["cluster_statuses"]:
        hosts = entry.get("host_statuses", []) if entry["name"] == cluster else []
        for host in hosts:
            if host["hostname"] == name:
                stats = {s["name"]: int(s.get("value", 0)) for s in host["stats"]}
                return {"health": host.get("health_status", {}), "stats": stats}
    raise AssertionError(f"Envoy has no host {name} in {cluster}")


async def ejected(stack: Stack, cluster: str, name: str) -> bool:
    return bool((await envoy_host(stack, cluster, name))["health"].get("failed_outlier_check"))


async def envoy_counter(stack: Stack, name: str) -> int:
    text = await stack.envoy.admin_get(f"/stats?filter=^{re.escape(name)}$")
    match = re.search(rf"^{re.escape(name)}: (\d+)$", text, re.MULTILINE)
    return int(match.group(1)) if match else 0


async def health_report(http: aiohttp.ClientSession, stack: Stack) -> dict[str, Any]:
    async with http.get(url(stack, "/api/v1/router/health")) as response:
        assert response.status == 200
        report: dict[str, Any] = await response.json()
        return report


async def overall(http: aiohttp.ClientSession, stack: Stack) -> tuple[int, dict[str, Any]]:
    async with http.get(url(stack, "/api/v1/health")) as response:
        return response.status, await response.json()


def status_is(
    http: aiohttp.ClientSession, stack: Stack, group: str, key: str, status: str
) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        report = await health_report(http, stack)
        return bool(report["health_status"][group][key]["status"] == status)

    return check


async def all_healthy(http: aiohttp.ClientSession, stack: Stack) -> None:
    async def check() -> bool:
        return (await health_report(http, stack))["overall_health"] == "healthy"

    await eventually(check, timeout_s=5)


# --- a load generator and a watcher --------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Answer:
    sent: float
    took: float
    status: int | None  # None: no answer at all
    backend: str | None


@contextlib.asynccontextmanager
async def load(
    http: aiohttp.ClientSession, target: str, workers: int = 8, body: object = SEARCH_BODY
) -> AsyncIterator[list[Answer]]:
    """Clients POSTing back to back while the block runs; yields their answers."""
    answers: list[Answer] = []
    stop = asyncio.Event()

    async def client() -> None:
        while not stop.is_set() and len(answers) < 100_000:
            sent, status, by = time.monotonic(), None, None
            try:
                async with http.post(target, json=body) as response:
                    await response.read()
                    status, by = response.status, response.headers.get("x-backend")
            except (aiohttp.ClientError, TimeoutError):
                pass
            answers.append(Answer(sent, time.monotonic() - sent, status, by))

    task = asyncio.gather(*(client() for _ in range(workers)))
    try:
        yield answers
    finally:
        stop.set()
        await task


@contextlib.asynccontextmanager
async def watching(check: Callable[[], Awaitable[bool]]) -> AsyncIterator[list[tuple[float, bool]]]:
    """Poll `check` every POLL_S while the block runs; yields its transitions (time, value)."""
    changes: list[tuple[float, bool]] = []
    stop = asyncio.Event()

    async def look() -> None:
        value = await check()
        if not changes or changes[-1][1] != value:
            changes.append((time.monotonic(), value))

    async def poll() -> None:
        while not stop.is_set():
            await look()
            await asyncio.sleep(POLL_S)

    task = asyncio.create_task(poll())
    try:
        yield changes
    finally:
        stop.set()
        await task
        # One last look as the block ends: on a loaded machine the poller may not
        # have run between the last change and the end.
        await look()


def first(changes: list[tuple[float, bool]], value: bool) -> float:
    return next(at for at, seen in changes if seen is value)


# --- health checking and failover under load -------------------------------------------------


def with_secondary_in_priority_1(settings: Settings) -> Settings:
    """qdrant-secondary becomes a standby: P1 takes traffic only when P0 cannot."""

    intent = update_backend(settings.intent, "qdrant", "qdrant-secondary", priority=1)
    return dataclasses.replace(settings, intent=intent)


@pytest.mark.parametrize("standby", [False, True], ids=["same-priority", "priority-failover"])
async def test_sigkill_of_primary_under_load_loses_nothing_and_it_comes_back(
    make_stack: StackFactory, http: aiohttp.ClientSession, standby: bool
) -> None:
    """SIGKILL of qdrant-primary while 8 clients send through Envoy: every request
    gets a 200 (retries move them to the secondary, across priorities too).
    Restarted on the same port, it turns healthy again and takes traffic again;
    with the secondary as a P1 standby, the primary had all traffic before."""
    settings = resilience_settings()
    stack = await make_stack(with_secondary_in_priority_1(settings) if standby else settings)
    await all_healthy(http, stack)
    primary = backend(stack, "qdrant-primary")
    restarted: ChildProcess | None = None
    try:
        async with load(http, url(stack, SEARCH)) as answers:
            await asyncio.sleep(1.0)
            stack.backends["qdrant-primary"].kill()
            killed_at = time.monotonic()
            await eventually(status_is(http, stack, "qdrant", "primary", "unhealthy"), 3)
            await asyncio.sleep(1.0)
            restarted = await start_backend(primary, "qdrant", stack.envoy.workdir)
            restarted_at = time.monotonic()
            await eventually(status_is(http, stack, "qdrant", "primary", "healthy"), 5)

            async def primary_serves_again() -> bool:
                late = [a for a in answers if a.sent > restarted_at]
                return any(a.backend == "qdrant-primary" for a in late)

            await eventually(primary_serves_again, timeout_s=5)
    finally:
        if restarted is not None:
            await restarted.stop()
    failed = [a for a in answers if a.status != 200]
    assert not failed, f"{len(failed)} of {len(answers)} failed, first: {failed[:3]}"
    before = {a.backend for a in answers if a.sent + a.took < killed_at}
    assert before == ({"qdrant-primary"} if standby else {"qdrant-primary", "qdrant-secondary"})
    dead = [a for a in answers if killed_at + 0.1 < a.sent and a.sent + a.took < restarted_at]
    assert dead and {a.backend for a in dead} == {"qdrant-secondary"}
    assert max(a.took for a in answers) < 2.0, "nobody waited long for the failover"


async def test_health_endpoint_reflects_a_killed_backend_within_interval_plus_timeout(
    make_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    """A killed backend shows as unhealthy within one interval plus the timeout
    (plus our polling), with a real last_check and the reason; overall turns
    'degraded' (qdrant still has its primary) and /api/v1/health still says 200."""
    stack = await make_stack(resilience_settings())
    await all_healthy(http, stack)
    healthy_entry = (await health_report(http, stack))["health_status"]["qdrant"]["secondary"]
    assert 0 < healthy_entry["response_time_ms"] < TIMEOUT_S * 1000
    stack.backends["qdrant-secondary"].kill()
    took = await eventually(
        status_is(http, stack, "qdrant", "secondary", "unhealthy"), 3, interval_s=POLL_S
    )
    assert took <= INTERVAL_S + TIMEOUT_S + 0.15, took
    report = await health_report(http, stack)
    entry = report["health_status"]["qdrant"]["secondary"]
    assert entry["error"].startswith("connect")
    assert entry["last_check"] > healthy_entry["last_check"]
    assert (report["overall_health"], report["healthy_backends"]) == ("degraded", 6)
    assert (report["unhealthy_backends"], report["total_backends"]) == (1, 7)
    status, body = await overall(http, stack)
    assert (status, body["overall_health"], body["services"]["qdrant"]) == (
        200,
        "degraded",
        "degraded",
    )


async def test_5xx_backend_is_ejected_after_threshold_and_readmitted_after_timeout(
    make_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    """embedding-gpu0 answering 503: Envoy ejects it after exactly THRESHOLD
    failures (counted by the backend itself), clients see only 200s, the host
    gets nothing while ejected, and it is readmitted no sooner than the ejection
    time and within one outlier sweep after it."""
    stack = await make_stack(resilience_settings())
    await set_fault(http, stack, "embedding-gpu0", status=503)
    before = await served(http, stack, "embedding-gpu0")

    async def send(count: int) -> list[str]:
        seen = []
        for _ in range(count):
            async with http.post(url(stack, EMBED), json={"input": "x"}) as response:
                assert response.status == 200
                seen.append(response.headers["x-backend"])
        return seen

    for _ in range(30):
        await send(1)
        with contextlib.suppress(AssertionError):
            await eventually(lambda: ejected(stack, "embedding", "embedding-gpu0"), 0.05)
            break
    ejected_at = time.monotonic()
    assert await ejected(stack, "embedding", "embedding-gpu0")
    assert await served(http, stack, "embedding-gpu0") - before == THRESHOLD
    assert set(await send(10)) == {"embedding-gpu1"}
    assert await served(http, stack, "embedding-gpu0") - before == THRESHOLD
    await set_fault(http, stack, "embedding-gpu0", status=None)

    async def readmitted() -> bool:
        return not await ejected(stack, "embedding", "embedding-gpu0")

    await eventually(readmitted, timeout_s=EJECTION_S + OUTLIER_SWEEP_S + 2, interval_s=POLL_S)
    open_for = time.monotonic() - ejected_at
    assert EJECTION_S - 0.1 <= open_for <= EJECTION_S + OUTLIER_SWEEP_S + 0.5, open_for
    assert "embedding-gpu0" in await send(10)


async def test_every_backend_of_a_service_down_gives_fast_503_and_unhealthy(
    make_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    """Both embedding backends killed: requests end quickly even before the
    verdict (no hang), then every request is an immediate 503 'no healthy
    upstream'; the health report and /api/v1/health say unhealthy."""
    stack = await make_stack(resilience_settings())
    await all_healthy(http, stack)
    for name in ("embedding-gpu0", "embedding-gpu1"):
        stack.backends[name].kill()

    async def timed_post() -> tuple[int, float, str]:
        started = time.monotonic()
        async with http.post(url(stack, EMBED), json={"input": "x"}) as response:
            return response.status, time.monotonic() - started, await response.text()

    early = [await timed_post() for _ in range(5)]
    assert all(status == 503 and took < 2.0 for status, took, _ in early), early
    await eventually(status_is(http, stack, "embedding", "gpu0", "unhealthy"), 3)
    await eventually(status_is(http, stack, "embedding", "gpu1", "unhealthy"), 3)
    late = [await timed_post() for _ in range(20)]
    assert all(status == 503 for status, _, _ in late), late
    assert max(took for _, took, _ in late) < 0.25, late
    assert all("no healthy upstream" in text for _, _, text in late)
    report = await health_report(http, stack)
    assert report["overall_health"] == "unhealthy" and report["unhealthy_backends"] == 2
    status, body = await overall(http, stack)
    assert (status, body["overall_health"], body["services"]["embedding"]) == (
        503,
        *["unhealthy"] * 2,
    )


async def test_queue_overflow_gives_immediate_503_counted_by_envoy(
    make_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    """Against a slow backend with 2 connections and a queue of 2, the surplus of
    12 concurrent requests gets 503 + x-envoy-overloaded at once; Envoy's
    upstream_rq_pending_overflow counts exactly those; the rest are served."""
    # max_requests stays high: overflowing it is counted apart, as upstream_rq_active_overflow.
    stack = await make_stack(resilience_settings(queue_size=2, max_connections=2))
    await set_fault(http, stack, "phi3", delay_ms=1000)
    counter = "cluster.phi3.upstream_rq_pending_overflow"
    before = await envoy_counter(stack, counter)

    async def one() -> tuple[int, float, str | None]:
        started = time.monotonic()
        async with http.post(url(stack, "/api/v1/models/phi3/chat"), json=CHAT) as response:
            await response.read()
            return (
                response.status,
                time.monotonic() - started,
                response.headers.get("x-envoy-overloaded"),
            )

    answers = await asyncio.gather(*(one() for _ in range(12)))
    overloaded = [a for a in answers if a[0] == 503]
    served_ok = [a for a in answers if a[0] == 200]
    assert overloaded and len(overloaded) + len(served_ok) == 12, answers
    assert all(header == "true" and took < 0.3 for _, took, header in overloaded), overloaded
    assert all(took >= 0.9 for _, took, _ in served_ok), served_ok
    assert len(served_ok) >= 2
    assert await envoy_counter(stack, counter) - before == len(overloaded)


# --- the experiment endpoints ------------------------------------------------------------------


async def post_experiment(
    http: aiohttp.ClientSession, stack: Stack, name: str, body: dict[str, Any]
) -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    async with http.post(url(stack, f"/api/v1/router/{name}/test"), json=body) as response:
        return response.status, await response.json(), time.monotonic() - started


async def test_circuit_breaker_experiment_matches_independent_observation(
    make_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    """POST circuit-breaker/test through Envoy: its figures match what the
    backend counted, what Envoy's stats say and what our own watchers saw; the
    fault and the temporary ejection time are undone afterwards."""
    stack = await make_stack(resilience_settings())
    controller = stack.controller
    policies = controller.store.intent.policies
    before = await served(http, stack, "qdrant-primary")
    ejections = "cluster.qdrant.outlier_detection.ejections_enforced_total"
    ejections_before = await envoy_counter(stack, ejections)

    async def faulted() -> bool:
        return await fault_status(http, stack, "qdrant-primary") == 503

    body = {"backend": "qdrant", "simulate_failure": True, "ejection_time_s": 1.5}
    async with (
        watching(faulted) as fault_seen,
        watching(lambda: ejected(stack, "qdrant", "qdrant-primary")) as ejection_seen,
    ):
        status, answer, wall = await post_experiment(http, stack, "circuit-breaker", body)
    assert status == 200, answer
    test = answer["circuit_breaker_test"]
    assert (test["backend"], test["target_backend"]) == ("qdrant", "qdrant-primary")
    assert (test["initial_state"], test["new_state"], test["final_state"]) == (
        "closed",
        "open",
        "closed",
    )
    assert test["circuit_breaker_triggered"] and test["failover_activated"]
    assert test["failure_threshold"] == THRESHOLD
    # What the backend answered with 503 is what the experiment counted.
    assert test["simulated_failures"] == await served(http, stack, "qdrant-primary") - before
    assert test["simulated_failures"] >= THRESHOLD
    assert await envoy_counter(stack, ejections) - ejections_before == 1
    assert test["backup_backend"] == "qdrant-secondary"
    assert test["requests_lost"] == 0 and test["requests_sent"] > test["simulated_failures"]
    # Our watchers: the fault went on and off once, the host was ejected once.
    assert [seen for _, seen in fault_seen] == [False, True, False]
    assert [seen for _, seen in ejection_seen] == [False, True, False]
    open_ms = (first(ejection_seen[1:], False) - first(ejection_seen, True)) * 1000
    assert abs(test["recovery_time_ms"] - open_ms) < 300, (test, open_ms)
    assert test["recovery_time_ms"] >= 1500 - 100  # Envoy never readmits early
    assert test["recovery_time_ms"] < test["test_duration_ms"] <= wall * 1000
    # Everything put back: no fault, the configured ejection time again.
    assert await fault_status(http, stack, "qdrant-primary") is None
    assert controller.store.intent.policies == policies
    assert test["temporary_changes"] == [
        "circuit_breaker_timeout 1 s -> 1.5 s during the test (restored)"
    ]

    # A backend without the fault control is made to refuse connections by a
    # temporary intent change; the ejected host then gets no traffic at once
    # (without update_merge_window 0, Envoy kept routing to it for up to 1 s).
    gpu0 = backend(stack, "embedding-gpu0")
    body = {"backend": "embedding-gpu0", "simulate_failure": True, "failure": "connection_refused"}
    status, answer, _ = await post_experiment(http, stack, "circuit-breaker", body)
    refused = answer["circuit_breaker_test"]
    assert status == 200 and refused["failure_mode"] == "connection_refused", answer
    assert refused["circuit_breaker_triggered"] and refused["failover_activated"], refused
    assert THRESHOLD <= refused["simulated_failures"] <= THRESHOLD + 4, refused
    assert refused["backup_backend"] == "embedding-gpu1" and refused["requests_lost"] == 0
    assert backend(stack, "embedding-gpu0") == gpu0
    assert controller.store.intent.policies == policies

    for bad, expected in [
        ({"backend": "nope", "simulate_failure": True}, 404),
        ({"backend": "qdrant", "simulate_failure": False}, 422),
        ({"backend": "qdrant", "max_duration_s": 600}, 422),
    ]:
        status, error, _ = await post_experiment(http, stack, "circuit-breaker", bad)
        assert status == expected, error


async def test_failover_experiment_matches_independent_observation(
    make_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    """POST failover/test while our own clients load qdrant: no request is lost
    on either side; failover time, retried failures, backup and recovery match
    what we observed in the backend, in Envoy and in our traffic. A second
    experiment meanwhile gets 409."""
    stack = await make_stack(resilience_settings())
    before = (await envoy_host(stack, "qdrant", "qdrant-primary"))["stats"].get("rq_error", 0)

    async def faulted() -> bool:
        return await fault_status(http, stack, "qdrant-primary") == 503

    async def out() -> bool:
        return await ejected(stack, "qdrant", "qdrant-primary")

    body = {"primary_backend": "qdrant-primary", "simulate_failure": True}
    async with (
        load(http, url(stack, SEARCH), workers=2) as answers,
        watching(faulted) as fault_seen,
        watching(out) as out_seen,
    ):
        experiment = asyncio.create_task(post_experiment(http, stack, "failover", body))
        await eventually(faulted, timeout_s=5, interval_s=POLL_S)
        second = await post_experiment(http, stack, "circuit-breaker", {"backend": "qdrant"})
        status, answer, wall = await experiment
        # Our watcher polls every POLL_S: let it record the readmission the
        # experiment reports before it stops watching.

        async def watcher_saw_readmission() -> bool:
            return any(seen is False for _, seen in out_seen[1:])

        await eventually(watcher_saw_readmission, timeout_s=5, interval_s=POLL_S)
    assert second[0] == 409 and second[1]["error"] == "conflict", second
    assert status == 200, answer
    test = answer["failover_test"]
    assert (test["primary_backend"], test["backup_backend"]) == (
        "qdrant-primary",
        "qdrant-secondary",
    )
    assert test["failover_triggered"] and test["recovery_successful"]
    assert test["requests_lost"] == 0 and test["total_downtime_ms"] == 0
    assert not [a for a in answers if a.status != 200], "our own clients lost nothing either"
    after = (await envoy_host(stack, "qdrant", "qdrant-primary"))["stats"].get("rq_error", 0)
    assert test["upstream_failures_retried"] == after - before >= THRESHOLD
    observed_ms = (first(out_seen, True) - first(fault_seen, True)) * 1000
    assert abs(test["failover_time_ms"] - observed_ms) < 300, (test, observed_ms)
    fault_off = first(fault_seen[1:], False)
    during = [a.backend for a in answers if first(out_seen, True) < a.sent < fault_off]
    assert during and set(during) == {"qdrant-secondary"}
    back_ms = (first(out_seen[1:], False) - fault_off) * 1000
    assert test["recovery_time_ms"] >= back_ms - 300, (test, back_ms)
    assert test["test_duration_ms"] <= wall * 1000
    assert any(a.backend == "qdrant-primary" for a in answers if a.sent > fault_off)
    assert await fault_status(http, stack, "qdrant-primary") is None

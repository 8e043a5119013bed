"""The admin API against a real Envoy 1.40: the spec's commands through the
listener, ACK-confirmed changes, weighted split, switches under load, errors."""

from __future__ import annotations

import asyncio
import collections
import statistics
import time
from typing import Any

import aiohttp
import pytest

from tests.factories import LOOPBACK, SEARCH_BODY
from tests.support import send_many
from xds_server.demo import Stack, start_backend
from xds_server.model.intent import Backend
from xds_server.proxy.processes import free_port
from xds_server.resources import CLUSTER

pytestmark = pytest.mark.envoy

STRATEGY = "/api/v1/router/strategy"
QDRANT = "/api/v1/router/services/qdrant/backends"
SEARCH = "/api/v1/vectors/search"
JSON = {"Content-Type": "application/json"}


def via_envoy(stack: Stack, path: str) -> str:
    return f"http://{stack.controller.store.intent.listen}{path}"


def direct(stack: Stack, path: str) -> str:
    return f"http://{stack.controller.admin_address}{path}"


async def send(
    http: aiohttp.ClientSession, method: str, url: str, body: object = None, **kwargs: Any
) -> tuple[int, Any]:
    async with http.request(method, url, json=body, **kwargs) as response:
        return response.status, await response.json()


async def qdrant_cluster(stack: Stack) -> tuple[str, dict[str, Any]]:
    """("active" | "warming", the qdrant cluster) from Envoy's /config_dump."""
    for state in ("active", "warming"):
        dump = await stack.envoy.admin_json(f"/config_dump?resource=dynamic_{state}_clusters")
        for entry in dump.get("configs", []):  # Envoy omits an empty list
            if entry["cluster"]["name"] == "qdrant":
                return state, entry["cluster"]
    raise AssertionError("Envoy has no qdrant cluster")


async def envoy_hosts(stack: Stack) -> dict[str, dict[str, int]]:
    """qdrant hostname -> counters, read from Envoy's /clusters here, independently."""
    document = await stack.envoy.admin_json("/clusters?format=json")
    return {
        host["hostname"]: {s["name"]: int(s.get("value", 0)) for s in host["stats"]}
        for cluster in document["cluster_statuses"]
        if cluster["name"] == "qdrant"
        for host in cluster["host_statuses"]
    }


async def test_spec_strategy_commands_verbatim(stack: Stack, http: aiohttp.ClientSession) -> None:
    """The spec's two curl commands through the Envoy listener: each answers the
    strategy_change shape with strategy_applied true, Envoy already runs the new
    policy when the answer arrives (no waiting), and active_connections_before
    are Envoy's own cx_active figures."""
    await send_many(http, via_envoy(stack, SEARCH), 20)  # open upstream connections
    cx_before = {name: c.get("cx_active", 0) for name, c in (await envoy_hosts(stack)).items()}
    assert cx_before["qdrant-primary"] > 0 and cx_before["qdrant-secondary"] > 0

    data = '{"strategy": "least_connections"}'
    async with http.put(via_envoy(stack, STRATEGY), data=data, headers=JSON) as response:
        status, body = response.status, await response.json()
    state, cluster = await qdrant_cluster(stack)  # right after the answer: no waiting
    assert (state, cluster.get("lb_policy")) == ("active", "LEAST_REQUEST")
    assert status == 200, body
    change = body["strategy_change"]
    assert change["previous_strategy"] == "round_robin"
    assert change["new_strategy"] == "least_connections"
    assert change["strategy_applied"] is True and change["failures"] == []
    assert change["proxies"] == 1 and change["stats_errors"] == []
    before = change["active_connections_before"]
    assert {k: before[k] for k in cx_before} == cx_before
    assert set(change["active_connections_after"]) == set(before)

    data = '{"strategy": "weighted"}'
    async with http.put(via_envoy(stack, STRATEGY), data=data, headers=JSON) as response:
        status, body = response.status, await response.json()
    state, cluster = await qdrant_cluster(stack)
    assert status == 200 and body["strategy_change"]["strategy_applied"] is True, body
    assert body["strategy_change"]["previous_strategy"] == "least_connections"
    assert state == "active" and cluster.get("lb_policy", "ROUND_ROBIN") == "ROUND_ROBIN"


async def test_weighted_three_to_one_splits_75_25(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    """PATCH weights 3:1, PUT weighted for qdrant: 2,000 requests split 75/25 (±3 points)."""
    patch = {"weight": 3}
    status, body = await send(http, "PATCH", via_envoy(stack, QDRANT + "/qdrant-primary"), patch)
    assert status == 200 and body["applied"] is True, body
    status, body = await send(
        http, "PUT", via_envoy(stack, STRATEGY), {"strategy": "weighted", "service": "qdrant"}
    )
    assert status == 200 and body["strategy_change"]["strategy_applied"] is True, body

    seen = await send_many(http, via_envoy(stack, SEARCH), 2000)
    primary = seen["qdrant-primary"] / 2000
    print(f"weighted 3:1 over 2000: {dict(seen)} -> {primary:.1%} / {1 - primary:.1%}")
    assert seen["qdrant-primary"] + seen["qdrant-secondary"] == 2000, seen
    assert abs(primary - 0.75) <= 0.03, seen


class SteadyLoad:
    """Concurrent POSTs through the listener until stopped (bounded in count and
    time); counts answers by status, and transport errors as lost."""

    def __init__(self, http: aiohttp.ClientSession, url: str, *, limit: int = 40_000) -> None:
        self.http, self.url, self.limit = http, url, limit
        self.outcomes: collections.Counter[str] = collections.Counter()
        self.stop = asyncio.Event()
        self._answered = asyncio.Event()

    async def until(self, count: int) -> None:
        """Wait until `count` requests were answered (or lost)."""
        while self.sent < count:
            answered = self._answered
            await answered.wait()

    @property
    def sent(self) -> int:
        return sum(self.outcomes.values())

    async def run(self, concurrency: int = 8, max_s: float = 60.0) -> None:
        deadline = time.monotonic() + max_s
        await asyncio.gather(*(self._worker(deadline) for _ in range(concurrency)))

    async def _worker(self, deadline: float) -> None:
        while not self.stop.is_set() and self.sent < self.limit and time.monotonic() < deadline:
            try:
                async with self.http.post(self.url, json=SEARCH_BODY) as response:
                    await response.read()
                    self.outcomes[str(response.status)] += 1
            except (aiohttp.ClientError, TimeoutError) as error:
                self.outcomes[f"lost: {type(error).__name__}"] += 1
            self._answered.set()  # wake every waiter; later ones wait on a fresh event
            self._answered = asyncio.Event()


SWITCHES = ["least_connections", "random", "ring_hash", "maglev", "weighted", "round_robin"]


async def test_twenty_switches_under_load_lose_nothing(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    """Twenty global strategy switches through the listener while traffic flows:
    each is ACKed (strategy_applied) and every one of the requests answers 200."""
    load = SteadyLoad(http, via_envoy(stack, SEARCH))
    running = asyncio.create_task(load.run())
    apply_ms: list[float] = []
    try:
        await asyncio.wait_for(load.until(100), 10)  # flowing before the first switch
        for i in range(20):
            sent = load.sent
            body = {"strategy": SWITCHES[i % len(SWITCHES)]}
            status, answer = await send(http, "PUT", via_envoy(stack, STRATEGY), body)
            assert status == 200 and answer["strategy_change"]["strategy_applied"], answer
            apply_ms.append(answer["strategy_change"]["apply_ms"])
            await asyncio.wait_for(load.until(sent + 20), 10)  # traffic on each new config
    finally:
        load.stop.set()
        await running
    median, worst = statistics.median(apply_ms), max(apply_ms)
    print(f"20 switches: {dict(load.outcomes)}; apply median {median} ms, max {worst} ms")
    assert set(load.outcomes) == {"200"}, load.outcomes
    assert load.sent >= 100 + 20 * 20


async def cds_acked(stack: Stack) -> str | None:
    return stack.controller.proxies.connected()[0].types[CLUSTER].version_acked


ERRORS: list[tuple[str, str, dict[str, Any], int, str | None]] = [
    # method, path, request kwargs, status, field
    ("PUT", STRATEGY, {"data": "{not json", "headers": JSON}, 400, None),
    ("PUT", STRATEGY, {"json": {"strategy": "round_robin", "service": "nope"}}, 404, "service"),
    ("PATCH", QDRANT + "/nope", {"json": {"weight": 2}}, 404, "backend"),
    (
        "POST",
        QDRANT,
        {"json": {"name": "qdrant-secondary", "address": LOOPBACK, "port": 9}},
        409,
        "name",
    ),
    ("PUT", STRATEGY, {"json": {"strategy": "fastest"}}, 422, "strategy"),
    ("POST", QDRANT, {"json": {"name": "q3", "address": LOOPBACK, "port": 65536}}, 422, "port"),
    ("PATCH", QDRANT + "/qdrant-primary", {"json": {"weight": 0}}, 422, "weight"),
    ("POST", QDRANT, {"json": {"name": "q3", "address": "qdrant lan", "port": 9}}, 422, "address"),
]


async def test_each_error_class_through_envoy_changes_nothing(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    """400, 404, 409 and 422 through the listener: JSON {error, detail, field};
    afterwards the intent, its revision and the clusters Envoy ACKed are
    unchanged. (Endpoint versions may move: health verdicts are not intent.)"""
    controller = stack.controller
    intent, revision = controller.store.intent, controller.store.revision
    acked = await cds_acked(stack)
    for method, path, kwargs, status, field in ERRORS:
        async with http.request(method, via_envoy(stack, path), **kwargs) as response:
            got, body = response.status, await response.json()
        assert (got, body.get("field")) == (status, field), (method, path, body)
        assert body["error"] and body["detail"]
        assert controller.store.intent is intent and controller.store.revision == revision
    assert await cds_acked(stack) == acked


READS = [
    STRATEGY,
    "/api/v1/router/services",
    QDRANT,
    "/api/v1/router/proxies",
    "/api/v1/router/openapi.json",
    "/api/v1/router/services/nope/backends",
]


async def test_admin_answers_alike_through_envoy_and_direct(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    """Every read (and an error) answers the same status and JSON through Envoy's
    listener and on the controller's own admin address; so does a change."""
    for path in READS:
        through = await send(http, "GET", via_envoy(stack, path))
        assert through == await send(http, "GET", direct(stack, path)), path
    body = {"strategy": "random", "service": "qdrant"}
    await send(http, "PUT", direct(stack, STRATEGY), body)  # both below repeat it
    answers = [
        await send(http, "PUT", url, body)
        for url in (via_envoy(stack, STRATEGY), direct(stack, STRATEGY))
    ]
    stable = ("previous_by_service", "new_strategy", "strategy_applied", "changed_services")
    envoy_answer, direct_answer = ({k: a["strategy_change"][k] for k in stable} for _, a in answers)
    assert [status for status, _ in answers] == [200, 200]
    assert envoy_answer == direct_answer and envoy_answer["changed_services"] == []


async def test_backend_added_drained_and_removed_in_envoy(
    stack: Stack, http: aiohttp.ClientSession, tmp_path: Any
) -> None:
    """A new sample backend added through the API is in Envoy's /clusters when
    the answer arrives and takes traffic; drained, it takes none; removed, it
    is gone from Envoy."""
    extra = Backend("qdrant-tertiary", LOOPBACK, free_port())
    child = await start_backend(extra, "qdrant", tmp_path)
    try:
        new = {"name": extra.name, "address": extra.address, "port": extra.port}
        status, body = await send(http, "POST", via_envoy(stack, QDRANT), new)
        assert status == 201 and body["applied"] is True, body
        assert extra.name in await envoy_hosts(stack)
        seen = await send_many(http, via_envoy(stack, SEARCH), 300)
        assert min(seen[name] for name in ("qdrant-primary", "qdrant-secondary", extra.name)) > 50

        url = via_envoy(stack, f"{QDRANT}/{extra.name}")
        status, body = await send(http, "PATCH", url, {"draining": True})
        assert status == 200 and body["applied"] is True, body
        seen = await send_many(http, via_envoy(stack, SEARCH), 100)
        assert seen[extra.name] == 0 and sum(seen.values()) == 100, seen

        status, body = await send(http, "DELETE", url)
        assert status == 200 and body["applied"] is True, body
        assert extra.name not in await envoy_hosts(stack)
    finally:
        await child.stop()

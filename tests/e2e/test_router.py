"""The router end to end: sample backends, the controller and a real Envoy 1.40."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import shutil

import aiohttp
import pytest

from tests.factories import SEARCH_BODY
from tests.support import eventually, send_many
from xds_server.cache import build_snapshot
from xds_server.demo import Stack
from xds_server.model.intent import Strategy
from xds_server.resources import ENDPOINT
from xds_server.translate import translate

pytestmark = pytest.mark.envoy

CHAT = {"messages": [{"role": "user", "content": "hi"}]}
ROUTED = {
    "qdrant": ("/api/v1/vectors/search", SEARCH_BODY),
    "embedding": ("/api/v1/embeddings", {"input": "hello"}),
    "phi3": ("/api/v1/models/phi3/chat/completions", CHAT),
    "hermes": ("/api/v1/models/hermes/chat/completions", CHAT),
    "mixtral": ("/api/v1/models/mixtral/chat/completions", CHAT),
}


def router_url(stack: Stack, path: str) -> str:
    return f"http://{stack.controller.store.intent.listen}{path}"


async def cluster_config(stack: Stack, name: str) -> tuple[str, dict[str, object]]:
    """("active" | "warming", cluster) from Envoy's /config_dump."""
    dump = await stack.envoy.admin_json("/config_dump?resource=dynamic_active_clusters")
    for entry in dump["configs"]:
        if entry["cluster"]["name"] == name:
            return "active", entry["cluster"]
    dump = await stack.envoy.admin_json("/config_dump?resource=dynamic_warming_clusters")
    for entry in dump["configs"]:
        if entry["cluster"]["name"] == name:
            return "warming", entry["cluster"]
    raise AssertionError(f"Envoy has no cluster {name}")


@pytest.mark.parametrize("service", sorted(ROUTED))
async def test_each_service_is_reachable_through_envoy(
    stack: Stack, http: aiohttp.ClientSession, service: str
) -> None:
    """Traffic to each route of the shipped configuration reaches a backend of that service."""
    path, body = ROUTED[service]
    backends = {b.name for b in stack.controller.store.intent.service(service).backends}  # type: ignore[union-attr]
    async with http.post(router_url(stack, path), json=body) as response:
        assert response.status == 200
        assert response.headers["x-backend"] in backends
        assert (await response.json())["backend"] in backends


async def test_admin_api_is_routed_through_envoy(stack: Stack, http: aiohttp.ClientSession) -> None:
    """/api/v1/router/ goes to the controller, which sees the Envoy it configures."""
    async with http.get(router_url(stack, "/api/v1/router/proxies")) as response:
        assert response.status == 200
        proxies = (await response.json())["proxies"]
    assert [p["node_id"] for p in proxies] == ["envoy-demo"]
    assert proxies[0]["envoy_admin"] == str(stack.envoy.admin)


async def test_round_robin_splits_evenly(stack: Stack, http: aiohttp.ClientSession) -> None:
    """1,000 qdrant requests split 50/50 between primary and secondary (±2)."""
    seen = await send_many(http, router_url(stack, "/api/v1/vectors/search"), 1000)
    assert set(seen) == {"qdrant-primary", "qdrant-secondary"}, seen
    assert abs(seen["qdrant-primary"] - 500) <= 2, seen


async def test_intent_change_reaches_envoy_and_is_acked(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    """A strategy change is published, ACKed by Envoy, active (not warming:
    docs/xds-protocol.md rule 23 re-sent the endpoints) within a second, and
    traffic keeps flowing."""
    controller = stack.controller
    _, revision = await controller.store.update(
        lambda intent: dataclasses.replace(
            intent,
            services=tuple(
                dataclasses.replace(s, strategy=Strategy.LEAST_CONNECTIONS)
                if s.name == "qdrant"
                else s
                for s in intent.services
            ),
        )
    )
    generation = await asyncio.wait_for(controller.publisher.wait_for_revision(revision), 5)
    assert await controller.proxies.wait_until_applied(generation, timeout_s=5) == []

    async def active_least_request() -> bool:
        state, cluster = await cluster_config(stack, "qdrant")
        return state == "active" and cluster.get("lb_policy") == "LEAST_REQUEST"

    assert await eventually(active_least_request, timeout_s=5) < 1.0
    seen = await send_many(http, router_url(stack, "/api/v1/vectors/search"), 50)
    assert sum(seen[b] for b in ("qdrant-primary", "qdrant-secondary")) == 50, seen


async def test_rejected_config_is_recorded_and_never_resent(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    """Envoy NACKs an endpoint it cannot parse: the NACK and its message are
    recorded, the last good config keeps serving, the rejected version is not
    sent again (docs/xds-protocol.md rule 7), and the next good version is
    ACKed."""
    controller, cache = stack.controller, stack.controller.cache
    good = translate(controller.store.intent)
    bad_endpoints = dict(good[ENDPOINT])
    broken = type(bad_endpoints["qdrant"])()
    broken.CopyFrom(bad_endpoints["qdrant"])
    broken.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address = "not-an-ip"
    bad_endpoints["qdrant"] = broken
    await cache.publish(build_snapshot({**good, ENDPOINT: bad_endpoints}, cache.generation + 1))
    bad_generation = cache.generation

    failures = await controller.proxies.wait_until_applied(bad_generation, timeout_s=5)
    assert [f.node_id for f in failures] == ["envoy-demo"]
    assert "not-an-ip" in failures[0].reason
    eds = controller.proxies.connected()[0].types[ENDPOINT]
    assert eds.nacks == 1 and eds.last_nack is not None
    responses_after_nack = eds.responses

    seen = await send_many(http, router_url(stack, "/api/v1/vectors/search"), 20)
    assert sum(seen[b] for b in ("qdrant-primary", "qdrant-secondary")) == 20, seen
    await asyncio.sleep(2)
    assert eds.responses == responses_after_nack and eds.nacks == 1

    await cache.publish(build_snapshot(good, cache.generation + 1))
    assert await controller.proxies.wait_until_applied(cache.generation, timeout_s=5) == []
    assert eds.nacks == 1


@pytest.mark.skipif(shutil.which("ab") is None, reason="ab (apache2-utils) is not installed")
async def test_spec_load_test_with_ab_has_no_failures(stack: Stack, tmp_path: object) -> None:
    """The spec's `ab` (HTTP/1.0) gets 200s, not 426: accept_http_10 is on."""
    body = tmp_path / "search.json"  # type: ignore[operator]
    body.write_text(json.dumps(SEARCH_BODY))
    url = router_url(stack, "/api/v1/vectors/search")
    process = await asyncio.create_subprocess_exec(
        *("ab", "-q", "-n", "300", "-c", "10", "-s", "10", "-p", str(body)),
        *("-T", "application/json", url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output = (await asyncio.wait_for(process.communicate(), 60))[0].decode()
    assert process.returncode == 0, output
    assert "Failed requests:        0" in output, output
    assert "Non-2xx responses" not in output, output
    assert "Complete requests:      300" in output, output


async def test_envoy_speaks_the_transport_it_was_bootstrapped_with(stack: Stack) -> None:
    """The Delta runs of this suite really are Delta: the stream kind the
    controller serves matches the api_type in Envoy's own bootstrap."""
    dump = await stack.envoy.admin_json("/config_dump?mask=bootstrap")
    api_type = dump["configs"][0]["bootstrap"]["dynamic_resources"]["ads_config"]["api_type"]
    kinds = {s.info.kind for s in stack.controller.engine.open_streams if s.info is not None}
    assert kinds == ({"ads-delta"} if api_type == "DELTA_GRPC" else {"ads"})

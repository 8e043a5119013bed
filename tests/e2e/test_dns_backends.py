"""Backends addressed by DNS name, end to end: a real dnsmasq answers the
controller's lookups, a real Envoy 1.40 routes to the addresses it published, the
sample backends listen on loopback addresses the records point at."""

from __future__ import annotations

import collections
import dataclasses
import time

import aiohttp
import pytest

from tests.dns_support import DnsServer
from tests.e2e.conftest import StackFactory
from tests.factories import local_settings
from tests.support import eventually, send_many
from xds_server.demo import Stack
from xds_server.model.intent import Backend, Intent
from xds_server.proxy.processes import free_port
from xds_server.settings import Settings

pytestmark = pytest.mark.envoy

REFRESH_S = 1.0  # router.dns_refresh_interval of these tests
NAME = "svc.test"
REQUESTS = 20


def with_qdrant(settings: Settings, *backends: Backend) -> Settings:
    """`settings` with qdrant's backends replaced."""
    return dataclasses.replace(settings, intent=qdrant_backends(settings.intent, *backends))


def qdrant_backends(intent: Intent, *backends: Backend) -> Intent:
    services = tuple(
        dataclasses.replace(s, backends=backends) if s.name == "qdrant" else s
        for s in intent.services
    )
    return dataclasses.replace(intent, services=services)


async def answered_by(http: aiohttp.ClientSession, stack: Stack) -> collections.Counter[str]:
    url = f"http://{stack.controller.store.intent.listen}/api/v1/vectors/search"
    return await send_many(http, url, REQUESTS, concurrency=4)


async def report_entry(http: aiohttp.ClientSession, stack: Stack, key: str) -> dict[str, object]:
    url = f"http://{stack.controller.admin_address}/api/v1/router/health"
    async with http.get(url) as response:
        body = await response.json()
    entry: dict[str, object] = body["health_status"]["qdrant"][key]
    return entry


async def counted_requests(http: aiohttp.ClientSession, stack: Stack, backend: str) -> int:
    """The routing metrics' request count of `backend` (a fresh reading of Envoy)."""
    url = f"http://{stack.controller.admin_address}/api/v1/router/metrics?service=qdrant"
    async with http.get(url) as response:
        body = await response.json()
    spread = body["load_balancing"]["backend_distribution"]
    return int(spread.get(backend, {}).get("requests", 0))


async def test_a_backend_addressed_as_localhost_routes(
    make_stack: StackFactory, http: aiohttp.ClientSession
) -> None:
    """`address: localhost` works out of the box (no DNS server involved): Envoy gets
    127.0.0.1 as the endpoint, requests reach both qdrant backends, and the health
    report lists the address and a healthy verdict."""
    base = local_settings(worker_threads=2)
    qdrant = base.intent.service("qdrant")
    assert qdrant is not None
    local = [dataclasses.replace(b, address="localhost") for b in qdrant.backends]
    stack = await make_stack(with_qdrant(base, *local))
    seen = await answered_by(http, stack)
    assert set(seen) == {b.name for b in local}, seen
    entry = await report_entry(http, stack, "primary")
    assert entry["addresses"] == ["127.0.0.1"] and entry["status"] == "healthy", entry


async def test_records_that_change_move_the_traffic_within_one_refresh(
    make_stack: StackFactory, http: aiohttp.ClientSession, dns_server: DnsServer
) -> None:
    """One backend named svc.test, two sample backends on 127.0.0.1 and 127.0.0.2
    (same port): requests go where the records point, follow a changed record within
    one refresh interval, split over two records, which the routing metrics count as
    the one backend; when the DNS server is gone the last addresses keep serving and
    the health report shows the lookup error."""
    port = free_port()
    samples = (Backend("qdrant-a", "127.0.0.1", port), Backend("qdrant-b", "127.0.0.2", port))
    settings = local_settings(
        worker_threads=2, dns_servers=(dns_server.address,), dns_refresh_interval_s=REFRESH_S
    )
    stack = await make_stack(with_qdrant(settings, *samples))  # starts both samples
    await dns_server.set_records({NAME: ["127.0.0.1"]})
    named = Backend("qdrant-dns", NAME, port)
    await stack.controller.store.put(qdrant_backends(stack.controller.store.intent, named))

    async def only(*names: str) -> bool:
        return set(await answered_by(http, stack)) == set(names)

    await eventually(lambda: only("qdrant-a"), timeout_s=10)
    await dns_server.set_records({NAME: ["127.0.0.2"]})
    changed_at = time.monotonic()
    await eventually(lambda: only("qdrant-b"), timeout_s=10)
    assert time.monotonic() - changed_at < 2 * REFRESH_S + 1.0  # one refresh + publish
    await dns_server.set_records({NAME: ["127.0.0.1", "127.0.0.2"]})
    await eventually(lambda: only("qdrant-a", "qdrant-b"), timeout_s=10)
    entry = await report_entry(http, stack, "dns")
    assert entry["addresses"] == ["127.0.0.1", "127.0.0.2"] and "dns_error" not in entry
    # Both endpoints are one backend in the routing metrics (Envoy's hostname).
    before = await counted_requests(http, stack, "qdrant-dns")
    seen = await answered_by(http, stack)
    assert set(seen) == {"qdrant-a", "qdrant-b"}, seen
    assert await counted_requests(http, stack, "qdrant-dns") == before + REQUESTS

    await dns_server.stop()

    async def lookup_failed() -> bool:
        return "dns_error" in await report_entry(http, stack, "dns")

    await eventually(lookup_failed, timeout_s=10)
    entry = await report_entry(http, stack, "dns")
    assert entry["addresses"] == ["127.0.0.1", "127.0.0.2"], entry
    assert f"DNS lookup of {NAME} failed" in str(entry["dns_error"])
    assert await only("qdrant-a", "qdrant-b")  # still served by the last addresses


async def test_a_name_that_never_resolves_is_unhealthy_with_the_reason(
    make_stack: StackFactory, http: aiohttp.ClientSession, dns_server: DnsServer
) -> None:
    """A backend whose name the DNS server does not know has no endpoint in Envoy and
    is unhealthy in the health report with the lookup's error; its sibling serves."""
    settings = local_settings(
        worker_threads=2, dns_servers=(dns_server.address,), dns_refresh_interval_s=REFRESH_S
    )
    stack = await make_stack(settings)
    qdrant = stack.controller.store.intent.service("qdrant")
    assert qdrant is not None
    primary, secondary = qdrant.backends
    lost = dataclasses.replace(secondary, address="lost.test")
    await stack.controller.store.put(qdrant_backends(stack.controller.store.intent, primary, lost))

    async def unhealthy() -> bool:
        return (await report_entry(http, stack, "secondary"))["status"] == "unhealthy"

    await eventually(unhealthy, timeout_s=10)
    entry = await report_entry(http, stack, "secondary")
    assert entry["addresses"] == [] and "DNS lookup of lost.test failed" in str(entry["error"])
    assert set(await answered_by(http, stack)) == {primary.name}
    clusters = await stack.envoy.admin_json("/clusters?format=json")
    hostnames = {
        h.get("hostname")
        for c in clusters["cluster_statuses"]
        if c["name"] == "qdrant"
        for h in c.get("host_statuses", [])
    }
    assert hostnames == {primary.name}

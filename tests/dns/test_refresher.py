"""The refresher's rules (xds_server/dns/refresher.py) on the in-memory twin of a
resolver; the c-ares resolver against a real dnsmasq is tests/dns/test_cares.py."""

from __future__ import annotations

import asyncio

from tests.factories import one_service
from tests.support import eventually
from xds_server.cache import SnapshotCache
from xds_server.dns.memory import MemoryResolver
from xds_server.dns.refresher import DnsRefresher
from xds_server.model.intent import Backend, Intent
from xds_server.pipeline.publisher import Publisher
from xds_server.resources import ENDPOINT
from xds_server.store.memory import MemoryStore


def named(*hosts: str) -> Intent:
    """One service with a backend per host (b0, b1, ...) on port 9000."""
    return one_service(*(Backend(f"b{i}", host, 9000) for i, host in enumerate(hosts)))


def refresher(
    store: MemoryStore, resolver: MemoryResolver, interval_s: float = 30.0
) -> tuple[DnsRefresher, list[None]]:
    changes: list[None] = []
    return DnsRefresher(
        store, resolver, lambda: changes.append(None), interval_s=interval_s, timeout_s=1.0
    ), changes


async def test_start_resolves_every_name_and_localhost_without_asking() -> None:
    """Before the first publish every name of the intent has its addresses; an IP
    backend is no name; localhost is 127.0.0.1 without a lookup (RFC 6761)."""
    resolver = MemoryResolver({"a.test": ["127.0.0.3", "127.0.0.2"]})
    dns, changes = refresher(MemoryStore(named("a.test", "localhost", "127.0.0.9")), resolver)
    await dns.start()
    assert dict(dns.addresses) == {
        "a.test": ("127.0.0.2", "127.0.0.3"),
        "localhost": ("127.0.0.1",),
    }
    assert resolver.lookups == {"a.test": 1} and len(changes) == 1


async def test_a_round_that_changes_several_names_is_one_change() -> None:
    """Two names whose records both changed in one round call on_change once (one
    publish, one EDS update); a round that changes nothing calls it not at all."""
    resolver = MemoryResolver({"a.test": ["127.0.0.1"], "b.test": ["127.0.0.1"]})
    store = MemoryStore(named("a.test", "b.test"))
    dns, changes = refresher(store, resolver)
    await dns.start()
    changes.clear()
    assert not await dns.refresh(["a.test", "b.test"]) and changes == []
    resolver.set("a.test", ["127.0.0.2"])
    resolver.set("b.test", ["127.0.0.2", "::1"])
    assert await dns.refresh(["a.test", "b.test"]) and len(changes) == 1
    assert dict(dns.addresses) == {"a.test": ("127.0.0.2",), "b.test": ("127.0.0.2", "::1")}


async def test_a_failed_lookup_keeps_the_last_addresses_and_says_why() -> None:
    """A lookup that fails keeps the last good addresses (no change, no publish) and
    records the error; the next success clears it. A name that never resolved has
    no address and its error."""
    resolver = MemoryResolver({"a.test": ["127.0.0.1"]})
    dns, changes = refresher(MemoryStore(named("a.test", "never.test")), resolver)
    await dns.start()
    resolver.fail("a.test", "server failure")
    changes.clear()
    assert not await dns.refresh(["a.test", "never.test"]) and changes == []
    lookup = dns.lookup_of("a.test")
    assert lookup is not None and lookup.addresses == ("127.0.0.1",)
    assert lookup.error == "DNS lookup of a.test failed: server failure"
    never = dns.lookup_of("never.test")
    assert never is not None and never.addresses == () and "no such name" in (never.error or "")
    assert "never.test" not in dns.addresses
    resolver.set("a.test", ["127.0.0.1"])
    await dns.refresh(["a.test"])
    recovered = dns.lookup_of("a.test")
    assert recovered is not None and recovered.error is None


async def test_a_lookup_that_hangs_fails_at_the_timeout() -> None:
    """A resolver that never answers is a failure after timeout_s, not a stuck round."""

    class Hanging(MemoryResolver):
        async def resolve(self, name: str) -> tuple[str, ...]:
            await asyncio.Event().wait()
            raise AssertionError

    dns = DnsRefresher(MemoryStore(named("a.test")), Hanging(), lambda: None, timeout_s=0.05)
    await asyncio.wait_for(dns.start(), 2.0)
    lookup = dns.lookup_of("a.test")
    assert lookup is not None and lookup.error is not None
    assert "no answer within 0.05s" in lookup.error


async def test_run_follows_the_intent_and_the_interval() -> None:
    """A name added to the intent is looked up at once (long before the interval);
    every name is looked up again each interval; a removed name is forgotten."""
    resolver = MemoryResolver({"a.test": ["127.0.0.1"], "b.test": ["127.0.0.2"]})
    store = MemoryStore(named("a.test"))
    dns, _ = refresher(store, resolver, interval_s=3600)
    await dns.start()
    task = asyncio.create_task(dns.run())
    try:
        await store.put(named("a.test", "b.test"))
        await eventually(lambda: _has(dns, "b.test"), timeout_s=2)
        assert resolver.lookups["a.test"] == 1  # an intent change asks only new names
        await store.put(named("b.test"))
        await eventually(lambda: _gone(dns, "a.test"), timeout_s=2)
    finally:
        task.cancel()
    fast, _ = refresher(MemoryStore(named("a.test")), resolver, interval_s=0.05)
    task = asyncio.create_task(fast.run())
    try:
        before = resolver.lookups["a.test"]
        await eventually(lambda: _asked(resolver, "a.test", before + 3), timeout_s=2)
    finally:
        task.cancel()


async def test_changed_records_reach_the_snapshot_in_one_publish() -> None:
    """Wired as app.py wires them, a round in which two backends' records change
    gives exactly one new snapshot generation, holding the new endpoints."""
    resolver = MemoryResolver({"a.test": ["127.0.0.1"], "b.test": ["127.0.0.1"]})
    store = MemoryStore(named("a.test", "b.test"))
    cache = SnapshotCache()
    publisher: Publisher | None = None
    dns = DnsRefresher(store, resolver, lambda: publisher and publisher.mark_dirty())
    publisher = Publisher(store, cache, addresses=lambda: dns.addresses)
    await dns.start()
    task = asyncio.create_task(publisher.run())
    try:
        await eventually(lambda: _generation(cache, 1))
        resolver.set("a.test", ["127.0.0.2"])
        resolver.set("b.test", ["127.0.0.3", "127.0.0.4"])
        await dns.refresh(["a.test", "b.test"])
        await eventually(lambda: _generation(cache, 2))
        await asyncio.sleep(0.2)  # nothing more follows
        assert cache.generation == 2
    finally:
        task.cancel()
    endpoints = cache.snapshot.of(ENDPOINT) if cache.snapshot is not None else None
    assert endpoints is not None
    assignment = endpoints.resources["svc"].message
    hosts = [
        (e.endpoint.hostname, e.endpoint.address.socket_address.address)
        for group in assignment.endpoints  # type: ignore[attr-defined]
        for e in group.lb_endpoints
    ]
    assert sorted(hosts) == [("b0", "127.0.0.2"), ("b1", "127.0.0.3"), ("b1", "127.0.0.4")]


async def _has(dns: DnsRefresher, name: str) -> bool:
    return name in dns.addresses


async def _gone(dns: DnsRefresher, name: str) -> bool:
    return dns.lookup_of(name) is None and name not in dns.addresses


async def _asked(resolver: MemoryResolver, name: str, times: int) -> bool:
    return resolver.lookups[name] >= times


async def _generation(cache: SnapshotCache, generation: int) -> bool:
    return cache.generation == generation

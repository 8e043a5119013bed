"""The c-ares resolver (xds_server/dns/cares.py) against a real dnsmasq on a
loopback port: what router.dns_servers points the controller at."""

from __future__ import annotations

import pytest

from tests.dns_support import DnsServer
from xds_server.dns.cares import CaresResolver
from xds_server.errors import LookupFailed


async def test_every_a_and_aaaa_record_sorted(dns_server: DnsServer) -> None:
    """A name with two A records and one AAAA resolves to all three, IPv4 first,
    each once, from the server named as ip:port."""
    await dns_server.set_records({"svc.test": ["127.0.0.2", "::1", "127.0.0.1"]})
    resolver = CaresResolver([dns_server.address], timeout_s=2.0)
    try:
        assert await resolver.resolve("svc.test") == ("127.0.0.1", "127.0.0.2", "::1")
    finally:
        await resolver.close()


async def test_changed_records_are_seen_by_the_next_lookup(dns_server: DnsServer) -> None:
    """Records rewritten mid-test (SIGHUP to dnsmasq) are the next lookup's answer:
    the resolver keeps no cache of its own that would hide a change."""
    await dns_server.set_records({"svc.test": ["127.0.0.1"]})
    resolver = CaresResolver([dns_server.address], timeout_s=2.0)
    try:
        assert await resolver.resolve("svc.test") == ("127.0.0.1",)
        await dns_server.set_records({"svc.test": ["127.0.0.2"]})
        assert await resolver.resolve("svc.test") == ("127.0.0.2",)
    finally:
        await resolver.close()


async def test_unknown_name_and_dead_server_are_lookup_failures(dns_server: DnsServer) -> None:
    """A name the server does not know, and any name once the server is gone, raise
    LookupFailed naming the name and the reason, within the timeout."""
    await dns_server.set_records({"svc.test": ["127.0.0.1"]})
    resolver = CaresResolver([dns_server.address], timeout_s=1.0)
    try:
        with pytest.raises(LookupFailed, match=r"DNS lookup of nope\.test failed: "):
            await resolver.resolve("nope.test")
        await dns_server.stop()
        with pytest.raises(LookupFailed, match=r"DNS lookup of svc\.test failed: "):
            await resolver.resolve("svc.test")
    finally:
        await resolver.close()

"""Probes of every address of a backend (health/addresses.py) and the Host a
probe of a named backend sends (health/probe.py)."""

from __future__ import annotations

import time

from aiohttp import web

from tests.factories import one_service
from xds_server.dns.memory import MemoryResolver
from xds_server.dns.refresher import DnsRefresher
from xds_server.health.addresses import NOT_RESOLVED_YET, EachAddress
from xds_server.health.grpc_probe import GrpcProber
from xds_server.health.probe import HttpProber, new_session
from xds_server.health.verdict import ProbeResult
from xds_server.model.intent import Backend
from xds_server.proxy.processes import free_port
from xds_server.samples.grpc_sample import start_backend as start_grpc_sample
from xds_server.store.memory import MemoryStore

NAMED = Backend("svc", "svc.test", 9000)


class Scripted:
    """An AddressProber whose result per IP the test sets; it records each call."""

    def __init__(self, results: dict[str, ProbeResult]) -> None:
        self.results = results
        self.calls: list[tuple[str, str]] = []

    async def __call__(self, backend: Backend, ip: str) -> ProbeResult:
        self.calls.append((backend.name, ip))
        return self.results[ip]


def result(ok: bool, definitive: bool = False, error: str | None = None) -> ProbeResult:
    return ProbeResult(ok, definitive, 0.01, time.time(), error)


async def resolved(records: dict[str, list[str]], *hosts: str) -> DnsRefresher:
    backends = [Backend(f"b{i}", host, 9000) for i, host in enumerate(hosts)]
    dns = DnsRefresher(MemoryStore(one_service(*backends)), MemoryResolver(records), lambda: None)
    await dns.start()
    return dns


async def test_a_named_backend_passes_only_when_every_address_passes() -> None:
    """Each resolved address is probed; all passing is a pass; one refusing makes a
    definitive failure that names that address (Envoy would send it traffic too)."""
    dns = await resolved({"svc.test": ["127.0.0.1", "127.0.0.2"]}, "svc.test")
    prober = Scripted({"127.0.0.1": result(True), "127.0.0.2": result(True)})
    assert (await EachAddress(prober, dns)(NAMED)).ok
    assert sorted(prober.calls) == [("svc", "127.0.0.1"), ("svc", "127.0.0.2")]
    prober.results["127.0.0.2"] = result(False, True, "connect: refused")
    failed = await EachAddress(prober, dns)(NAMED)
    assert (failed.ok, failed.definitive, failed.error) == (
        False,
        True,
        "127.0.0.2: connect: refused",
    )
    prober.results["127.0.0.2"] = result(False, False, "timeout")
    assert not (await EachAddress(prober, dns)(NAMED)).definitive


async def test_names_without_addresses_fail_with_the_dns_reason() -> None:
    """A name that never resolved fails definitively with the lookup's error (no
    probe is sent); one not looked up yet fails ambiguously; an IP backend is probed
    at its own address, whatever DNS knows."""
    dns = await resolved({}, "svc.test")
    prober = Scripted({"127.0.0.9": result(True)})
    never = await EachAddress(prober, dns)(NAMED)
    assert never.definitive and "DNS lookup of svc.test failed" in (never.error or "")
    not_yet = await EachAddress(prober, dns)(Backend("other", "other.test", 9000))
    assert (not_yet.definitive, not_yet.error) == (False, NOT_RESOLVED_YET)
    assert prober.calls == []
    assert (await EachAddress(prober, None)(Backend("ip", "127.0.0.9", 9000))).ok
    assert prober.calls == [("ip", "127.0.0.9")]


async def test_http_probe_of_a_named_backend_asks_for_the_name() -> None:
    """The HTTP probe connects to the resolved IP and sends the backend's name as Host
    (name:port); an IP backend gets aiohttp's own Host (ip:port)."""
    hosts: list[str] = []

    async def health(request: web.Request) -> web.Response:
        hosts.append(request.headers["Host"])
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/health", health)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with new_session() as session:
            prober = HttpProber(session, timeout_s=2.0)
            named = Backend("svc", "svc.test", port)
            assert (await prober.at(named, "127.0.0.1")).ok
            assert (await prober(Backend("ip", "127.0.0.1", port))).ok
    finally:
        await runner.cleanup()
    assert hosts == [f"svc.test:{port}", f"127.0.0.1:{port}"]


async def test_grpc_probe_of_a_named_backend_dials_the_resolved_ip() -> None:
    """The gRPC health check of a named backend connects to the address given, not
    to the name (`greeter.invalid` resolves nowhere), and passes against the sample."""
    server, port = await start_grpc_sample("greeter-a")
    try:
        named = Backend("greeter-a", "greeter.invalid", port)
        assert (await GrpcProber("", 2.0).at(named, "127.0.0.1")).ok
    finally:
        await server.stop(None)

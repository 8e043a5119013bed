"""translate/hds.py's HealthCheckSpecifier run by a real Envoy 1.40 over HDS, its
reports read through health/aggregation.py.

The HDS server here is a minimal one of this test (it sends the specifier and
collects reports): what is under test is what Envoy makes of our specifier (it
validates it, else it ignores it with a warning) and what it reports, not the
controller's HDS servicer (tested on its own). Every backend
is real: aiohttp servers, on two loopback addresses for a DNS name, one over
TLS with a certificate of a test CA, and the gRPC sample serving and not
serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web
from envoy.service.health.v3 import hds_pb2, hds_pb2_grpc

from tests.tls_support import Pki
from xds_server.health.aggregation import Reports, health_of_status
from xds_server.health.verdict import HealthPolicy
from xds_server.model.intent import Backend, Health, Intent, Protocol, Service, SocketAddress
from xds_server.model.upstream_tls import UpstreamTls
from xds_server.proxy.envoy_process import start_envoy
from xds_server.proxy.processes import free_port
from xds_server.samples.grpc_sample import start_backend as start_grpc_backend
from xds_server.translate.hds import health_check_specifier

pytestmark = pytest.mark.envoy

LOOPBACK, SECOND_LOOPBACK = "127.0.0.1", "127.0.0.2"
REPORT_S = 0.25
SLOW_S = 1.5  # the slow backend's answer: longer than two report intervals
POLICY = HealthPolicy(interval_s=1.0, timeout_s=2.5, healthy_threshold=2, unhealthy_threshold=3)
Statuses = dict[str, dict[str, Health]]  # cluster -> address -> health, of one report


class SpecifierServer(hds_pb2_grpc.HealthDiscoveryServiceServicer):
    """Answers Envoy's first message with the specifier; keeps every report."""

    def __init__(self, specifier: hds_pb2.HealthCheckSpecifier) -> None:
        self.specifier = specifier
        self.reports: list[tuple[float, Statuses]] = []

    async def StreamHealthCheck(
        self, requests: AsyncIterator[Any], context: object
    ) -> AsyncIterator[hds_pb2.HealthCheckSpecifier]:
        async for message in requests:
            if message.HasField("health_check_request"):
                yield self.specifier
            else:
                self.reports.append((time.time(), statuses(message.endpoint_health_response)))


def statuses(response: Any) -> Statuses:
    return {
        cluster.cluster_name: {
            e.endpoint.address.socket_address.address: health_of_status(e.health_status)
            for locality in cluster.locality_endpoints_health
            for e in locality.endpoints_health
        }
        for cluster in response.cluster_endpoints_health
    }


class Seen:
    """(address, path, Host) of every request the HTTP backends got."""

    def __init__(self) -> None:
        self.requests: set[tuple[str, str, str]] = set()

    def app(self, status: int, delay_s: float = 0.0) -> web.Application:
        async def answer(request: web.Request) -> web.Response:
            sockname = request.transport.get_extra_info("sockname") if request.transport else None
            self.requests.add((sockname[0] if sockname else "?", request.path, request.host))
            await asyncio.sleep(delay_s)
            return web.Response(status=status)

        app = web.Application()
        app.router.add_get("/{tail:.*}", answer)
        return app


@contextlib.asynccontextmanager
async def http_backend(
    app: web.Application, host: str, port: int, context: ssl.SSLContext | None = None
) -> AsyncIterator[None]:
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, ssl_context=context).start()
        yield
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def grpc_backend(*, serving: bool) -> AsyncIterator[int]:
    server, port = await start_grpc_backend("g", LOOPBACK, serving=serving)
    try:
        yield port
    finally:
        await server.stop(0)


def bootstrap(hds_port: int) -> dict[str, Any]:
    """An Envoy with nothing but hds_config (HTTP/2 to the HDS server)."""
    endpoint = {"address": {"socket_address": {"address": LOOPBACK, "port_value": hds_port}}}
    http2 = {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }
    return {
        "node": {"id": "envoy-hds-test", "cluster": "test"},
        "static_resources": {
            "clusters": [
                {
                    "name": "hds",
                    "type": "STATIC",
                    "connect_timeout": "1s",
                    "typed_extension_protocol_options": {
                        "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": http2
                    },
                    "load_assignment": {
                        "cluster_name": "hds",
                        "endpoints": [{"lb_endpoints": [{"endpoint": endpoint}]}],
                    },
                }
            ]
        },
        "hds_config": {
            "api_type": "GRPC",
            "transport_api_version": "V3",
            "grpc_services": [{"envoy_grpc": {"cluster_name": "hds"}}],
        },
    }


async def wait_for(condition: Any, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s")
        await asyncio.sleep(0.05)


def words(server: SpecifierServer, reports: Reports, backend: str) -> list[Health]:
    """The checker's word on `backend` report after report, as aggregation takes them."""
    return [
        reports.record("envoy", backend, statuses[backend], at)
        for at, statuses in server.reports
        if backend in statuses
    ]


async def test_envoy_runs_the_specifier_and_its_reports_aggregate(tmp_path: Path) -> None:
    """HTTP on the health path with the probe's Host, every address of a DNS name (one
    failing makes the backend unhealthy), TLS verified against the backend's CA, gRPC
    health serving and not; a host Envoy has not checked yet is reported UNHEALTHY,
    which the aggregation does not take as a word (the warm-up)."""
    pki = Pki(tmp_path)
    cert, key = pki.backend_files("api.test")
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    ports = {name: free_port() for name in ("ip", "dns", "slow", "tls", "hds", "admin")}
    seen = Seen()
    async with contextlib.AsyncExitStack() as running:
        enter = running.enter_async_context
        await enter(http_backend(seen.app(200), LOOPBACK, ports["ip"]))
        await enter(http_backend(seen.app(200), LOOPBACK, ports["dns"]))
        await enter(http_backend(seen.app(503), SECOND_LOOPBACK, ports["dns"]))
        await enter(http_backend(seen.app(200, SLOW_S), LOOPBACK, ports["slow"]))
        await enter(http_backend(seen.app(200), LOOPBACK, ports["tls"], tls))
        serving = await enter(grpc_backend(serving=True))
        not_serving = await enter(grpc_backend(serving=False))
        ca = UpstreamTls(ca_pem=pki.ca_file.read_text())
        intent = Intent(
            services=(
                Service(
                    "web",
                    ("/w/",),
                    (
                        Backend("ip-b", LOOPBACK, ports["ip"], health_path="/ready"),
                        Backend("dns-b", "multi.test", ports["dns"]),
                        Backend("slow-b", LOOPBACK, ports["slow"]),
                        Backend("tls-b", "api.test", ports["tls"], tls=ca),
                    ),
                ),
                Service(
                    "rpc",
                    (),
                    (
                        Backend("grpc-up", LOOPBACK, serving),
                        Backend("grpc-down", LOOPBACK, not_serving),
                    ),
                    protocol=Protocol.GRPC,
                ),
            )
        )
        addresses = {"multi.test": (LOOPBACK, SECOND_LOOPBACK), "api.test": (LOOPBACK,)}
        names = [b.name for b in intent.backends()]
        specifier = health_check_specifier(intent, names, POLICY, REPORT_S, addresses)
        server = SpecifierServer(specifier)
        grpc_server = grpc.aio.server()
        hds_pb2_grpc.add_HealthDiscoveryServiceServicer_to_server(server, grpc_server)
        grpc_server.add_insecure_port(f"{LOOPBACK}:{ports['hds']}")
        await grpc_server.start()
        running.push_async_callback(grpc_server.stop, 0)
        envoy = await start_envoy(
            bootstrap(ports["hds"]),
            admin=SocketAddress(LOOPBACK, ports["admin"]),
            workdir=tmp_path / "envoy",
            concurrency=1,
            log_level="info",
        )
        running.push_async_callback(envoy.stop, 2.0)

        def warmed_up() -> bool:
            if not server.reports:
                return False
            first_at = next(at for at, s in server.reports if s)
            latest = server.reports[-1]
            return latest[0] - first_at > POLICY.timeout_s and all(
                h is Health.HEALTHY for h in latest[1].get("slow-b", {}).values()
            )

        await wait_for(warmed_up, timeout_s=20)

    assert "Unable to validate" not in envoy.log_text()
    latest = server.reports[-1][1]
    assert set(latest) == set(names)
    assert latest["dns-b"] == {LOOPBACK: Health.HEALTHY, SECOND_LOOPBACK: Health.UNHEALTHY}
    reports = Reports(stale_after_s=3 * REPORT_S, warmup_s=POLICY.timeout_s)
    final = {name: words(server, reports, name)[-1] for name in names}
    assert final == {
        "ip-b": Health.HEALTHY,
        "dns-b": Health.UNHEALTHY,
        "slow-b": Health.HEALTHY,
        "tls-b": Health.HEALTHY,
        "grpc-up": Health.HEALTHY,
        "grpc-down": Health.UNHEALTHY,
    }
    # The slow backend before its first check ended: Envoy said UNHEALTHY, we heard no word.
    slow_raw = [s["slow-b"][LOOPBACK] for _, s in server.reports if "slow-b" in s]
    assert slow_raw[0] is Health.UNHEALTHY
    assert Health.UNHEALTHY not in words(server, Reports(3 * REPORT_S, POLICY.timeout_s), "slow-b")
    dns, tls_port, ip = ports["dns"], ports["tls"], ports["ip"]
    assert {
        (LOOPBACK, "/ready", f"{LOOPBACK}:{ip}"),
        (LOOPBACK, "/health", f"multi.test:{dns}"),
        (SECOND_LOOPBACK, "/health", f"multi.test:{dns}"),
        (LOOPBACK, "/health", f"api.test:{tls_port}"),
    } <= seen.requests

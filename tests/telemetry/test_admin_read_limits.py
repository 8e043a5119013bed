"""Reads of an Envoy admin are bounded in size and time, and dial only ip:port.

The "Envoy admins" here are loopback servers that misbehave on purpose: one
streams an endless body, one trickles a byte at a time. The controller's reads
must fail with a clear error, stop reading (the server sees the connection
closed after about the cap), and leave the process's memory where it was.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest
from aiohttp import web

from tests.factories import local_settings, running_controller
from tests.support import eventually
from tests.xds.conftest import XdsClient
from xds_server.resources import CLUSTER
from xds_server.telemetry import envoy_stats
from xds_server.xds.status import ProxyStatus

CHUNK = b"[" + b"0," * 32_767 + b"0"  # 64 KiB of a JSON array that never closes
ENDLESS_LIMIT = 8 * 1024**3  # the server's own bound: stop after 8 GiB per connection
# Peak RSS growth allowed while 20 fake proxies are read. Loose on purpose (RSS is
# the whole process's): before the caps, 20 such proxies took a controller from
# 94 MB to 2.24 GB, and five rounds of their traffic readings took a bare reader
# from 43 MB to 1.17 GB; with the caps both stay about 0.3 GB above where they
# started (MAX_CONCURRENT_GETS bodies of at most MAX_BODY_BYTES at once).
LOOSE_RSS_BOUND = 768 * 1024**2
SOCKET_SLACK = 16 * 1024**2  # what kernel buffers may hold beyond what was read


@dataclass
class MisbehavingAdmin:
    """Counts, per connection, what it managed to send before the client hung up."""

    address: str = ""
    sent: list[int] = field(default_factory=list)
    requested_paths: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def misbehaving_admin(*, trickle: bool = False) -> AsyncIterator[MisbehavingAdmin]:
    admin = MisbehavingAdmin()

    async def endless(request: web.Request) -> web.StreamResponse:
        admin.requested_paths.append(request.path_qs)
        response = web.StreamResponse(headers={"content-type": "application/json"})
        await response.prepare(request)
        sent = 0
        try:
            while sent < ENDLESS_LIMIT:
                piece = b"0" if trickle else CHUNK
                await response.write(piece)
                sent += len(piece)
                if trickle:
                    await asyncio.sleep(0.05)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            admin.sent.append(sent)
        return response

    app = web.Application()
    app.router.add_get("/{tail:.*}", endless)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    admin.address = f"127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield admin
    finally:
        await runner.cleanup()


def _proxies(address: str, count: int) -> list[ProxyStatus]:
    return [ProxyStatus(f"fake-{i}", "c", address, 0.0) for i in range(count)]


async def _all_closed(admin: MisbehavingAdmin, connections: int) -> None:
    """At least `connections` requests came, and every one has ended."""

    async def closed() -> bool:
        return len(admin.sent) == len(admin.requested_paths) >= connections

    await eventually(closed, timeout_s=10.0, interval_s=0.01)


async def test_an_endless_body_is_cut_at_the_cap_with_a_clear_error() -> None:
    """20 fake proxies whose admin streams an endless body: every read ends with an
    error naming the cap, long before the read timeout, and the server sees each
    connection closed after at most the cap (plus what the socket buffers hold)."""
    async with misbehaving_admin() as admin:
        stats = await envoy_stats.read_proxies(_proxies(admin.address, 20), timeout_s=30.0)
        await _all_closed(admin, 20)
    cap = envoy_stats.MAX_BODY_BYTES
    assert all(s.error is not None and "larger than" in s.error for s in stats), stats[0].error
    assert max(admin.sent) < cap + SOCKET_SLACK, (max(admin.sent), cap)


async def test_traffic_reads_are_capped_too_and_memory_stays_put() -> None:
    """The traffic sampler's three reads per proxy (clusters, stats, config dump)
    against 20 endless admins, two rounds: each read fails at the cap, and the
    process's peak RSS stays under LOOSE_RSS_BOUND (before the caps: 2 GB and
    more)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    async with misbehaving_admin() as admin:
        async with envoy_stats.one_shot(timeout_s=30.0) as reader:
            for _ in range(2):
                readings = await reader.traffic(_proxies(admin.address, 20))
                assert all(r.error is not None and "larger than" in r.error for r in readings)
        await _all_closed(admin, 2 * 20)  # a failed GET cancels the proxy's other two
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    offered = sum(admin.sent)
    assert grown < LOOSE_RSS_BOUND, (grown, offered)
    assert max(admin.sent) < envoy_stats.MAX_BODY_BYTES + SOCKET_SLACK


async def test_a_trickling_body_is_cut_by_the_read_timeout() -> None:
    """The read timeout covers the whole body, not only the wait for headers: an
    admin that sends a byte every 50 ms forever is given up on after the timeout."""
    async with misbehaving_admin(trickle=True) as admin:
        async with asyncio.timeout(10):  # a hang guard, not a performance bound
            stats = await envoy_stats.read_proxies(_proxies(admin.address, 2), timeout_s=0.5)
        await _all_closed(admin, 2)
    assert [s.error for s in stats] == ["no answer within the read timeout"] * 2
    assert max(admin.sent) < 200  # ~10 bytes in 0.5 s; the connection was closed


@pytest.mark.parametrize(
    "claimed",
    [
        "127.0.0.1:1/x?y=",  # a path injected after the port
        "127.0.0.1:1#frag",
        "user@127.0.0.1:1",
        "localhost:9901",  # a host name, not an IP
        "127.0.0.1",  # no port
        "",
    ],
)
async def test_only_a_plain_ip_port_is_ever_dialled(claimed: str) -> None:
    """Even if a bad address reached a ProxyStatus, the reader refuses it before
    connecting: nothing but `http://<ip>:<port>` and the fixed paths is dialled."""
    async with misbehaving_admin() as admin:
        target = claimed.replace("127.0.0.1:1", admin.address)
        [stats] = await envoy_stats.read_proxies([ProxyStatus("p", "c", target, 0.0)])
        [traffic] = await envoy_stats.read_traffic_of([ProxyStatus("p", "c", target, 0.0)])
    assert stats.error is not None and traffic.error is not None
    assert admin.requested_paths == []


async def test_the_reason_an_address_was_refused_is_the_reading_error() -> None:
    """A proxy whose admin_address the xDS layer refused reports that reason."""
    proxy = ProxyStatus("p", "c", None, 0.0, envoy_admin_problem="admin_address refused: why")
    [stats] = await envoy_stats.read_proxies([proxy])
    [traffic] = await envoy_stats.read_traffic_of([proxy])
    assert stats.error == traffic.error == "admin_address refused: why"


async def test_a_controller_with_twenty_fake_proxies_stays_bounded() -> None:
    """The finding end to end: 20 xDS clients connect to a running controller,
    each naming the endless admin in its node metadata (on its own IP, so it is
    believed), and one more naming it with a path injected. The controller's
    traffic readings fail with a cap's error, the injected one is never
    dialled, only the fixed paths are requested, and RSS stays bounded."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    async with (
        misbehaving_admin() as admin,
        running_controller(local_settings(worker_threads=1)) as controller,
        grpc.aio.insecure_channel(str(controller.xds_address)) as channel,
    ):
        clients = [
            XdsClient(channel, "ads", f"fake-{i}", {"admin_address": admin.address})
            for i in range(20)
        ]
        injected = f"{admin.address}/x?y="
        clients.append(XdsClient(channel, "ads", "injector", {"admin_address": injected}))
        try:
            for client in clients:
                client.send(CLUSTER)
                await client.recv(timeout=5.0)
            assert controller.telemetry is not None
            readings = await controller.telemetry.sampler.sample()
        finally:
            for client in clients:
                await client.close()
    errors = {r.node_id: r.error or "" for r in readings}
    # Whichever cap comes first: 32 MiB, or the 1 s read timeout on a busy host.
    bounded = ("larger than", "no answer within the read timeout")
    odd = {n: e for n, e in errors.items() if n != "injector" and not any(b in e for b in bounded)}
    assert len(errors) == 21 and not odd, odd
    assert errors["injector"].startswith("admin_address refused"), errors["injector"]
    fixed = {envoy_stats.CLUSTERS_PATH, envoy_stats.STATS_PATH, envoy_stats.VERSIONS_PATH}
    assert {p.split("?")[0] for p in admin.requested_paths} == {p.split("?")[0] for p in fixed}
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    assert grown < LOOSE_RSS_BOUND, grown
    assert max(admin.sent) < envoy_stats.MAX_BODY_BYTES + SOCKET_SLACK

"""HTTP probes of a backend's health path (aiohttp): a 2xx answer within the
timeout passes; a non-2xx answer, a refused connection or a certificate that
does not verify (a TLS backend, health/tls.py) is a definitive failure;
anything else (timeout, reset) is ambiguous and counts towards the threshold."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

import aiohttp

from xds_server.health.tls import request_options, tls_reason
from xds_server.health.verdict import ProbeResult
from xds_server.model.intent import Backend, SocketAddress
from xds_server.model.values import is_ip, probe_host

log = logging.getLogger("xds_server.health")


Prober = Callable[[Backend], Awaitable[ProbeResult]]
# Probes one backend at one of its IP addresses (a name's resolved records).
AddressProber = Callable[[Backend, str], Awaitable[ProbeResult]]


def probe_url(backend: Backend, ip: str | None = None) -> str:
    """The health path at `ip` (default: the backend's address, an IP literal)."""
    where = SocketAddress(backend.address if ip is None else ip, backend.port)
    scheme = "http" if backend.tls is None else "https"
    return f"{scheme}://{where}{backend.health_path}"


def host_header(backend: Backend) -> dict[str, str]:
    """A backend named by DNS is asked for by its name, as its clients name it
    (a virtual host behind the name answers for the name, not for the IP); for an
    IP literal aiohttp's own Host is the same (model/values.py probe_host)."""
    if is_ip(backend.address):
        return {}
    return {"Host": probe_host(backend)}


class HttpProber:
    """GET the health path over a fresh connection each time.

    No keep-alive on purpose: a pooled connection to a killed backend fails as
    an ambiguous disconnect, a fresh one as a definitive refusal; and the
    response time then includes connecting, as a client's would.
    """

    def __init__(self, session: aiohttp.ClientSession, timeout_s: float) -> None:
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def __call__(self, backend: Backend) -> ProbeResult:
        return await self.at(backend, backend.address)

    async def at(self, backend: Backend, ip: str) -> ProbeResult:
        """Probe `backend` at one of its addresses (health/addresses.py calls it for
        each). The seam for upstream TLS: the server name to send as SNI and to
        verify is the same as the Host, `backend.address` when it is a name."""
        started = time.perf_counter()
        url, headers = probe_url(backend, ip), host_header(backend)
        try:
            context, name = request_options(backend)
        except (OSError, ValueError) as error:  # a client certificate that no longer loads
            return failed_probe(started, f"tls: client certificate: {error}", definitive=False)
        timeout = self._timeout
        try:
            async with self._session.get(
                url, headers=headers, timeout=timeout, ssl=context, server_hostname=name
            ) as response:
                await response.read()
                status = response.status
        except aiohttp.ClientSSLError as error:
            return failed_probe(started, tls_reason(error), definitive=True)
        except aiohttp.ClientConnectorError as error:
            refused = isinstance(error.os_error, ConnectionRefusedError)
            return failed_probe(started, f"connect: {error.os_error}", definitive=refused)
        except TimeoutError:
            return failed_probe(started, "timeout", definitive=False)
        except aiohttp.ClientError as error:
            return failed_probe(started, f"{type(error).__name__}: {error}", definitive=False)
        if 200 <= status < 300:
            return ProbeResult(True, False, time.perf_counter() - started, time.time())
        return failed_probe(started, f"HTTP {status}", definitive=True)


def failed_probe(started: float, error: str, *, definitive: bool) -> ProbeResult:
    return ProbeResult(False, definitive, time.perf_counter() - started, time.time(), error)


def new_session() -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(force_close=True, limit=0)
    return aiohttp.ClientSession(connector=connector)

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

log = logging.getLogger("xds_server.health")


Prober = Callable[[Backend], Awaitable[ProbeResult]]


def probe_url(backend: Backend) -> str:
    scheme = "http" if backend.tls is None else "https"
    return f"{scheme}://{SocketAddress(backend.address, backend.port)}{backend.health_path}"


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
        started = time.perf_counter()
        try:
            context, name = request_options(backend)
        except (OSError, ValueError) as error:  # a client certificate that no longer loads
            return failed_probe(started, f"tls: client certificate: {error}", definitive=False)
        url, timeout = probe_url(backend), self._timeout
        try:
            async with self._session.get(
                url, timeout=timeout, ssl=context, server_hostname=name
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

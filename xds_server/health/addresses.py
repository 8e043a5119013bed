"""Probes of a backend at every address it has: its IP literal, or each address
its DNS name resolved to (xds_server/dns/), all at once.

One verdict per backend, as Envoy's EDS gives every address of a backend that
backend's health_status: a round passes only when every address passes, so a
HEALTHY verdict never sends traffic to an address that failed its probe. A
failing address makes the round fail, definitively when its failure is
definitive (a refused connection, a non-2xx answer), and the error names the
address. A name that never resolved fails definitively with the lookup's
error; one not looked up yet is an ambiguous failure (the lookup is on its way).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from xds_server.dns.base import Resolved
from xds_server.health.probe import AddressProber, failed_probe
from xds_server.health.verdict import ProbeResult
from xds_server.model.intent import Backend
from xds_server.model.values import is_ip

NOT_RESOLVED_YET = "DNS: not resolved yet"


class EachAddress:
    """A Prober (health/probe.py) over an AddressProber."""

    def __init__(self, at: AddressProber, resolved: Resolved | None) -> None:
        self._at = at
        self._resolved = resolved

    async def __call__(self, backend: Backend) -> ProbeResult:
        if is_ip(backend.address):
            return await self._at(backend, backend.address)
        started = time.perf_counter()
        lookup = None if self._resolved is None else self._resolved.lookup_of(backend.address)
        if lookup is None or not lookup.addresses:
            error = None if lookup is None else lookup.error
            if error is None:
                return failed_probe(started, NOT_RESOLVED_YET, definitive=False)
            return failed_probe(started, error, definitive=True)
        results = await asyncio.gather(*(self._at(backend, ip) for ip in lookup.addresses))
        return combined(lookup.addresses, results)


def combined(addresses: Sequence[str], results: Sequence[ProbeResult]) -> ProbeResult:
    """Every address passed, or the failures, each named by its address. The
    duration is the slowest address's (what the slowest client would see)."""
    elapsed = max(r.elapsed_s for r in results)
    at = max(r.at for r in results)
    failed = [(ip, r) for ip, r in zip(addresses, results, strict=True) if not r.ok]
    if not failed:
        return ProbeResult(True, False, elapsed, at)
    definitive = any(r.definitive for _, r in failed)
    error = "; ".join(f"{ip}: {r.error}" for ip, r in failed)
    return ProbeResult(False, definitive, elapsed, at, error)

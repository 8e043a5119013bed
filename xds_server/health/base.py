"""What the rest of the controller sees of health: one Protocol, two variants
(`local.LocalHealth` for one controller, `shared.SharedHealth` for replicas)."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from xds_server.health.verdict import BackendHealth
from xds_server.model.intent import Health


class HealthView(Protocol):
    """Read side: the verdicts the translator publishes, and the probe figures behind them."""

    @property
    def verdicts(self) -> Mapping[str, Health]:
        """Backend name -> verdict; a missing name is UNKNOWN. Read at each publish."""

    @property
    def states(self) -> Mapping[str, BackendHealth]:
        """Backend name -> the last probe and counters (the prober's, with replicas)."""


class HealthHolds(Protocol):
    def held(self, name: str, ttl_s: float) -> AbstractAsyncContextManager[None]:
        """Freeze one backend's verdict while the block runs (experiments fail it on
        purpose and want Envoy's circuit breaker to react, not the probes). `ttl_s`
        bounds a hold that outlives its holder (a replica that died)."""


class EarlyProbes(Protocol):
    def probe_now(self, name: str) -> bool:
        """Probe one backend at once (Envoy ejected it), if this process probes it and
        it had no early probe within the last interval (health/checker.py). True if asked."""


class HealthSource(HealthView, HealthHolds, EarlyProbes, Protocol):
    """Life: `start()` before the first publish, `run()` as a task, `stop()` last."""

    async def start(self) -> None: ...

    async def run(self) -> None: ...

    async def stop(self) -> None: ...

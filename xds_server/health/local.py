"""Health of a single controller: its own checker writes the verdicts the
publisher reads, and every changed verdict marks the publisher dirty."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

from xds_server.dns.base import Resolved
from xds_server.health.checker import Delegate, HealthChecker
from xds_server.health.verdict import BackendHealth, HealthObserver, HealthPolicy
from xds_server.model.intent import Health
from xds_server.store.base import IntentStore


class LocalHealth:
    def __init__(
        self,
        store: IntentStore,
        on_change: Callable[[], None],
        policy: HealthPolicy,
        observers: Sequence[HealthObserver] = (),
        resolved: Resolved | None = None,
        ejected: Callable[[str], bool] | None = None,
        delegate: Delegate | None = None,
    ) -> None:
        self._verdicts: dict[str, Health] = {}
        self.checker = HealthChecker(
            store,
            self._verdicts,
            on_change,
            policy,
            observers=observers,
            resolved=resolved,
            ejected=ejected,
            delegate=delegate,
        )

    @property
    def verdicts(self) -> Mapping[str, Health]:
        return self._verdicts

    @property
    def states(self) -> Mapping[str, BackendHealth]:
        return self.checker.states

    def probe_now(self, name: str) -> bool:
        return self.checker.probe_now(name)

    @contextlib.asynccontextmanager
    async def held(self, name: str, ttl_s: float) -> AsyncIterator[None]:
        # One process: the hold ends with the block, so the ttl has nothing to bound.
        with self.checker.held(name):
            yield

    async def start(self) -> None:
        pass

    async def run(self) -> None:
        await self.checker.run()

    async def stop(self) -> None:
        pass

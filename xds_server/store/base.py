"""Where the intent lives, with change notification.

`MemoryStore` is the default (the demo needs no Redis); `RedisStore`
(store/redis.py) is chosen when `ROUTER_REDIS_URL` is set, so several
replicas share one intent. Every write gets a revision number, local to this
process and monotonic; the publisher reports which revision each snapshot
contains, so a writer can wait until its own change is live.

Life: `start()` before anything reads the intent (a shared store loads or
seeds it there), `run()` as a task of the controller's TaskGroup (a shared
store follows other replicas' writes there), `stop()` last.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from xds_server.model.intent import Intent


class IntentView(Protocol):
    """Read side of the store: what the admin API and the experiments read."""

    kind: str  # "memory" or "redis", for health reports

    @property
    def intent(self) -> Intent: ...

    @property
    def revision(self) -> int: ...

    @property
    def connected(self) -> bool:
        """False while the store cannot be reached: reads serve the last known
        intent, writes raise DependencyUnavailable."""


class IntentStore(IntentView, Protocol):
    async def put(self, intent: Intent) -> int:
        """Store a new intent; returns its revision."""

    async def update(self, change: Callable[[Intent], Intent]) -> tuple[Intent, int]:
        """Apply `change` atomically to the current intent; returns the result and revision.
        `change` may raise to refuse the update, which then changes nothing."""

    def on_change(self, callback: Callable[[], None]) -> None: ...

    async def start(self) -> None:
        """Load (or seed) the intent. Raises DependencyUnavailable if that is impossible."""

    async def run(self) -> None:
        """Follow changes made elsewhere until cancelled (may return at once)."""

    async def stop(self) -> None: ...

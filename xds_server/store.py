"""Where the intent lives, with change notification.

`MemoryStore` is the default (the demo needs no Redis); `RedisStore`
(xds_server.redis_store) is chosen when `ROUTER_REDIS_URL` is set, so several
replicas share one intent. Every write gets a revision number, local to this
process and monotonic; the publisher reports which revision each snapshot
contains, so a writer can wait until its own change is live.

Life: `start()` before anything reads the intent (a shared store loads or
seeds it there), `run()` as a task of the controller's TaskGroup (a shared
store follows other replicas' writes there), `stop()` last.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from xds_server.model import Intent
from xds_server.redis_store import RedisStore
from xds_server.settings import Settings


class IntentStore(Protocol):
    kind: str  # "memory" or "redis", for health reports

    @property
    def intent(self) -> Intent: ...

    @property
    def revision(self) -> int: ...

    async def put(self, intent: Intent) -> int:
        """Store a new intent; returns its revision."""

    async def update(self, change: Callable[[Intent], Intent]) -> tuple[Intent, int]:
        """Apply `change` atomically to the current intent; returns the result and revision.
        `change` may raise to refuse the update, which then changes nothing."""

    def on_change(self, callback: Callable[[], None]) -> None: ...

    @property
    def connected(self) -> bool:
        """False while the store cannot be reached: reads serve the last known
        intent, writes raise DependencyUnavailable."""

    async def start(self) -> None:
        """Load (or seed) the intent. Raises DependencyUnavailable if that is impossible."""

    async def run(self) -> None:
        """Follow changes made elsewhere until cancelled (may return at once)."""

    async def stop(self) -> None: ...


class MemoryStore:
    """An in-process store: one intent, a revision counter, change callbacks."""

    kind = "memory"

    def __init__(self, intent: Intent) -> None:
        self._intent = intent
        self._revision = 1
        self._callbacks: list[Callable[[], None]] = []
        self._lock = asyncio.Lock()

    @property
    def intent(self) -> Intent:
        return self._intent

    @property
    def revision(self) -> int:
        return self._revision

    async def put(self, intent: Intent) -> int:
        _, revision = await self.update(lambda _: intent)
        return revision

    async def update(self, change: Callable[[Intent], Intent]) -> tuple[Intent, int]:
        async with self._lock:
            intent = change(self._intent)
            if intent != self._intent:
                self._intent = intent
                self._revision += 1
                for callback in self._callbacks:
                    callback()
            return self._intent, self._revision

    def on_change(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    @property
    def connected(self) -> bool:
        return True

    async def start(self) -> None:
        pass

    async def run(self) -> None:
        pass  # nothing changes behind our back

    async def stop(self) -> None:
        pass


def open_store(settings: Settings) -> IntentStore:
    """RedisStore when settings.redis_url is set (ROUTER_REDIS_URL), else MemoryStore."""
    if settings.redis_url:
        return RedisStore(settings.redis_url, settings.intent)
    return MemoryStore(settings.intent)

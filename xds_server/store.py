"""Where the intent lives, with change notification.

`MemoryStore` is the default (the demo needs no Redis). Every write gets a
revision number; the publisher reports which revision each snapshot
contains, so a writer can wait until its own change is live.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

from xds_server.model import Intent


class IntentStore(Protocol):
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


class MemoryStore:
    """An in-process store: one intent, a revision counter, change callbacks."""

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

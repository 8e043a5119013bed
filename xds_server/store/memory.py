"""The default store: one intent in this process (the demo needs no Redis)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from xds_server.model.intent import Intent


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

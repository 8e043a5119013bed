"""The default store: one intent in this process (the demo needs no Redis).

Every write is an `edit` (store/base.py): computed and checked outside, then
compared and put.
"""

from __future__ import annotations

from collections.abc import Callable

from xds_server.model.intent import Intent
from xds_server.store.base import EditingStore, StoreCondition


class MemoryStore(EditingStore):
    """An in-process store: one intent, a revision counter, change callbacks."""

    kind = "memory"

    def __init__(self, intent: Intent) -> None:
        self._intent = intent
        self._revision = 1
        self._callbacks: list[Callable[[], None]] = []

    @property
    def intent(self) -> Intent:
        return self._intent

    @property
    def revision(self) -> int:
        return self._revision

    async def compare_and_put(self, intent: Intent, revision: int) -> int | None:
        # No await in here: atomic on the event loop, no lock needed.
        if revision != self._revision:
            return None
        if intent != self._intent:
            self._intent = intent
            self._revision += 1
            for callback in self._callbacks:
                callback()
        return self._revision

    def on_change(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)

    @property
    def connected(self) -> bool:
        return True

    @property
    def condition(self) -> StoreCondition:
        return StoreCondition("ok", None, self._revision)

    async def start(self) -> None:
        pass

    async def run(self) -> None:
        pass  # nothing changes behind our back

    async def stop(self) -> None:
        pass

"""Turns intent changes into published snapshots: translate, check, publish.

Bursts are coalesced without delaying an isolated change: the first change
is published at once, changes arriving within the hold-off after it are
batched into one more publish (style.md, item 7). A change that would give
an inconsistent snapshot is refused and the last good snapshot stays.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from xds_server.cache import SnapshotCache, build_snapshot
from xds_server.model import Health, Intent
from xds_server.store import IntentStore
from xds_server.translate import translate

log = logging.getLogger("xds_server.publisher")

HOLD_OFF_S = 0.05


class Publisher:
    def __init__(
        self,
        store: IntentStore,
        cache: SnapshotCache,
        health: Callable[[], Mapping[str, Health]] = dict,
        *,
        hold_off_s: float = HOLD_OFF_S,
    ) -> None:
        self._store = store
        self._cache = cache
        self._health = health
        self._hold_off_s = hold_off_s
        self._dirty = asyncio.Event()
        self._published = asyncio.Event()
        self.published_revision = 0
        self.last_error: str | None = None
        store.on_change(self.mark_dirty)

    def mark_dirty(self) -> None:
        self._dirty.set()

    async def publish_now(self) -> int:
        """Translate the current intent and publish it if it differs; returns the generation."""
        revision, intent = self._store.revision, self._store.intent
        try:
            snapshot = build_snapshot(translate(intent, self._health()), self._cache.generation + 1)
        except Exception as error:  # an intent that cannot be served is never pushed
            self.last_error = str(error)
            log.error("not publishing revision %d: %s", revision, error)
            self._advance(revision)  # processed, not published: waiters read last_error
            return self._cache.generation
        current = self._cache.snapshot
        if current is None or current.versions() != snapshot.versions():
            await self._cache.publish(snapshot)
        self.last_error = None
        self._advance(revision)
        return self._cache.generation

    async def run(self) -> None:
        await self.publish_now()
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await self.publish_now()
            await asyncio.sleep(self._hold_off_s)

    async def wait_for_revision(self, revision: int) -> int:
        """Wait until a snapshot containing `revision` is published; returns its generation."""
        while self.published_revision < revision:
            published = self._published
            await published.wait()
        return self._cache.generation

    def _advance(self, revision: int) -> None:
        self.published_revision = max(self.published_revision, revision)
        self._published.set()
        self._published = asyncio.Event()


def translate_or_raise(intent: Intent, health: Mapping[str, Health]) -> None:
    """Check that an intent would publish, without publishing it (for admin validation)."""
    build_snapshot(translate(intent, health), 0)

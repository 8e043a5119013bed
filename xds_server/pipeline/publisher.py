"""Turns intent changes into published snapshots: translate, check, publish.

Bursts are coalesced without delaying an isolated change: a change is
published at once when the publisher is idle; changes arriving while it
publishes, or during the hold-off after it, are batched into one more
publish. The hold-off is proportional to what the last publish cost
(COST_FACTOR times its duration, bounded): a small config is never held back,
a large one cannot spend more than a third of a core on rebuilding. A change
that would give an inconsistent snapshot is refused and the last good snapshot
stays.

Publishing is incremental: the translator keeps a memory across publishes and
the snapshot is built against the current one, so a change costs what it
touches (a health flip, or a changed DNS record set of a backend named by
DNS, re-translates and re-serializes one ClusterLoadAssignment). The output is
what a full rebuild gives.

A snapshot that changes clusters is published only after `before_cluster_change`
has run (the traffic sampler reads its Envoys' counters then, unless an admin
change has just read them for it: telemetry/sampler.py): Envoy rebuilds a
changed cluster and restarts its per-host counters, so whatever changed the
intent (the admin API, a config reload, another replica through Redis), the
routing metrics lose no request served before the change.

An admin change is checked (`check`) before it is stored; when the publish
that follows finds the same intent, health and current snapshot, it publishes
the snapshot that check built instead of building it again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from xds_server.cache import Snapshot, SnapshotCache, build_snapshot
from xds_server.errors import XdsServerError
from xds_server.model.certificates import EdgeCertificate
from xds_server.model.intent import Health, Intent
from xds_server.resources import CLUSTER
from xds_server.store.base import IntentStore
from xds_server.translate import translate
from xds_server.translate.endpoints import Addresses
from xds_server.translate.memo import Memory

log = logging.getLogger("xds_server.publisher")

COST_FACTOR = 2.0
MAX_HOLD_OFF_S = 0.5


@dataclass(frozen=True)
class Checked:
    """What `check` built, and from what; reused only if all of it still holds."""

    intent: Intent
    health: dict[str, Health]
    addresses: dict[str, tuple[str, ...]]
    certificate: EdgeCertificate | None
    previous: Snapshot | None
    snapshot: Snapshot
    build_s: float  # what building it took (the publish reports it as its build)


class PublishStatus(Protocol):
    """What readiness reports: how far publishing got, and why it stopped if it did."""

    @property
    def generation(self) -> int: ...

    @property
    def last_error(self) -> str | None: ...


class Publisher:
    def __init__(
        self,
        store: IntentStore,
        cache: SnapshotCache,
        health: Callable[[], Mapping[str, Health]] = dict,
        *,
        addresses: Callable[[], Addresses] = dict,  # backend names' resolved addresses
        min_hold_off_s: float = 0.0,
        on_build: Callable[[float], None] | None = None,  # seconds one build took (metrics)
        before_cluster_change: Callable[[], Awaitable[None]] | None = None,
        certificate: Callable[[], EdgeCertificate | None] = lambda: None,  # router.tls
    ) -> None:
        self._store = store
        self._certificate = certificate
        self._on_build = on_build
        self._before_cluster_change = before_cluster_change
        self._publishing = asyncio.Lock()  # the hook awaits; publishes must not interleave
        self._hook_s = 0.0  # the last publish's wait for before_cluster_change
        self._cache = cache
        self._health = health
        self._addresses = addresses
        self._min_hold_off_s = min_hold_off_s
        self._memory = Memory()
        self._checked: Checked | None = None
        self._dirty = asyncio.Event()
        self._published = asyncio.Event()
        self.published_revision = 0
        self.last_error: str | None = None
        store.on_change(self.mark_dirty)

    @property
    def generation(self) -> int:
        """The generation of the snapshot published last (0: none yet)."""
        return self._cache.generation

    def mark_dirty(self) -> None:
        self._dirty.set()

    async def publish_now(self) -> int:
        """Translate the current intent and publish it if it differs; returns the generation."""
        async with self._publishing:
            return await self._publish_current()

    async def _publish_current(self) -> int:
        self._hook_s = 0.0
        revision, intent = self._store.revision, self._store.intent
        try:
            snapshot, build_s = self._snapshot_of(intent)
        except XdsServerError as error:  # an intent that cannot be served is never pushed
            log.error("not publishing revision %d: %s", revision, error)
            return self._refuse(revision, error)
        except Exception as error:  # a translator bug: refused too, and with its traceback
            log.exception("not publishing revision %d: translating it failed", revision)
            return self._refuse(revision, error)
        if self._on_build is not None:
            self._on_build(build_s)
        current = self._cache.snapshot
        if current is None or current.versions() != snapshot.versions():
            changes_clusters = current is not None and (
                current.versions().get(CLUSTER) != snapshot.versions().get(CLUSTER)
            )
            if changes_clusters and self._before_cluster_change is not None:
                waited = time.perf_counter()
                try:
                    await self._before_cluster_change()
                except Exception:  # metrics must never hold a change back
                    log.exception("reading counters before a cluster change failed")
                self._hook_s = time.perf_counter() - waited
            await self._cache.publish(snapshot)
        self.last_error = None
        self._advance(revision)
        return self._cache.generation

    def _refuse(self, revision: int, error: Exception) -> int:
        self.last_error = str(error)
        self._advance(revision)  # processed, not published: waiters read last_error
        return self._cache.generation

    def check(self, intent: Intent) -> None:
        """Raise if `intent` could not be published (admin validation), at the cost of
        what it changes: built with this publisher's memory and against the current
        snapshot, so checking a one-service change does not rebuild a thousand. The
        memory then holds the checked intent's pass, which its publish reuses; the
        output never depends on what the memory holds (translate.memo). The snapshot
        is kept for the publish of this very intent (module docstring)."""
        previous, health = self._cache.snapshot, dict(self._health())
        addresses = dict(self._addresses())
        certificate = self._certificate()
        self._checked = None
        started = time.perf_counter()
        snapshot = self._build(intent)
        built_s = time.perf_counter() - started
        self._checked = Checked(intent, health, addresses, certificate, previous, snapshot, built_s)

    def _snapshot_of(self, intent: Intent) -> tuple[Snapshot, float]:
        """The snapshot to publish for `intent` and what building it took: the one
        `check` built if nothing it was built from changed, else built now."""
        checked, self._checked = self._checked, None
        if (
            checked is not None
            and checked.intent is intent
            and checked.previous is self._cache.snapshot
            and checked.health == self._health()
            and checked.addresses == self._addresses()
            and checked.certificate is self._certificate()
        ):
            return checked.snapshot, checked.build_s
        started = time.perf_counter()
        snapshot = self._build(intent)
        return snapshot, time.perf_counter() - started

    def _build(self, intent: Intent) -> Snapshot:
        resources = translate(
            intent,
            self._health(),
            self._memory,
            self._addresses(),
            certificate=self._certificate(),
        )
        current = self._cache.snapshot
        return build_snapshot(resources, self._cache.generation + 1, previous=current)

    async def run(self) -> None:
        await self.publish_now()
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            started = time.perf_counter()
            await self.publish_now()
            # The hold-off bounds the CPU spent rebuilding; waiting on Envoy is not that.
            cost = time.perf_counter() - started - self._hook_s
            await asyncio.sleep(min(MAX_HOLD_OFF_S, max(self._min_hold_off_s, COST_FACTOR * cost)))

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

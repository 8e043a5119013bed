"""Where the intent lives, with change notification, and the one way it is edited.

`MemoryStore` is the default (the demo needs no Redis); `RedisStore`
(store/redis.py) is chosen when `ROUTER_REDIS_URL` is set, so several
replicas share one intent. Every write gets a revision number, local to this
process and monotonic; the publisher reports which revision each snapshot
contains, so a writer can wait until its own change is live.

`edit` is how every write is made (the stores' `update` and the admin API):
the change and its check run against the store's current intent *outside* any
lock, then `compare_and_put` stores the result only if the revision it was
computed from is still the current one. A translation check therefore never
holds the store (with Redis: never a Redis round trip, never another writer),
and it is repeated only when another write came first, against that write's
result: concurrent writers lose no update, and a refused change (the change or
the check raised) stores nothing.

Life: `start()` before anything reads the intent (a shared store loads or
seeds it there), `run()` as a task of the controller's TaskGroup (a shared
store follows other replicas' writes there), `stop()` last.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from xds_server.errors import Conflict
from xds_server.model.intent import Intent
from xds_server.redis_io import backoff_s

MAX_ATTEMPTS = 50  # lost compare-and-put rounds before an edit gives up with Conflict


@dataclass(frozen=True)
class StoreCondition:
    """What the probes report about the store (admin/core.py)."""

    state: str  # "ok", "unavailable" (does not answer) or "reconciling" (after a data loss)
    reason: str | None  # why, when not "ok"
    revision: int  # the store's revision of the intent served (Redis's, with Redis)
    diverged: str | None = None  # accepted writes this replica had to drop, and why


class IntentView(Protocol):
    """Read side of the store: what the admin API and the experiments read."""

    kind: str  # "memory" or "redis", for health reports

    @property
    def intent(self) -> Intent: ...

    @property
    def revision(self) -> int:
        """Local and monotonic; changes exactly when `intent` does (read both together)."""

    @property
    def connected(self) -> bool:
        """False while the store cannot be reached: reads serve the last known
        intent, writes raise DependencyUnavailable."""

    @property
    def condition(self) -> StoreCondition:
        """Whether writes can be taken now, and why not."""


class IntentStore(IntentView, Protocol):
    async def put(self, intent: Intent) -> int:
        """Store a new intent; returns its revision."""

    async def compare_and_put(self, intent: Intent, revision: int) -> int | None:
        """Store `intent` if the store is still at `revision`, the one it was computed
        from; returns the revision now current (the same one when `intent` is what the
        store holds). None when the revision moved: nothing was stored, compute again."""

    async def update(self, change: Callable[[Intent], Intent]) -> tuple[Intent, int]:
        """`edit(self, change)`: the result and its revision. `change` may raise to
        refuse the update, which then changes nothing."""

    def on_change(self, callback: Callable[[], None]) -> None: ...

    async def start(self) -> None:
        """Load (or seed) the intent. Raises DependencyUnavailable if that is impossible."""

    async def run(self) -> None:
        """Follow changes made elsewhere until cancelled (may return at once)."""

    async def stop(self) -> None: ...


@dataclass(frozen=True)
class Edit:
    before: Intent  # what the change was computed from
    after: Intent  # what is stored now
    revision: int


def _accept(intent: Intent) -> None:
    pass


async def edit(
    store: IntentStore,
    change: Callable[[Intent], Intent],
    check: Callable[[Intent], None] = _accept,
    *,
    ready: Awaitable[object] | None = None,
) -> Edit:
    """Store `change(current)` once `check` accepted it; both may raise to refuse, and
    both run again only if another write moved the revision meanwhile.

    `ready` is awaited before the first put: what must be complete before the change
    may land (the admin API's reading before a change, under way while the change is
    computed and checked)."""
    for attempt in range(MAX_ATTEMPTS):
        revision, before = store.revision, store.intent  # no await between: one pair
        after = change(before)
        check(after)
        if ready is not None:
            await ready  # the revision may move meanwhile: the put then says so
            ready = None
        stored = await store.compare_and_put(after, revision)
        if stored is not None:
            return Edit(before, after, stored)
        await asyncio.sleep(backoff_s(attempt, 0.001, 0.05))  # jittered: writers desynchronise
    raise Conflict(
        f"the intent changed under this update {MAX_ATTEMPTS} times in a row; "
        "nothing was stored, try again"
    )


class EditingStore:
    """`put` and `update` for a store that implements `compare_and_put`: every
    write is an `edit`, whichever store it is."""

    async def put(self: IntentStore, intent: Intent) -> int:
        _, revision = await self.update(lambda _: intent)
        return revision

    async def update(self: IntentStore, change: Callable[[Intent], Intent]) -> tuple[Intent, int]:
        edited = await edit(self, change)
        return edited.after, edited.revision

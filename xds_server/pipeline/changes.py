"""Change the intent and confirm the change by ACK from every connected proxy.

Used by the admin API and by the experiments alike.

This is where the admin API keeps its promise: "applied" is true only once
every connected proxy ACKed a snapshot containing the change. A change that
cannot be translated into a consistent snapshot is refused before anything is
stored, so a rejected request changes nothing. That check (a translation) runs
outside the store's lock, against the revision it read, and is repeated only
if another write came first (`store.base.edit`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from xds_server.errors import InvalidValue
from xds_server.model.intent import Intent
from xds_server.pipeline.publisher import Publisher
from xds_server.store.base import IntentStore, edit
from xds_server.xds.status import ApplyFailure, ProxyRegistry

DEFAULT_WAIT_S = 5.0
MAX_WAIT_S = 60.0
# Publishing is in-process and takes milliseconds; this bound only guards
# against a stuck publisher, independently of the caller's ACK wait.
PUBLISH_WAIT_S = 5.0


@dataclass(frozen=True)
class Applied:
    before: Intent
    after: Intent
    generation: int
    applied: bool
    failures: tuple[ApplyFailure, ...]
    proxies: int

    def as_json(self) -> dict[str, object]:
        return {
            "strategy_applied": self.applied,
            "generation": self.generation,
            "proxies": self.proxies,
            "failures": [{"node_id": f.node_id, "reason": f.reason} for f in self.failures],
        }


class ChangeApplier(Protocol):
    async def apply(
        self,
        change: Callable[[Intent], Intent],
        wait_s: float = DEFAULT_WAIT_S,
        *,
        ready: Awaitable[object] | None = None,
    ) -> Applied:
        """Apply `change` atomically, publish, and wait (bounded) for every proxy's ACK.

        `change` raises (NotFound, Conflict, ConfigError, ...) to refuse; nothing is
        stored then. `ready` is awaited before the change is stored (`store.base.edit`:
        the admin API's Envoy reading before a change, under way meanwhile)."""


class IntentChanges:
    """The one way an intent edit becomes live: stored, published, ACKed."""

    def __init__(self, store: IntentStore, publisher: Publisher, proxies: ProxyRegistry) -> None:
        self._store, self._publisher, self._proxies = store, publisher, proxies

    async def apply(
        self,
        change: Callable[[Intent], Intent],
        wait_s: float = DEFAULT_WAIT_S,
        *,
        ready: Awaitable[object] | None = None,
    ) -> Applied:
        edited = await edit(self._store, change, self._publisher.check, ready=ready)
        before, after, revision = edited.before, edited.after, edited.revision
        # From here on the change is stored: whatever happens, the answer says so
        # (applied or not), never an error that would claim nothing changed.
        try:
            async with asyncio.timeout(max(wait_s, PUBLISH_WAIT_S)):
                generation = await self._publisher.wait_for_revision(revision)
        except TimeoutError:
            unpublished = ApplyFailure("controller", "stored, but not yet published")
            generation = self._publisher.generation
            return Applied(before, after, generation, False, (unpublished,), 0)
        failures = await self._proxies.wait_until_applied(generation, wait_s)
        return Applied(
            before=before,
            after=after,
            generation=generation,
            applied=not failures,
            failures=tuple(failures),
            proxies=len(self._proxies.connected()),
        )


def wait_seconds(value: object) -> float:
    """A caller's bounded wait ("wait_s" in a body or query), clamped to MAX_WAIT_S."""
    if value is None:
        return DEFAULT_WAIT_S
    # NaN passes Python's JSON parser, and a NaN deadline never expires.
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
        raise InvalidValue("wait_s must be a number of seconds >= 0")
    return min(float(value), MAX_WAIT_S)

"""Keeps the addresses of every backend name of the intent, re-resolved every
`interval_s`.

Rules (tests/dns/test_refresher.py pins them):
- A name is looked up as soon as it appears in the intent (start-up, a reload, an
  admin change), and every `interval_s` after that, all names in one round.
- A round that changes some name's address set calls `on_change` once (the
  publisher's `mark_dirty`): Envoy gets one EDS update for the whole round.
- A failed lookup keeps the last good addresses (a resolver hiccup must not empty
  a cluster) and records the error; a name that never resolved has no address.
- A name no backend uses any more is forgotten.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping

from xds_server.dns.base import LOCALHOST_ADDRESSES, Lookup, Resolver, is_localhost, names_of
from xds_server.errors import LookupFailed
from xds_server.store.base import IntentStore

log = logging.getLogger("xds_server.dns")


class DnsRefresher:
    def __init__(
        self,
        store: IntentStore,
        resolver: Resolver,
        on_change: Callable[[], None],
        *,
        interval_s: float = 30.0,
        timeout_s: float = 5.0,
    ) -> None:
        self._store = store
        self._resolver = resolver
        self._on_change = on_change
        self._interval_s = interval_s
        self._timeout_s = timeout_s
        self._lookups: dict[str, Lookup] = {}
        self._addresses: dict[str, tuple[str, ...]] = {}
        self._intent_changed = asyncio.Event()
        store.on_change(self._intent_changed.set)

    # ---- read side (dns.base.Resolved) ----------------------------------------

    def lookup_of(self, name: str) -> Lookup | None:
        return self._lookups.get(name)

    @property
    def addresses(self) -> Mapping[str, tuple[str, ...]]:
        return self._addresses

    # ---- life --------------------------------------------------------------------

    async def start(self) -> None:
        """Resolve every name before the first publish, so Envoy's first EDS already
        has the endpoints (bounded: each lookup by the timeout)."""
        await self.refresh(names_of(self._store.intent))

    async def run(self) -> None:
        """New names at once, every name each interval; until cancelled."""
        loop = asyncio.get_running_loop()
        due = loop.time() + self._interval_s
        while True:
            if await _set_within(self._intent_changed, due - loop.time()):
                self._intent_changed.clear()
                await self.refresh(names_of(self._store.intent) - self._lookups.keys())
                continue
            # Fixed ticks; one missed (a stalled loop) is skipped, not caught up.
            due = max(due + self._interval_s, loop.time())
            await self.refresh(names_of(self._store.intent))

    async def close(self) -> None:
        await self._resolver.close()

    # ---- one round ---------------------------------------------------------------

    async def refresh(self, names: Iterable[str]) -> bool:
        """Look `names` up together, forget names the intent dropped; True (and
        `on_change` called once) when some name's addresses changed."""
        wanted = sorted(names)
        results = await asyncio.gather(*(self._resolve(name) for name in wanted))
        changed = self._forget_unused()
        for name, result in zip(wanted, results, strict=True):
            changed |= self._record(name, result)
        if changed:
            self._on_change()
        return changed

    async def _resolve(self, name: str) -> tuple[str, ...] | str:
        """The addresses, or why there are none."""
        if is_localhost(name):
            return LOCALHOST_ADDRESSES
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._resolver.resolve(name)
        except TimeoutError:
            return f"DNS lookup of {name} failed: no answer within {self._timeout_s:g}s"
        except LookupFailed as error:
            return str(error)

    def _record(self, name: str, result: tuple[str, ...] | str) -> bool:
        before = self._lookups.get(name, Lookup())
        now = time.time()
        if isinstance(result, str):
            if before.error != result:
                log.warning("%s (keeping %s)", result, list(before.addresses) or "no address")
            self._lookups[name] = Lookup(before.addresses, result, before.resolved_at, now)
            return False
        self._lookups[name] = Lookup(result, None, now)
        if before.addresses == result:
            return False
        log.info("%s resolves to %s (was %s)", name, list(result), list(before.addresses))
        self._addresses[name] = result
        return True

    def _forget_unused(self) -> bool:
        unused = self._lookups.keys() - names_of(self._store.intent)
        for name in unused:
            del self._lookups[name]
        dropped = [self._addresses.pop(name, None) for name in unused]
        return any(dropped)


async def _set_within(event: asyncio.Event, timeout_s: float) -> bool:
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, timeout_s)):
            await event.wait()
            return True
    return False

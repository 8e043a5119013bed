"""The in-memory twin of a Resolver, for unit tests: records set by the test,
failures on demand, every lookup counted."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from xds_server.errors import LookupFailed


class MemoryResolver:
    def __init__(self, records: dict[str, Iterable[str]] | None = None) -> None:
        self._records: dict[str, tuple[str, ...]] = {}
        self._failing: dict[str, str] = {}
        self.lookups: Counter[str] = Counter()
        for name, addresses in (records or {}).items():
            self.set(name, addresses)

    def set(self, name: str, addresses: Iterable[str]) -> None:
        """`name` resolves to `addresses` from now on (and no longer fails)."""
        self._records[name] = tuple(sorted(set(addresses)))
        self._failing.pop(name, None)

    def fail(self, name: str, reason: str = "server failure") -> None:
        self._failing[name] = reason

    async def resolve(self, name: str) -> tuple[str, ...]:
        self.lookups[name] += 1
        if name in self._failing:
            raise LookupFailed(f"DNS lookup of {name} failed: {self._failing[name]}")
        addresses = self._records.get(name)
        if not addresses:
            raise LookupFailed(f"DNS lookup of {name} failed: no such name")
        return addresses

    async def close(self) -> None:
        pass

"""What the rest of the controller sees of DNS: a Resolver, and per name the last
lookup (addresses, error, when).

`localhost` and names under `.localhost` are 127.0.0.1 without asking anyone
(RFC 6761 section 6.3 lets a resolver answer them itself): they work whatever
`router.dns_servers` says, and only the IPv4 loopback, where the sample
backends and most local servers listen (a `::1` endpoint nobody serves would
fail every probe).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from xds_server.model.intent import Intent
from xds_server.model.values import is_ip

LOCALHOST_ADDRESSES = ("127.0.0.1",)


class Resolver(Protocol):
    async def resolve(self, name: str) -> tuple[str, ...]:
        """Every A and AAAA address of `name`, sorted and without repeats; never
        empty. Raises LookupFailed (errors.py) with the reason."""

    async def close(self) -> None: ...


@dataclass(frozen=True)
class Lookup:
    """What is known of one name. After a failure the addresses are the last
    good ones (empty if the name never resolved) and `error` says why."""

    addresses: tuple[str, ...] = ()
    error: str | None = None
    resolved_at: float | None = None  # wall clock of the last success
    failed_at: float | None = None  # wall clock of the last failure, while it lasts


class Resolved(Protocol):
    """Read side of the refresher: what health probes and the health report use."""

    def lookup_of(self, name: str) -> Lookup | None:
        """None: `name` has not been looked up yet."""

    @property
    def addresses(self) -> Mapping[str, tuple[str, ...]]:
        """Name -> its current addresses: the translator's input."""


def is_localhost(name: str) -> bool:
    return name == "localhost" or name.endswith(".localhost")


def names_of(intent: Intent) -> frozenset[str]:
    """The DNS names among the intent's backend addresses."""
    return frozenset(b.address for s in intent.services for b in s.backends if not is_ip(b.address))

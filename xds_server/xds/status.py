"""Per-proxy, per-type protocol status: what was sent, ACKed and NACKed.

Read-only information for the admin API, metrics and tests; nothing here feeds
back into what is sent. `wait_until_applied` is how the admin API keeps its
promise that "applied" means every connected proxy runs the new config.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from xds_server.resources import SHORT_NAMES
from xds_server.timefmt import iso_utc
from xds_server.xds.observe import StreamInfo


@dataclass
class Nack:
    version: str
    message: str
    generation: int
    at: float


@dataclass
class TypeStatus:
    version_sent: str | None = None
    version_acked: str | None = None
    synced_generation: int = 0
    # Latest generation that concerned this type: its stream was woken for it
    # (the optional `notified` hook) or sent a response built from it.
    notified_generation: int = 0
    last_nack: Nack | None = None
    sent_at: float | None = None  # monotonic, of the response awaiting its ACK
    responses: int = 0
    acks: int = 0
    nacks: int = 0
    stale_nonces: int = 0  # requests ignored: old nonce (docs/xds-protocol.md rule 8)
    stream_id: int | None = None  # the one stream whose hooks this status counts


@dataclass
class ProxyStatus:
    node_id: str
    node_cluster: str
    envoy_admin: str | None  # an ip:port the xDS layer believed (xds/identity.py), or None
    connected_since: float
    streams: set[int] = field(default_factory=set)
    types: dict[str, TypeStatus] = field(default_factory=dict)
    envoy_admin_problem: str | None = None  # why envoy_admin is None

    def type(self, type_url: str) -> TypeStatus:
        return self.types.setdefault(type_url, TypeStatus())

    def as_json(self) -> dict[str, object]:
        return {
            "node_id": self.node_id,
            "cluster": self.node_cluster,
            "envoy_admin": self.envoy_admin,
            "connected_since": iso_utc(self.connected_since),
            "streams": len(self.streams),
            "resources": {SHORT_NAMES.get(t, t): _type_json(s) for t, s in self.types.items()},
        }


@dataclass(frozen=True)
class ApplyFailure:
    node_id: str
    reason: str


class ProxyRegistry:
    """An XdsObserver that keeps the status of every connected proxy."""

    def __init__(self) -> None:
        self.proxies: dict[str, ProxyStatus] = {}
        self.convergence_s: list[float] = []  # push-to-ACK samples, newest last
        self._changed = asyncio.Event()

    def connected(self) -> list[ProxyStatus]:
        return [p for p in self.proxies.values() if p.streams]

    def stream_opened(self, info: StreamInfo) -> None:
        proxy = self.proxies.get(info.node_id)
        if proxy is None or not proxy.streams:
            proxy = ProxyStatus(info.node_id, info.node_cluster, info.envoy_admin, info.opened_at)
            self.proxies[info.node_id] = proxy
        # The newest stream's word on its admin address (docs/xds-protocol.md rule 34).
        proxy.envoy_admin, proxy.envoy_admin_problem = info.envoy_admin, info.envoy_admin_problem
        proxy.streams.add(info.stream_id)
        self._notify()

    def stream_closed(self, info: StreamInfo) -> None:
        proxy = self.proxies.get(info.node_id)
        if proxy is not None:
            proxy.streams.discard(info.stream_id)
            if not proxy.streams:
                del self.proxies[info.node_id]
            else:  # what this stream owed or ACKed is nobody's now
                proxy.types = {
                    t: s for t, s in proxy.types.items() if s.stream_id != info.stream_id
                }
        self._notify()

    def response_sent(
        self, info: StreamInfo, type_url: str, version: str, names: Sequence[str], generation: int
    ) -> None:
        status = self._type(info, type_url)
        if status is None:
            return
        status.version_sent = version
        status.notified_generation = max(status.notified_generation, generation)
        status.responses += 1
        status.sent_at = time.monotonic()

    def acked(self, info: StreamInfo, type_url: str, version: str, generation: int) -> None:
        status = self._type(info, type_url)
        if status is None:
            return
        status.version_acked = version
        status.acks += 1
        status.synced_generation = max(status.synced_generation, generation)
        if status.sent_at is not None:
            self.convergence_s.append(time.monotonic() - status.sent_at)
            del self.convergence_s[:-1000]
            status.sent_at = None
        self._notify()

    def nacked(
        self, info: StreamInfo, type_url: str, version: str, message: str, generation: int
    ) -> None:
        status = self._type(info, type_url)
        if status is None:
            return
        status.nacks += 1
        status.sent_at = None
        status.last_nack = Nack(version, message, generation, time.time())
        self._notify()

    def up_to_date(self, info: StreamInfo, type_url: str, generation: int) -> None:
        status = self._type(info, type_url)
        if status is None:
            return
        status.synced_generation = max(status.synced_generation, generation)
        self._notify()

    def stale_nonce(self, info: StreamInfo, type_url: str) -> None:
        status = self._type(info, type_url)
        if status is not None:
            status.stale_nonces += 1

    def notified(self, info: StreamInfo, type_url: str, generation: int) -> None:
        status = self._type(info, type_url)
        if status is None:
            return
        status.notified_generation = max(status.notified_generation, generation)

    def failures(self, generation: int) -> list[ApplyFailure]:
        """Proxies that rejected some response at or after `generation`."""
        return [
            ApplyFailure(p.node_id, f"{SHORT_NAMES.get(t, t)} NACK: {s.last_nack.message}")
            for p in self.connected()
            for t, s in p.types.items()
            if s.last_nack is not None and s.last_nack.generation >= generation
        ]

    def lagging(self, generation: int) -> list[str]:
        """Connected proxies not yet synced to `generation` on every type they watch."""
        return [
            p.node_id
            for p in self.connected()
            if any(_behind(s, generation) for s in p.types.values())
        ]

    async def wait_until_applied(self, generation: int, timeout_s: float) -> list[ApplyFailure]:
        """Wait until every connected proxy ACKed `generation` (or NACKed it).

        Returns the failures: NACKs, and proxies still lagging at the deadline.
        """

        deadline = time.monotonic() + timeout_s
        while not self._settled(generation) and time.monotonic() < deadline:
            changed = self._changed
            try:
                async with asyncio.timeout(deadline - time.monotonic()):
                    await changed.wait()
            except TimeoutError:
                break
        failures = self.failures(generation)
        failed = {f.node_id for f in failures}
        late = [ApplyFailure(n, f"no ACK within {timeout_s:g} s") for n in self.lagging(generation)]
        return failures + [f for f in late if f.node_id not in failed]

    def _type(self, info: StreamInfo, type_url: str) -> TypeStatus | None:
        """The status `info`'s stream reports into; None for a stream that is not
        open (a hook after it closed or was replaced: ignored). A type is counted
        for one stream only (docs/xds-protocol.md rule 33): a status another
        stream left starts afresh, so no stream's ACK answers for another's."""
        proxy = self.proxies.get(info.node_id)
        if proxy is None or info.stream_id not in proxy.streams:
            return None
        status = proxy.types.get(type_url)
        if status is None or status.stream_id != info.stream_id:
            status = proxy.types[type_url] = TypeStatus(stream_id=info.stream_id)
        return status

    def _settled(self, generation: int) -> bool:
        failed = {f.node_id for f in self.failures(generation)}
        return all(node in failed for node in self.lagging(generation))

    def _notify(self) -> None:
        # Wake every current waiter; later waiters wait on a fresh event.
        self._changed.set()
        self._changed = asyncio.Event()


def _behind(status: TypeStatus, generation: int) -> bool:
    """A response awaits its ACK, or a change up to `generation` that concerns
    this type is neither ACKed (or found already held) nor NACKed. Changes
    that concern a stream's subscriptions are the only ones it hears of
    (per-name watches), so a type no snapshot concerned since its last sync
    is current as it is."""
    if status.sent_at is not None:
        return True
    owed = min(generation, status.notified_generation)
    if status.synced_generation >= owed:
        return False
    nack = status.last_nack
    return nack is None or nack.generation < owed  # a NACK settles (docs/xds-protocol.md rule 7)


def _type_json(status: TypeStatus) -> dict[str, object]:
    nack = status.last_nack
    return {
        "version_sent": status.version_sent,
        "version_acked": status.version_acked,
        "synced_generation": status.synced_generation,
        "notified_generation": status.notified_generation,
        "responses": status.responses,
        "acks": status.acks,
        "nacks": status.nacks,
        "stale_nonces": status.stale_nonces,
        "last_nack": None
        if nack is None
        else {"version": nack.version, "message": nack.message, "at": iso_utc(nack.at)},
    }

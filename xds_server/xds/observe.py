"""What the protocol engine reports, and the fan-out to whoever listens.

The stream code calls these hooks and nothing else; proxy status, metrics and
logs are separate implementations of the same hooks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

log = logging.getLogger("xds_server.xds")


@dataclass(frozen=True)
class StreamInfo:
    """Who is on the other end of one gRPC stream. Known from its first request."""

    stream_id: int
    kind: str  # "ads" or the per-type service: "cds", "eds", "lds", "rds"
    node_id: str
    node_cluster: str
    # node.metadata["admin_address"] when believed (xds/identity.py): a plain ip:port
    envoy_admin: str | None
    opened_at: float = field(default_factory=time.time)
    envoy_admin_problem: str | None = None  # why envoy_admin is None


class XdsObserver(Protocol):
    def stream_opened(self, info: StreamInfo) -> None: ...

    def stream_closed(self, info: StreamInfo) -> None: ...

    def response_sent(
        self, info: StreamInfo, type_url: str, version: str, names: Sequence[str], generation: int
    ) -> None: ...

    def acked(self, info: StreamInfo, type_url: str, version: str, generation: int) -> None: ...

    def nacked(
        self, info: StreamInfo, type_url: str, version: str, message: str, generation: int
    ) -> None: ...

    def up_to_date(self, info: StreamInfo, type_url: str, generation: int) -> None:
        """The stream has everything of `generation` for this type, and nothing in flight."""

    def stale_nonce(self, info: StreamInfo, type_url: str) -> None: ...


class Observers:
    """Calls every registered observer in order; one failing observer is logged,
    never allowed to break the stream.

    Optional hook, called only on observers that define it:
    `notified(info, type_url, generation)`: a published snapshot changed
    resources this stream subscribes to, so this type owes its client an
    answer for `generation`. Streams a snapshot does not concern hear nothing
    (per-name watches); ProxyRegistry needs it to know who is behind.
    `unserved_type(info, type_url)`: the stream's client asked for a type this
    server does not serve, ignored (docs/xds-protocol.md rule 35); called once
    per stream, for the first such type. XdsEventLog logs it.
    """

    def __init__(self, observers: Sequence[XdsObserver] = ()) -> None:
        self._observers = list(observers)

    def add(self, observer: XdsObserver) -> None:
        self._observers.append(observer)

    def emit(self, hook: str, *args: object) -> None:
        for observer in self._observers:
            try:  # the lookup too: an observer whose attribute raises is a failing observer
                method = getattr(observer, hook, None)
                if method is not None:  # None: an optional hook this observer does not take
                    method(*args)
            except Exception:  # observers are not ours to trust: log, and go on
                log.exception("observer %r failed in %s", observer, hook)

"""What the protocol engine reports, and the fan-out to whoever listens.

The stream code calls these hooks and nothing else; proxy status, metrics and
logs are separate implementations (style.md, item 9).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from xds_server.resources import SHORT_NAMES

log = logging.getLogger("xds_server.xds")


@dataclass(frozen=True)
class StreamInfo:
    """Who is on the other end of one gRPC stream. Known from its first request."""

    stream_id: int
    kind: str  # "ads" or the per-type service: "cds", "eds", "lds", "rds"
    node_id: str
    node_cluster: str
    envoy_admin: str | None  # node.metadata["admin_address"], if the proxy sent one
    opened_at: float = field(default_factory=time.time)


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
    never allowed to break the stream."""

    def __init__(self, observers: Sequence[XdsObserver] = ()) -> None:
        self._observers = list(observers)

    def add(self, observer: XdsObserver) -> None:
        self._observers.append(observer)

    def emit(self, hook: str, *args: object) -> None:
        for observer in self._observers:
            try:
                getattr(observer, hook)(*args)
            except Exception:
                log.exception("observer %r failed in %s", observer, hook)


class LoggingObserver:
    """xDS events as log records carrying proxy id and version."""

    def stream_opened(self, info: StreamInfo) -> None:
        log.info("stream %d opened (%s) by %s", info.stream_id, info.kind, info.node_id)

    def stream_closed(self, info: StreamInfo) -> None:
        log.info("stream %d closed (%s) by %s", info.stream_id, info.kind, info.node_id)

    def response_sent(
        self, info: StreamInfo, type_url: str, version: str, names: Sequence[str], generation: int
    ) -> None:
        log.debug(
            "sent %s version %s (%d resources) to %s",
            SHORT_NAMES.get(type_url, type_url),
            version,
            len(names),
            info.node_id,
        )

    def acked(self, info: StreamInfo, type_url: str, version: str, generation: int) -> None:
        log.debug("%s ACKed %s version %s", info.node_id, SHORT_NAMES.get(type_url), version)

    def nacked(
        self, info: StreamInfo, type_url: str, version: str, message: str, generation: int
    ) -> None:
        log.warning(
            "%s NACKed %s version %s: %s", info.node_id, SHORT_NAMES.get(type_url), version, message
        )

    def up_to_date(self, info: StreamInfo, type_url: str, generation: int) -> None:
        pass

    def stale_nonce(self, info: StreamInfo, type_url: str) -> None:
        log.debug("%s sent a stale nonce for %s", info.node_id, SHORT_NAMES.get(type_url))

"""What every xDS stream shares, SotW or Delta: its life, its node, its types.

A reader task applies each request to per-type state and wakes the writer;
the writer compares the current snapshot with what this client holds and
answers only with differences. Because the writer always works from the
latest state, a newer request supersedes older ones (docs/xds-protocol.md rule 10)
and a burst of snapshot changes coalesces (latest wins, never a queue). It
looks only at the types due: those a request was about, or that a snapshot
changed for this stream, so a small request never costs an evaluation of
everything the stream subscribes to.

What a client can make a stream hold is bounded (xds/limits.py): a type this
server does not serve keeps nothing and wakes nothing (docs/xds-protocol.md
rule 35); the node, the subscribed names and NACK messages are capped
(docs/xds-protocol.md rules 36 and 37).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from collections.abc import Set as AbstractSet
from typing import Any, Generic, Protocol, TypeVar

from xds_server.cache import Resource, SnapshotCache, Watch
from xds_server.errors import ProtocolError, XdsServerError
from xds_server.resources import ADS_ORDER, CLUSTER, LISTENER
from xds_server.xds import limits
from xds_server.xds.identity import EnvoyAdminClaim
from xds_server.xds.observe import Observers, StreamInfo

WILDCARD = "*"
# Only these types have a legacy wildcard (an empty first request means "all").
WILDCARD_TYPES = frozenset({CLUSTER, LISTENER})
# Every snapshot holds these types and no other (cache.build_snapshot).
SERVED_TYPES = frozenset(ADS_ORDER)

Request = TypeVar("Request")
Response = TypeVar("Response")


class StreamReplaced(XdsServerError):
    """A newer stream of the same node took over this stream's types
    (docs/xds-protocol.md rule 33); the stream ends ABORTED."""


# Called with the stream and its node when the first request names the node;
# returns the admin address to believe, or raises to refuse the stream.
Admit = Callable[["XdsStream[Any, Any]", Any], EnvoyAdminClaim]
_UNCHECKED = EnvoyAdminClaim(None, "admin_address not checked")


class SentState(Protocol):
    """The per-type fields every stream keeps about its latest response."""

    type_url: str
    nonce: str | None
    in_flight: bool
    version_sent: str


class XdsStream(Generic[Request, Response]):
    """Serves one stream until the client goes away. Subclasses apply requests
    (`handle_request`) and compute responses (`responses`)."""

    _ids = itertools.count(1)

    def __init__(
        self,
        cache: SnapshotCache,
        observers: Observers,
        *,
        kind: str,
        fixed_type: str | None,
        legacy_wildcard: bool = True,
        on_clusters_changed: Callable[[str, set[str]], None] | None = None,
        admit: Admit | None = None,
    ) -> None:
        self.stream_id = next(self._ids)
        self._cache = cache
        self._observers = observers
        self._kind = kind
        self._fixed_type = fixed_type
        self._legacy_wildcard = legacy_wildcard
        self._on_clusters_changed = on_clusters_changed
        self._admit = admit
        self._wake = asyncio.Event()
        # Types the writer's next pass evaluates: asked about, or changed for us.
        self._due_types: set[str] = set()
        self._watch: Watch | None = None  # while serving
        self.wakeups = 0  # times the writer woke up, for tests and benchmarks
        self._done = False
        self._error: Exception | None = None  # the reader's, raised by the writer
        self._nonces = itertools.count(1)
        self.info: StreamInfo | None = None
        self._budget = limits.SubscriptionBudget()  # docs/xds-protocol.md rule 36
        self._told_unserved = False

    # ---- the stream's life ---------------------------------------------------

    async def serve(self, requests: AsyncIterator[Request]) -> AsyncGenerator[Response, None]:
        watch = self._watch = self._cache.watch(self._snapshot_changed)
        reader = asyncio.create_task(self._read(requests))
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                self.wakeups += 1
                if self._error is not None:
                    # Drop our reference: the error's traceback holds this
                    # stream's frames, and a cycle would outlive the stream.
                    error, self._error = self._error, None
                    raise error
                if self._done:
                    return
                for response in self.responses():
                    yield response
        finally:
            # docs/xds-protocol.md rule 31: a closed stream releases its watch, its
            # task and its status.
            watch.close()
            try:
                await _stop(reader)
            finally:
                if self.info is not None:
                    self._observers.emit("stream_closed", self.info)

    async def _read(self, requests: AsyncIterator[Request]) -> None:
        """Apply requests until the client half-closes. `requests` ends quietly when
        the transport does (XdsEngine), so whatever raises here is a ProtocolError or
        a bug: the writer raises it in the handler, where the status is chosen."""
        try:
            async for request in requests:
                self.handle_request(request)
        except Exception as error:  # handed over, not swallowed: see serve()
            self._error = self._error or error  # end()'s reason stays the reason
        self._done = True
        self._wake.set()

    def _touch(self, type_url: str) -> None:
        """`type_url` is due: the writer's next pass evaluates it."""
        self._due_types.add(type_url)
        self._wake.set()

    def _due(self, type_url: str) -> bool:
        """Whether this pass of the writer evaluates `type_url` (it is then no
        longer due)."""
        if type_url not in self._due_types:
            return False
        self._due_types.discard(type_url)
        return True

    @property
    def fixed_type(self) -> str | None:
        """The one type a per-type stream serves; None on ADS (every type)."""
        return self._fixed_type

    def end(self, error: Exception) -> None:
        """End this stream from outside (docs/xds-protocol.md rule 33): it reports
        `stream_closed` now and nothing after it, so nothing it still reads or
        sends can count for its node; its handler ends with `error`."""
        if self.info is not None:
            self._observers.emit("stream_closed", self.info)
        self._observers = Observers()
        self._error = error
        self._wake.set()

    @property
    def pending(self) -> bool:
        """Woken, and the writer has not yet taken it up."""
        return self._wake.is_set()

    def _snapshot_changed(self, types: AbstractSet[str], generation: int) -> None:
        """The cache calls this only when `generation` changed names this
        stream subscribes to (per-name watches): the writer wakes and these
        types owe the client an answer for `generation`."""
        if self.info is not None:
            for type_url in types:
                self._observers.emit("notified", self.info, type_url, generation)
        self._due_types.update(types)
        self._wake.set()

    def _interest(self, type_url: str, names: AbstractSet[str], wildcard: bool) -> None:
        """Tell the cache what this stream now subscribes to for `type_url`."""
        if self._watch is not None:
            self._watch.subscribe(type_url, names, wildcard)

    def handle_request(self, request: Request) -> None:
        raise NotImplementedError

    def responses(self) -> list[Response]:
        raise NotImplementedError

    def forget_endpoints(self, names: set[str]) -> None:
        """docs/xds-protocol.md rule 23: the client must get these EDS resources again."""
        raise NotImplementedError

    # ---- shared request handling ---------------------------------------------

    def _open_and_type(self, request: Any) -> str:
        if self.info is None:
            self._open(request)  # docs/xds-protocol.md rule 1: only the first has node
        return self._type_of(request)

    def _open(self, request: Any) -> None:
        node = request.node
        limits.check_node(node)  # docs/xds-protocol.md rule 36: before anything is kept
        # Raises to refuse the stream (docs/xds-protocol.md rule 34).
        admin = _UNCHECKED if self._admit is None else self._admit(self, node)
        self.info = StreamInfo(
            stream_id=self.stream_id,
            kind=self._kind,
            node_id=node.id,
            node_cluster=node.cluster,
            envoy_admin=admin.address,
            envoy_admin_problem=admin.problem,
        )
        self._observers.emit("stream_opened", self.info)

    def _type_of(self, request: Any) -> str:
        """docs/xds-protocol.md rule 2: ADS requests must name their type; per-type
        streams may not."""
        if self._fixed_type is None:
            if not request.type_url:
                raise ProtocolError("type_url is required on an aggregated stream")
            return str(request.type_url)
        if request.type_url not in ("", self._fixed_type):
            # Clipped: gRPC clients refuse a status whose details pass 16 KiB.
            asked = limits.clip(request.type_url, limits.LOG_TEXT_CHARS)
            raise ProtocolError(f"this stream serves {self._fixed_type}, not {asked}")
        return self._fixed_type

    def _serves(self, type_url: str) -> bool:
        """docs/xds-protocol.md rule 35: a request for a type no snapshot holds
        is ignored before anything of it is kept, and wakes nobody: no state, no
        watch, O(1) whatever it names. The operator hears of it once per stream."""
        if type_url in SERVED_TYPES:
            return True
        if not self._told_unserved and self.info is not None:
            self._told_unserved = True
            self._observers.emit("unserved_type", self.info, type_url)
        return False

    def _report_answer(
        self, type_url: str, request: Any, version_sent: str, generation: int
    ) -> None:
        """The client answered our latest response: an ACK, or a NACK when
        error_detail is present (docs/xds-protocol.md rule 6), never judged by
        comparing versions."""
        if request.HasField("error_detail"):
            # docs/xds-protocol.md rule 37: what /proxies and CSDS keep is bounded.
            message = limits.clip(request.error_detail.message, limits.MAX_NACK_CHARS)
            self._observers.emit("nacked", self.info, type_url, version_sent, message, generation)
        else:
            version = getattr(request, "version_info", "") or version_sent
            self._observers.emit("acked", self.info, type_url, version, generation)

    def _stale(self, type_url: str) -> None:
        self._observers.emit("stale_nonce", self.info, type_url)

    # ---- shared response handling --------------------------------------------

    def _next_nonce(self) -> str:
        return f"{self.stream_id}-{next(self._nonces)}"  # docs/xds-protocol.md rule 3

    def _quiet(self, type_url: str, in_flight: bool, generation: int) -> None:
        """Nothing to send: the client is up to date unless an answer is pending."""
        if not in_flight and self.info is not None:
            self._observers.emit("up_to_date", self.info, type_url, generation)

    def _mark_sent(self, state: SentState, version: str, names: list[str], generation: int) -> str:
        """Bookkeeping of every response, SotW or Delta: a fresh nonce
        (docs/xds-protocol.md rule 3), an answer now awaited, the version it
        carries. Returns the nonce."""
        state.nonce = self._next_nonce()
        state.in_flight = True
        state.version_sent = version
        self._observers.emit("response_sent", self.info, state.type_url, version, names, generation)
        return state.nonce

    def _clusters_sent(self, clusters: list[Resource]) -> None:
        """docs/xds-protocol.md rule 23: a changed cluster re-warms in Envoy and
        waits for its endpoints, so its EDS resource must be sent again even if
        unchanged."""
        if clusters and self._on_clusters_changed is not None and self.info is not None:
            self._on_clusters_changed(self.info.node_id, {eds_name(r) for r in clusters})


async def _stop(task: asyncio.Task[None]) -> None:
    """Cancel `task` and wait until it has ended, even when the caller is
    cancelled meanwhile (grpc cancels a handler again when the client goes
    away during cleanup); that cancellation is re-raised afterwards. So no
    request is handled after the stream closed, and its request iterator is
    idle when the server closes it."""
    task.cancel()
    interrupted = False
    while not task.done():
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError:
            interrupted = True
    if interrupted:
        raise asyncio.CancelledError


def digest_of(resource: Resource | None) -> str | None:
    return None if resource is None else resource.digest


def eds_name(resource: Resource) -> str:
    cluster = resource.message
    config = getattr(cluster, "eds_cluster_config", None)
    return (config.service_name if config is not None else "") or resource.name
